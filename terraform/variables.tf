variable "project_id" {
  description = "GCP project that holds every resource of this platform."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a GCP project ID: 6-30 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "region" {
  description = "Region for the GKE cluster, Cloud SQL, Artifact Registry and the buckets (e.g. us-east4, close to New York)."
  type        = string
  default     = "us-east4"

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.region))
    error_message = "region must be a GCP region such as us-east4 or europe-west1 (not a zone like us-east4-a)."
  }
}

variable "environment" {
  description = "Deployment environment; part of resource names and labels."
  type        = string
  default     = "prod"

  validation {
    condition     = contains(["dev", "staging", "prod"], var.environment)
    error_message = "environment must be one of dev, staging, prod."
  }
}

variable "name_prefix" {
  description = "Short prefix for resource names (service accounts allow 30 characters in total)."
  type        = string
  default     = "taxi"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,11}$", var.name_prefix))
    error_message = "name_prefix must be 2-12 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "extra_labels" {
  description = "Labels added to every labelable resource, on top of app/environment/managed-by."
  type        = map(string)
  default     = {}

  validation {
    condition = alltrue([
      for k, v in var.extra_labels :
      can(regex("^[a-z][a-z0-9_-]{0,62}$", k)) && can(regex("^[a-z0-9_-]{0,63}$", v))
    ])
    error_message = "Label keys must start with a lowercase letter; keys and values may use lowercase letters, digits, _ and - (max 63)."
  }
}

variable "subnet_cidr" {
  description = "Primary IPv4 range of the GKE subnet (node addresses)."
  type        = string
  default     = "10.10.0.0/20"

  validation {
    condition     = can(cidrhost(var.subnet_cidr, 0)) && startswith(var.subnet_cidr, "10.")
    error_message = "subnet_cidr must be a private CIDR block in 10.0.0.0/8, e.g. 10.10.0.0/20."
  }
}

variable "pods_cidr" {
  description = "Secondary range of the GKE subnet for Pod IPs (Autopilot needs a large one, /17 or bigger)."
  type        = string
  default     = "10.20.0.0/16"

  validation {
    condition     = can(cidrhost(var.pods_cidr, 0)) && can(regex("/([0-9]|1[0-7])$", var.pods_cidr))
    error_message = "pods_cidr must be a CIDR block of /17 or larger, e.g. 10.20.0.0/16."
  }
}

variable "services_cidr" {
  description = "Secondary range of the GKE subnet for Service ClusterIPs."
  type        = string
  default     = "10.30.0.0/20"

  validation {
    condition     = can(cidrhost(var.services_cidr, 0))
    error_message = "services_cidr must be a CIDR block, e.g. 10.30.0.0/20."
  }
}

variable "private_services_prefix_length" {
  description = "Prefix length of the range reserved for private services access (Cloud SQL private IP)."
  type        = number
  default     = 20

  validation {
    condition     = var.private_services_prefix_length >= 16 && var.private_services_prefix_length <= 24
    error_message = "private_services_prefix_length must be between 16 and 24."
  }
}

variable "master_authorized_networks" {
  description = "Internal CIDR blocks (VPN, bastion subnets) allowed to reach the cluster's private IP endpoint. Access from outside the VPC goes through the IAM-checked DNS endpoint instead."
  type = list(object({
    cidr_block   = string
    display_name = string
  }))
  default = []

  validation {
    condition = alltrue([
      for n in var.master_authorized_networks : can(cidrhost(n.cidr_block, 0)) && n.cidr_block != "0.0.0.0/0"
    ])
    error_message = "Each master authorized network must be a valid CIDR block other than 0.0.0.0/0."
  }
}

variable "gke_release_channel" {
  description = "GKE release channel for the Autopilot cluster."
  type        = string
  default     = "REGULAR"

  validation {
    condition     = contains(["RAPID", "REGULAR", "STABLE"], var.gke_release_channel)
    error_message = "gke_release_channel must be RAPID, REGULAR or STABLE."
  }
}

variable "gke_dns_endpoint_external_access" {
  description = "Allow callers outside the VPC (GitHub Actions, workstations) to reach the control plane through its DNS endpoint. Every call is still authorized by IAM (container.clusters.connect) and Kubernetes RBAC; there is no public IP endpoint."
  type        = bool
  default     = true

  validation {
    condition     = contains([true, false], var.gke_dns_endpoint_external_access)
    error_message = "gke_dns_endpoint_external_access must be true or false."
  }
}

variable "deletion_protection" {
  description = "Protect the GKE cluster and the Cloud SQL instance from `terraform destroy`. Turn off only to tear down a test environment."
  type        = bool
  default     = true

  validation {
    condition     = contains([true, false], var.deletion_protection)
    error_message = "deletion_protection must be true or false."
  }
}

variable "db_version" {
  description = "Cloud SQL PostgreSQL major version (Dagster and MLflow both support 14-17)."
  type        = string
  default     = "POSTGRES_16"

  validation {
    condition     = can(regex("^POSTGRES_1[4-7]$", var.db_version))
    error_message = "db_version must be POSTGRES_14, POSTGRES_15, POSTGRES_16 or POSTGRES_17."
  }
}

variable "db_tier" {
  description = "Cloud SQL machine tier (Enterprise edition), e.g. db-custom-1-3840 for 1 vCPU / 3.75 GiB."
  type        = string
  default     = "db-custom-1-3840"

  validation {
    condition     = can(regex("^db-(custom-[0-9]+-[0-9]+|f1-micro|g1-small|perf-optimized-N-[0-9]+)$", var.db_tier))
    error_message = "db_tier must be a Cloud SQL tier such as db-custom-1-3840 or db-g1-small."
  }
}

variable "db_availability_type" {
  description = "ZONAL (single zone) or REGIONAL (high availability with a standby in another zone)."
  type        = string
  default     = "ZONAL"

  validation {
    condition     = contains(["ZONAL", "REGIONAL"], var.db_availability_type)
    error_message = "db_availability_type must be ZONAL or REGIONAL."
  }
}

variable "db_disk_size_gb" {
  description = "Initial Cloud SQL disk size in GB (grows automatically)."
  type        = number
  default     = 20

  validation {
    condition     = var.db_disk_size_gb >= 10 && var.db_disk_size_gb <= 1000
    error_message = "db_disk_size_gb must be between 10 and 1000."
  }
}

variable "noncurrent_version_retention_days" {
  description = "Days an overwritten or deleted object version is kept in the lake and MLflow buckets (a replaced partition can be restored within this window)."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_retention_days >= 1 && var.noncurrent_version_retention_days <= 365
    error_message = "noncurrent_version_retention_days must be between 1 and 365."
  }
}

variable "prediction_log_nearline_after_days" {
  description = "Age in days after which prediction log objects move to NEARLINE storage."
  type        = number
  default     = 30

  validation {
    condition     = var.prediction_log_nearline_after_days >= 1
    error_message = "prediction_log_nearline_after_days must be at least 1."
  }
}

variable "prediction_log_retention_days" {
  description = "Age in days after which prediction log objects are deleted."
  type        = number
  default     = 400

  validation {
    condition     = var.prediction_log_retention_days >= 31
    error_message = "prediction_log_retention_days must be at least 31 (NEARLINE has a 30-day minimum storage duration)."
  }
}

variable "artifact_repository_id" {
  description = "Artifact Registry Docker repository for the fare-service (Bento) and Dagster user-code images."
  type        = string
  default     = "taxi-platform"

  validation {
    condition     = can(regex("^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$", var.artifact_repository_id))
    error_message = "artifact_repository_id must be lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "k8s_workloads" {
  description = "Kubernetes namespace and service account of each workload; these must match deploy/ (Workload Identity binds exactly these names)."
  type = object({
    dagster = object({ namespace = string, service_account = string })
    mlflow  = object({ namespace = string, service_account = string })
    serving = object({ namespace = string, service_account = string })
  })
  default = {
    dagster = { namespace = "dagster", service_account = "dagster" }
    mlflow  = { namespace = "mlflow", service_account = "mlflow" }
    serving = { namespace = "fare-service", service_account = "fare-service" }
  }

  validation {
    condition = alltrue(flatten([
      for w in values(var.k8s_workloads) : [
        can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", w.namespace)),
        can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", w.service_account)),
      ]
    ]))
    error_message = "Namespaces and service account names must be DNS labels (lowercase letters, digits, hyphens)."
  }
}

variable "fare_service_container_name" {
  description = "Name of the fare-service container in deploy/k8s/fare-service/deployment.yaml; the prediction log sink filters on it."
  type        = string
  default     = "fare-service"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.fare_service_container_name))
    error_message = "fare_service_container_name must be a DNS label."
  }
}

variable "prediction_log_payload_filter" {
  description = "Logging filter clause that picks the fare service's prediction lines (taxi_platform/serving/prediction_log.py writes one JSON line per request, quotes and fares as columns, split into parts of at most 200,000 bytes below Cloud Logging's 256 KB entry limit; Cloud Logging parses each into jsonPayload)."
  type        = string
  default     = "jsonPayload.fare_amount:* AND jsonPayload.request_id:*"

  validation {
    condition     = startswith(var.prediction_log_payload_filter, "jsonPayload.")
    error_message = "prediction_log_payload_filter must test jsonPayload fields, e.g. jsonPayload.fare_amount:*."
  }
}

variable "github_repository" {
  description = "GitHub repository (owner/name) whose Actions workflows may deploy, via Workload Identity Federation."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$", var.github_repository))
    error_message = "github_repository must look like owner/name."
  }
}

variable "github_deploy_ref_condition" {
  description = "CEL condition on the GitHub OIDC token's ref that may deploy (default: the main branch and tags)."
  type        = string
  default     = "assertion.ref == \"refs/heads/main\" || assertion.ref.startsWith(\"refs/tags/v\")"

  validation {
    condition     = strcontains(var.github_deploy_ref_condition, "assertion.ref")
    error_message = "github_deploy_ref_condition must constrain assertion.ref."
  }
}

variable "github_deploy_workflow" {
  description = "Path of the only workflow that may deploy (its OIDC workflow_ref must be <repository>/<this path>@<ref>)."
  type        = string
  default     = ".github/workflows/deploy.yml"

  validation {
    condition     = can(regex("^\\.github/workflows/[A-Za-z0-9_.-]+\\.ya?ml$", var.github_deploy_workflow))
    error_message = "github_deploy_workflow must be a path like .github/workflows/deploy.yml."
  }
}

variable "github_environment" {
  description = "GitHub environment the deploy job runs in (its OIDC subject is repo:<repository>:environment:<this>); give it required reviewers and a branch/tag rule."
  type        = string
  default     = "production"

  validation {
    condition     = can(regex("^[A-Za-z0-9_.-]+$", var.github_environment))
    error_message = "github_environment must be a plain GitHub environment name."
  }
}

variable "binary_authorization" {
  description = "Enforce Binary Authorization on the cluster: only images from this project's Artifact Registry repository (and Google's system images) may run."
  type        = bool
  default     = true

  validation {
    condition     = contains([true, false], var.binary_authorization)
    error_message = "binary_authorization must be true or false."
  }
}

variable "gke_security_group" {
  description = "Google Group (gke-security-groups@<your domain>) whose member groups may appear in Kubernetes RBAC; empty for none (needs Google Workspace or Cloud Identity)."
  type        = string
  default     = ""

  validation {
    condition     = var.gke_security_group == "" || startswith(var.gke_security_group, "gke-security-groups@")
    error_message = "gke_security_group must be empty or gke-security-groups@<domain>."
  }
}

variable "iap_members" {
  description = "Principals (group:…, user:…) allowed through Identity-Aware Proxy to the Dagster UI and MLflow on the GKE Gateway."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for m in var.iap_members : can(regex("^(user|group|domain|serviceAccount):", m))])
    error_message = "iap_members entries must start with user:, group:, domain: or serviceAccount:."
  }
}
