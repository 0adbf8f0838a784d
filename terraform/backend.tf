# Remote state lives in a GCS bucket that is created once, by hand, before the first `init`
# (it cannot be managed by the configuration whose state it holds):
#
#   gcloud storage buckets create gs://PROJECT_ID-tfstate --location=REGION \
#     --uniform-bucket-level-access --public-access-prevention
#   gcloud storage buckets update gs://PROJECT_ID-tfstate --versioning
#
# The backend below is deliberately partial: bucket and prefix are passed at init time so the
# same code serves several environments.
#
#   terraform init -backend-config="bucket=PROJECT_ID-tfstate" -backend-config="prefix=taxi-platform/prod"
#
# or keep them in a file (see backend.hcl.example) and run `terraform init -backend-config=backend.hcl`.
# The state contains the generated database passwords: only platform admins may read the bucket.
terraform {
  backend "gcs" {}
}
