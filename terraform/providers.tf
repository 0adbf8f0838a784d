provider "google" {
  project = var.project_id
  region  = var.region
}

# Configured for the same project so that a resource can opt into a beta-only field with
# `provider = google-beta`; nothing in this configuration needs one today.
provider "google-beta" {
  project = var.project_id
  region  = var.region
}
