# Route the fare service's structured prediction logs (JSON lines on stdout, one per request or, above
# ~4,000 quotes, per part of at most 200,000 bytes, below the 256 KB entry limit; parsed into jsonPayload) to the predictions bucket, for monitoring and for
# building the next training window from served traffic.

resource "google_logging_project_sink" "predictions" {
  # checkov:skip=CKV2_GCP_4:the sink carries prediction logs for monitoring and retraining, not audit logs; the bucket keeps versions and deletes by lifecycle (a locked retention policy would make it undeletable)
  name        = "${local.name}-fare-predictions"
  description = "Fare service prediction logs to gs://${google_storage_bucket.predictions.name}"
  destination = "storage.googleapis.com/${google_storage_bucket.predictions.name}"

  filter = join(" AND ", [
    "resource.type=\"k8s_container\"",
    "resource.labels.cluster_name=\"${google_container_cluster.main.name}\"",
    "resource.labels.namespace_name=\"${var.k8s_workloads.serving.namespace}\"",
    "resource.labels.container_name=\"${var.fare_service_container_name}\"",
    var.prediction_log_payload_filter,
  ])

  # The sink writes as its own service identity, which gets create-only access to the bucket.
  unique_writer_identity = true
}

resource "google_storage_bucket_iam_member" "predictions_sink_writer" {
  bucket = google_storage_bucket.predictions.name
  role   = "roles/storage.objectCreator"
  member = google_logging_project_sink.predictions.writer_identity
}
