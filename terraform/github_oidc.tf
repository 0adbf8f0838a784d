# GitHub Actions deploys without any service account key: the workflow's OIDC token is exchanged
# through Workload Identity Federation for a short-lived token of the deployer service account.
# Only one workflow is accepted: var.github_deploy_workflow of var.github_repository, run from that
# same ref (the workflow file cannot come from another branch), on a ref allowed by
# var.github_deploy_ref_condition, in the GitHub environment var.github_environment (whose protection
# rules, e.g. required reviewers, GitHub enforces before the job gets a token).

resource "google_iam_workload_identity_pool" "github" {
  workload_identity_pool_id = "${local.name}-github"
  display_name              = "GitHub ${local.name}" # at most 32 characters
  description               = "OIDC tokens of ${var.github_repository} workflows"

  depends_on = [google_project_service.apis]
}

resource "google_iam_workload_identity_pool_provider" "github" {
  # checkov:skip=CKV_GCP_125:the condition pins sub to repo:<var.github_repository>:environment:<var.github_environment>, plus repository, workflow_ref and ref; checkov cannot resolve var.github_repository (no default; validated as owner/name) so it cannot see the org/repo form
  workload_identity_pool_id          = google_iam_workload_identity_pool.github.workload_identity_pool_id
  workload_identity_pool_provider_id = "github-actions"
  display_name                       = "GitHub Actions OIDC"

  attribute_mapping = {
    "google.subject"         = "assertion.sub"
    "attribute.repository"   = "assertion.repository"
    "attribute.ref"          = "assertion.ref"
    "attribute.actor"        = "assertion.actor"
    "attribute.workflow_ref" = "assertion.workflow_ref"
    "attribute.environment"  = "assertion.environment"
  }
  attribute_condition = join(" && ", [
    "assertion.sub == \"repo:${var.github_repository}:environment:${var.github_environment}\"",
    "assertion.repository == \"${var.github_repository}\"",
    "assertion.environment == \"${var.github_environment}\"",
    "assertion.workflow_ref == \"${var.github_repository}/${var.github_deploy_workflow}@\" + assertion.ref",
    "(${var.github_deploy_ref_condition})",
  ])

  oidc {
    issuer_uri = "https://token.actions.githubusercontent.com"
  }
}

resource "google_service_account" "deployer" {
  account_id   = "${local.name}-deployer"
  display_name = "GitHub Actions deployer (${local.name})"
}

resource "google_service_account_iam_member" "deployer_github" {
  service_account_id = google_service_account.deployer.name
  role               = "roles/iam.workloadIdentityUser"
  # Exactly the subject of the deploy job (repository + environment), not every token of the repository.
  member = "principal://iam.googleapis.com/${google_iam_workload_identity_pool.github.name}/subject/repo:${var.github_repository}:environment:${var.github_environment}"
}

# Push images to our repository only.
resource "google_artifact_registry_repository_iam_member" "deployer_push" {
  location   = google_artifact_registry_repository.containers.location
  repository = google_artifact_registry_repository.containers.name
  role       = "roles/artifactregistry.writer"
  member     = "serviceAccount:${google_service_account.deployer.email}"
}

# Read the champion from MLflow as the read-only MLflow user `deployer` (basic-auth): its password, no other secret.
resource "google_secret_manager_secret_iam_member" "deployer_mlflow_password" {
  secret_id = google_secret_manager_secret.mlflow_user_password["deployer"].id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.deployer.email}"
}

# Reach the cluster and nothing more: fetch its endpoint and connect through the DNS-based endpoint.
# No container.* permission on Kubernetes objects is granted in IAM (roles/container.developer would
# let the workflow create pods in the dagster namespace and so act as the lake's writer through
# Workload Identity). What the deployer may do inside the cluster is Kubernetes RBAC:
# deploy/k8s/platform/deployer-rbac.yaml, scoped to the fare-service namespace (plus a port-forward
# to MLflow to read the champion).
resource "google_project_iam_custom_role" "deployer_gke" {
  role_id     = replace("${local.name}_gke_connect", "-", "_")
  title       = "GKE connect only (${local.name} deployer)"
  description = "Get the cluster and connect to its DNS endpoint; Kubernetes RBAC decides the rest."
  permissions = ["container.clusters.get", "container.clusters.connect"]
}

resource "google_project_iam_member" "deployer_gke" {
  project = var.project_id
  role    = google_project_iam_custom_role.deployer_gke.id
  member  = "serviceAccount:${google_service_account.deployer.email}"
}
