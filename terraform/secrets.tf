# Database passwords are generated here and stored in Secret Manager; nothing is typed in by hand.
# Each workload's Google service account may read only its own secret (iam.tf). The Kubernetes
# Secrets the pods use are filled from Secret Manager (docs/deploy.md, "Database secrets").

resource "random_password" "db" {
  for_each = local.databases

  length = 32
  # Letters and digits only: the passwords go into postgresql:// URLs unescaped.
  special = false
}

resource "google_secret_manager_secret" "db_password" {
  for_each = local.databases

  secret_id = "${local.name}-${each.key}-db-password"
  labels    = local.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret_version" "db_password" {
  for_each = local.databases

  secret      = google_secret_manager_secret.db_password[each.key].id
  secret_data = random_password.db[each.key].result
}

# The fare service's API keys, as `name:<sha256 hex of the key>` lines (never the keys themselves).
# Terraform creates the empty secret; an operator adds versions (docs/deploy.md, "Fare service API keys"),
# and the pods mount the latest as a file (deploy/k8s/platform/fare-service-api-keys.yaml).
resource "google_secret_manager_secret" "fare_api_keys" {
  secret_id = "${local.name}-fare-api-keys"
  labels    = local.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

# MLflow's own authentication (`mlflow server --app-name basic-auth`): one password per MLflow user, generated
# here like the database passwords. `admin` is created by the server on its first start (from the mounted
# Secret mlflow-auth); `dagster` (read/write, used by the Dagster pods) and `deployer` (read-only, used by
# .github/workflows/deploy.yml) are created once by an administrator (docs/deploy.md, "MLflow users").
resource "random_password" "mlflow_user" {
  for_each = local.mlflow_users

  length = 32
  # Letters and digits only: the passwords travel in HTTP basic auth headers and shell variables.
  special = false
}

resource "google_secret_manager_secret" "mlflow_user_password" {
  for_each = local.mlflow_users

  secret_id = "${local.name}-mlflow-${each.key}-password"
  labels    = local.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret_version" "mlflow_user_password" {
  for_each = local.mlflow_users

  secret      = google_secret_manager_secret.mlflow_user_password[each.key].id
  secret_data = random_password.mlflow_user[each.key].result
}

# The basic-auth app's CSRF key: the same in every worker and replica of the server.
resource "random_password" "mlflow_flask_secret_key" {
  length  = 64
  special = false
}

resource "google_secret_manager_secret" "mlflow_flask_secret_key" {
  secret_id = "${local.name}-mlflow-flask-secret-key"
  labels    = local.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret_version" "mlflow_flask_secret_key" {
  secret      = google_secret_manager_secret.mlflow_flask_secret_key.id
  secret_data = random_password.mlflow_flask_secret_key.result
}
