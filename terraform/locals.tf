locals {
  name = "${var.name_prefix}-${var.environment}"

  # Every resource that accepts labels gets exactly these.
  labels = merge(
    {
      app         = "taxi-platform"
      environment = var.environment
      managed-by  = "terraform"
    },
    var.extra_labels,
  )

  workload_pool = "${var.project_id}.svc.id.goog"

  # Google service account per Kubernetes workload (Workload Identity), see iam.tf.
  workloads = {
    dagster = {
      display_name = "Dagster webserver, daemon, user code and run pods"
      namespace    = var.k8s_workloads.dagster.namespace
      ksa          = var.k8s_workloads.dagster.service_account
    }
    mlflow = {
      display_name = "MLflow tracking server"
      namespace    = var.k8s_workloads.mlflow.namespace
      ksa          = var.k8s_workloads.mlflow.service_account
    }
    serving = {
      display_name = "Fare service (BentoML)"
      namespace    = var.k8s_workloads.serving.namespace
      ksa          = var.k8s_workloads.serving.service_account
    }
  }

  # One Postgres database and login per metadata store on the shared Cloud SQL instance.
  databases = toset(["dagster", "mlflow"])

  # MLflow basic-auth users (secrets.tf): the server's admin, Dagster's read/write user, CI's read-only user.
  mlflow_users = toset(["admin", "dagster", "deployer"])

  image_registry = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.containers.repository_id}"
}
