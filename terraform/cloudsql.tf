# One Cloud SQL for PostgreSQL instance for the Dagster instance storage and the MLflow backend
# store. Private IP only (no public address, so no authorized networks), TLS required.

resource "google_sql_database_instance" "main" {
  # checkov:skip=CKV_GCP_6:TLS is required (ssl_mode ENCRYPTED_ONLY) on a private IP reachable only from the VPC; clients log in with passwords from Secret Manager, client certificates would need the Cloud SQL Auth Proxy in every pod
  # checkov:skip=CKV2_GCP_13:statement durations are recorded by Query Insights (insights_config below) without logging a line per statement of Dagster's frequent polling
  # checkov:skip=CKV_GCP_79:the major version is var.db_version, limited to what Dagster, MLflow and the tests' pgserver support (14-17)
  name                = "${local.name}-pg"
  database_version    = var.db_version
  region              = var.region
  deletion_protection = var.deletion_protection

  settings {
    edition                     = "ENTERPRISE"
    tier                        = var.db_tier
    availability_type           = var.db_availability_type
    disk_type                   = "PD_SSD"
    disk_size                   = var.db_disk_size_gb
    disk_autoresize             = true
    deletion_protection_enabled = var.deletion_protection
    user_labels                 = local.labels

    ip_configuration {
      ipv4_enabled    = false
      private_network = google_compute_network.vpc.id
      ssl_mode        = "ENCRYPTED_ONLY"
    }

    backup_configuration {
      enabled                        = true
      point_in_time_recovery_enabled = true
      start_time                     = "03:00"
    }

    maintenance_window {
      day          = 7
      hour         = 4
      update_track = "stable"
    }

    insights_config {
      query_insights_enabled = true
    }

    # Audit trail: connections, DDL, errors, lock waits, checkpoints; pgAudit records DDL and role changes.
    database_flags {
      name  = "cloudsql.enable_pgaudit"
      value = "on"
    }
    database_flags {
      name  = "pgaudit.log"
      value = "ddl,role"
    }
    database_flags {
      name  = "log_checkpoints"
      value = "on"
    }
    database_flags {
      name  = "log_connections"
      value = "on"
    }
    database_flags {
      name  = "log_disconnections"
      value = "on"
    }
    database_flags {
      name  = "log_hostname"
      value = "on"
    }
    database_flags {
      name  = "log_lock_waits"
      value = "on"
    }
    database_flags {
      name  = "log_min_error_statement"
      value = "error"
    }
    database_flags {
      name  = "log_min_messages"
      value = "error"
    }
    database_flags {
      name  = "log_statement"
      value = "ddl"
    }
  }

  depends_on = [google_service_networking_connection.private_services]
}

resource "google_sql_database" "app" {
  for_each = local.databases

  name     = each.key
  instance = google_sql_database_instance.main.name
}

resource "google_sql_user" "app" {
  for_each = local.databases

  name     = each.key
  instance = google_sql_database_instance.main.name
  password = random_password.db[each.key].result
  # Postgres refuses to drop a role that owns objects; keep the role when the resource goes away.
  deletion_policy = "ABANDON"
}
