#!/usr/bin/env bash
# Fill the placeholders of the deploy/ manifests and Helm values; a filter from stdin to stdout.
#
#   kubectl kustomize deploy/k8s/mlflow | deploy/render.sh | kubectl apply -f -
#   deploy/render.sh < deploy/helm/dagster-values.yaml > dagster-values.rendered.yaml
#
# Values come from the environment (docs/deploy.md shows how to export them from `terraform output`).
# Only the placeholders present in the input need a value; the script fails, naming the variable, when
# one is missing, and fails if any placeholder survives.
#
#   placeholder                                         variable              terraform output
#   REGION-docker.pkg.dev/PROJECT/REPO/fare-service:BENTO_TAG
#                                                       FARE_SERVICE_IMAGE    (built by deploy.yml)
#   REGION-docker.pkg.dev/PROJECT/REPO                  IMAGE_REGISTRY        image_registry
#   GIT_SHA                                             DAGSTER_IMAGE_TAG     (tag of the user-code image)
#   CLOUD_SQL_PRIVATE_IP                                CLOUD_SQL_PRIVATE_IP  cloudsql_private_ip
#   CONTROL_PLANE_IP                                    CONTROL_PLANE_IP      control_plane_private_ip
#   taxi-prod (in bucket and service account names)     PLATFORM_NAME         "<name_prefix>-<environment>"
#   PROJECT_ID                                          PROJECT_ID            project_id
set -euo pipefail
shopt -u patsub_replacement 2> /dev/null || true # bash 5.2: keep `&` in values literal

input=$(cat)
PLATFORM_NAME=${PLATFORM_NAME:-taxi-prod}

# fill PLACEHOLDER VARIABLE: replace PLACEHOLDER by $VARIABLE; fail if it is needed and not set.
fill() {
  [[ $input == *"$1"* ]] || return 0
  if [[ -z ${!2:-} ]]; then
    echo "render.sh: the input contains $1; set $2" >&2
    exit 1
  fi
  input=${input//"$1"/${!2}}
}
# Most specific first: the fare-service image before the registry prefix it contains.
fill "REGION-docker.pkg.dev/PROJECT/REPO/fare-service:BENTO_TAG" FARE_SERVICE_IMAGE
fill "REGION-docker.pkg.dev/PROJECT/REPO" IMAGE_REGISTRY
fill "GIT_SHA" DAGSTER_IMAGE_TAG
fill "CLOUD_SQL_PRIVATE_IP" CLOUD_SQL_PRIVATE_IP
fill "CONTROL_PLANE_IP" CONTROL_PLANE_IP
input=${input//taxi-prod-/${PLATFORM_NAME}-}
fill "PROJECT_ID" PROJECT_ID

left=$(grep -nE 'BENTO_TAG|GIT_SHA|PROJECT_ID|CLOUD_SQL_PRIVATE_IP|CONTROL_PLANE_IP|REGION-docker|PROJECT/REPO' <<< "$input" || true)
if [[ -n $left ]]; then
  echo "render.sh: placeholders left:" >&2
  echo "$left" >&2
  exit 1
fi
printf '%s\n' "$input"
