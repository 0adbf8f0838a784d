# Least privilege: one Google service account per workload, each bound to exactly one Kubernetes
# service account through Workload Identity, and granted roles on single resources (a bucket, a
# secret, the image repository) rather than on the project wherever the API allows it.

# -- GKE nodes ---------------------------------------------------------------------------------

resource "google_service_account" "gke_nodes" {
  account_id   = "${local.name}-gke-nodes"
  display_name = "GKE Autopilot nodes (${local.name})"
}

# Logging, monitoring and the other node agents; nothing else.
resource "google_project_iam_member" "gke_nodes" {
  project = var.project_id
  role    = "roles/container.defaultNodeServiceAccount"
  member  = "serviceAccount:${google_service_account.gke_nodes.email}"
}

resource "google_artifact_registry_repository_iam_member" "gke_nodes_pull" {
  location   = google_artifact_registry_repository.containers.location
  repository = google_artifact_registry_repository.containers.name
  role       = "roles/artifactregistry.reader"
  member     = "serviceAccount:${google_service_account.gke_nodes.email}"
}

# -- workloads (Workload Identity) ---------------------------------------------------------------

resource "google_service_account" "workload" {
  for_each = local.workloads

  account_id   = "${local.name}-${each.key}"
  display_name = "${each.value.display_name} (${local.name})"
}

# The Kubernetes service account <namespace>/<name> may act as the Google service account.
resource "google_service_account_iam_member" "workload_identity" {
  for_each = local.workloads

  service_account_id = google_service_account.workload[each.key].name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${local.workload_pool}[${each.value.namespace}/${each.value.ksa}]"

  depends_on = [google_container_cluster.main] # the workload pool exists once the cluster does
}

# Dagster reads and writes the lake (objects only: list, read, create, overwrite, delete).
resource "google_storage_bucket_iam_member" "dagster_lake" {
  bucket = google_storage_bucket.lake.name
  role   = "roles/storage.objectAdmin"
  member = "serviceAccount:${google_service_account.workload["dagster"].email}"
}

# Dagster reads the prediction logs the logging sink writes (served_quotes: quotes against realised trips);
# read-only: only the sink writes there.
resource "google_storage_bucket_iam_member" "dagster_predictions_reader" {
  bucket = google_storage_bucket.predictions.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.workload["dagster"].email}"
}

# MLflow owns its artifact bucket; Dagster and CI reach artifacts only through the MLflow server.
resource "google_storage_bucket_iam_member" "mlflow_artifacts" {
  bucket = google_storage_bucket.mlflow_artifacts.name
  role   = "roles/storage.objectAdmin"
  member = "serviceAccount:${google_service_account.workload["mlflow"].email}"
}

# Each metadata store may read its own database password and no other secret.
resource "google_secret_manager_secret_iam_member" "db_password" {
  for_each = local.databases

  secret_id = google_secret_manager_secret.db_password[each.key].id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.workload[each.key].email}"
}

# MLflow basic-auth: the server reads its admin password and CSRF key; Dagster reads its own MLflow user's
# password. (The deployer's read-only MLflow password: github_oidc.tf.)
resource "google_secret_manager_secret_iam_member" "mlflow_admin_password" {
  secret_id = google_secret_manager_secret.mlflow_user_password["admin"].id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.workload["mlflow"].email}"
}

resource "google_secret_manager_secret_iam_member" "mlflow_flask_secret_key" {
  secret_id = google_secret_manager_secret.mlflow_flask_secret_key.id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.workload["mlflow"].email}"
}

resource "google_secret_manager_secret_iam_member" "mlflow_dagster_password" {
  secret_id = google_secret_manager_secret.mlflow_user_password["dagster"].id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.workload["dagster"].email}"
}

# The fare service calls no Google API itself: the model is baked into its image and its prediction
# logs go to stdout, which GKE ships to Cloud Logging. Its one grant: GKE's Secret Manager add-on,
# acting as the pod's identity, may read the API-key hashes secret it mounts as a file.
resource "google_secret_manager_secret_iam_member" "fare_api_keys" {
  secret_id = google_secret_manager_secret.fare_api_keys.id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.workload["serving"].email}"
}

# -- people: the Dagster UI and MLflow behind Identity-Aware Proxy ------------------------------------

# The Dagster UI (whose GraphQL API launches runs with the lake's write access) and MLflow are reachable
# only through the GKE Gateway in deploy/k8s/platform, whose backends have IAP turned on. These
# principals pass IAP; everyone else gets Google's 403 before a request reaches a pod.
resource "google_iap_web_iam_member" "tools_users" {
  for_each = toset(var.iap_members)

  project = var.project_id
  role    = "roles/iap.httpsResourceAccessor"
  member  = each.value

  depends_on = [google_project_service.apis]
}
