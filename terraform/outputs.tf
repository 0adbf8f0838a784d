output "cluster_name" {
  description = "GKE Autopilot cluster name."
  value       = google_container_cluster.main.name
}

output "cluster_location" {
  description = "GKE cluster region."
  value       = google_container_cluster.main.location
}

output "get_credentials_command" {
  description = "Configure kubectl through the cluster's DNS endpoint."
  value       = "gcloud container clusters get-credentials ${google_container_cluster.main.name} --region ${var.region} --project ${var.project_id} --dns-endpoint"
}

output "image_registry" {
  description = "Artifact Registry prefix for images: <this>/fare-service:<bento tag>, <this>/taxi-platform-dagster:<git sha>."
  value       = local.image_registry
}

output "lake_root" {
  description = "TAXI_LAKE_ROOT for Dagster."
  value       = "gs://${google_storage_bucket.lake.name}/lake"
}

output "mlflow_artifacts_destination" {
  description = "--artifacts-destination for the MLflow server."
  value       = "gs://${google_storage_bucket.mlflow_artifacts.name}/artifacts"
}

output "predictions_bucket" {
  description = "Bucket receiving the fare service's prediction logs."
  value       = google_storage_bucket.predictions.name
}

output "prediction_log_path" {
  description = "TAXI_PREDICTION_LOG_PATH for Dagster: where served_quotes reads the prediction log the sink writes."
  value       = "gs://${google_storage_bucket.predictions.name}"
}

output "prediction_log_sink_writer_identity" {
  description = "Identity the logging sink writes as (granted objectCreator on the predictions bucket)."
  value       = google_logging_project_sink.predictions.writer_identity
}

output "cloudsql_private_ip" {
  description = "Private IP of the Cloud SQL instance (postgres host for Dagster and MLflow)."
  value       = google_sql_database_instance.main.private_ip_address
}

output "control_plane_private_ip" {
  description = "Private IP of the GKE control plane: the only Kubernetes API address the dagster namespace may reach (deploy/render.sh CONTROL_PLANE_IP)."
  value       = google_container_cluster.main.private_cluster_config[0].private_endpoint
}

output "cloudsql_connection_name" {
  description = "Cloud SQL connection name (project:region:instance), for the Cloud SQL Auth Proxy if preferred."
  value       = google_sql_database_instance.main.connection_name
}

output "db_password_secrets" {
  description = "Secret Manager secret IDs holding the database passwords, by database."
  value       = { for db, secret in google_secret_manager_secret.db_password : db => secret.secret_id }
}

output "mlflow_user_password_secrets" {
  description = "Secret Manager secret IDs holding the MLflow basic-auth passwords, by MLflow user (admin, dagster, deployer)."
  value       = { for user, secret in google_secret_manager_secret.mlflow_user_password : user => secret.secret_id }
}

output "mlflow_flask_secret_key_secret" {
  description = "Secret Manager secret ID holding the CSRF key of MLflow's basic-auth app (MLFLOW_FLASK_SERVER_SECRET_KEY)."
  value       = google_secret_manager_secret.mlflow_flask_secret_key.secret_id
}

output "workload_service_accounts" {
  description = "Google service account email per workload; annotate the Kubernetes service accounts with these (iam.gke.io/gcp-service-account)."
  value       = { for name, sa in google_service_account.workload : name => sa.email }
}

output "github_workload_identity_provider" {
  description = "Value for google-github-actions/auth `workload_identity_provider` (GitHub variable GCP_WORKLOAD_IDENTITY_PROVIDER)."
  value       = google_iam_workload_identity_pool_provider.github.name
}

output "github_deployer_service_account" {
  description = "Value for google-github-actions/auth `service_account` (GitHub variable GCP_DEPLOYER_SERVICE_ACCOUNT)."
  value       = google_service_account.deployer.email
}

output "project_id" {
  description = "GCP project ID (GitHub variable GCP_PROJECT_ID)."
  value       = var.project_id
}

output "region" {
  description = "Region of the cluster and the registry (GitHub variable GCP_REGION)."
  value       = var.region
}

output "artifact_repository" {
  description = "Artifact Registry repository ID (GitHub variable GCP_ARTIFACT_REPOSITORY)."
  value       = google_artifact_registry_repository.containers.repository_id
}
