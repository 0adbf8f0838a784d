# Container images: fare-service (tagged with the Bento tag) and the Dagster user code (tagged with
# the git SHA). Tags are immutable, so a tag always names the same image.
resource "google_artifact_registry_repository" "containers" {
  # checkov:skip=CKV_GCP_84:images are encrypted at rest by Google-managed keys; who may read or push is IAM on this repository (iam.tf, github_oidc.tf), which a customer-managed key would not change
  location      = var.region
  repository_id = var.artifact_repository_id
  description   = "taxi_platform container images (fare-service Bento, Dagster user code, MLflow server)"
  format        = "DOCKER"
  labels        = local.labels

  docker_config {
    immutable_tags = true
  }

  cleanup_policy_dry_run = false

  cleanup_policies {
    id     = "delete-untagged"
    action = "DELETE"
    condition {
      tag_state  = "UNTAGGED"
      older_than = "604800s"
    }
  }

  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = 30
    }
  }

  depends_on = [google_project_service.apis]
}
