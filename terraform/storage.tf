# Three buckets, all with uniform bucket-level access (IAM only, no object ACLs), public access
# prevention and object versioning. They are ordinary flat-namespace buckets: the lake code talks
# to them with gcsfs's plain filesystem (see taxi_platform/lake/gcs.py).

# The Parquet lake (TAXI_LAKE_ROOT=gs://<this bucket>/lake). Partitions are replaced by
# overwriting one object; the previous version stays restorable for a while.
resource "google_storage_bucket" "lake" {
  name                        = "${var.project_id}-${local.name}-lake"
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false
  labels                      = local.labels

  # Who read or wrote which object, kept in the access-log bucket below.
  logging {
    log_bucket        = google_storage_bucket.access_logs.name
    log_object_prefix = "lake/"
  }

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.noncurrent_version_retention_days
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      num_newer_versions = 3
      with_state         = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      age = 1
    }
    action {
      type = "AbortIncompleteMultipartUpload"
    }
  }

  depends_on = [google_project_service.apis]
}

# MLflow artifacts (models, metrics plots). Only the MLflow server touches it: clients upload and
# download through the server (`mlflow server --serve-artifacts`).
resource "google_storage_bucket" "mlflow_artifacts" {
  name                        = "${var.project_id}-${local.name}-mlflow"
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false
  labels                      = local.labels

  # Who read or wrote which object, kept in the access-log bucket below.
  logging {
    log_bucket        = google_storage_bucket.access_logs.name
    log_object_prefix = "mlflow_artifacts/"
  }

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.noncurrent_version_retention_days
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.apis]
}

# Structured prediction logs of the fare service, routed here by the logging sink (logging.tf).
# Cloud Logging writes hourly JSON files; they age into NEARLINE and are deleted after retention.
resource "google_storage_bucket" "predictions" {
  name                        = "${var.project_id}-${local.name}-predictions"
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false
  labels                      = local.labels

  # Who read or wrote which object, kept in the access-log bucket below.
  logging {
    log_bucket        = google_storage_bucket.access_logs.name
    log_object_prefix = "predictions/"
  }

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      age = var.prediction_log_nearline_after_days
    }
    action {
      type          = "SetStorageClass"
      storage_class = "NEARLINE"
    }
  }

  lifecycle_rule {
    condition {
      age = var.prediction_log_retention_days
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 7
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.apis]
}

# Usage and storage logs of the three buckets above (Cloud Storage writes them as the
# cloud-storage-analytics group, which gets create-only access).
resource "google_storage_bucket" "access_logs" {
  # checkov:skip=CKV_GCP_62:this is the access-log bucket itself; logging its own access would log the log writes
  name                        = "${var.project_id}-${local.name}-access-logs"
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false
  labels                      = local.labels

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      age = 90
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 7
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.apis]
}

resource "google_storage_bucket_iam_member" "access_logs_writer" {
  bucket = google_storage_bucket.access_logs.name
  role   = "roles/storage.objectCreator"
  member = "group:cloud-storage-analytics@google.com"
}
