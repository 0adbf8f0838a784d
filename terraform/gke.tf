# GKE Autopilot: Google manages the nodes; we choose the network, the node identity and who may talk
# to the control plane. Nodes have private IPs only. The control plane has no public IP endpoint;
# clients outside the VPC (GitHub Actions, workstations) use the DNS-based endpoint, where every
# request is authorized by IAM (container.clusters.connect) and then by Kubernetes RBAC.

resource "google_container_cluster" "main" {
  # checkov:skip=CKV_GCP_12:Autopilot always runs GKE Dataplane V2, which enforces NetworkPolicies (deploy/k8s/platform); the network_policy block is not settable on Autopilot
  # checkov:skip=CKV_GCP_61:Autopilot pre-configures intranode visibility (not settable); VPC flow logs are on for the subnet (network.tf)
  # checkov:skip=CKV_GCP_69:Autopilot always runs the GKE metadata server for Workload Identity; node_config is not settable on Autopilot
  # checkov:skip=CKV_GCP_21:resource_labels is local.labels (app, environment, managed-by), which checkov does not resolve; test_terraform checks the labels
  # checkov:skip=CKV_GCP_65:Google Groups for RBAC is optional (var.gke_security_group): it needs a Google Workspace or Cloud Identity domain
  name     = local.name
  location = var.region

  enable_autopilot    = true
  deletion_protection = var.deletion_protection
  resource_labels     = local.labels

  # FQDNNetworkPolicy (deploy/k8s/platform/networkpolicies-dagster.yaml): Dagster's HTTPS egress by host name.
  enable_fqdn_network_policy = true

  network    = google_compute_network.vpc.id
  subnetwork = google_compute_subnetwork.gke.id

  ip_allocation_policy {
    cluster_secondary_range_name  = "pods"
    services_secondary_range_name = "services"
  }

  private_cluster_config {
    enable_private_nodes    = true
    enable_private_endpoint = true
  }

  master_authorized_networks_config {
    dynamic "cidr_blocks" {
      for_each = var.master_authorized_networks
      content {
        cidr_block   = cidr_blocks.value.cidr_block
        display_name = cidr_blocks.value.display_name
      }
    }
  }

  control_plane_endpoints_config {
    dns_endpoint_config {
      allow_external_traffic = var.gke_dns_endpoint_external_access
    }
  }

  # Kubernetes RBAC may name Google Groups (members of gke-security-groups@<domain>) when a domain exists.
  dynamic "authenticator_groups_config" {
    for_each = var.gke_security_group == "" ? [] : [var.gke_security_group]
    content {
      security_group = authenticator_groups_config.value
    }
  }

  # No client certificates: every request is authenticated by Google identity, then authorized by RBAC.
  master_auth {
    client_certificate_config {
      issue_client_certificate = false
    }
  }

  # Only images this project built and pushed (plus Google's own system images) may run: see
  # google_binary_authorization_policy below. DISABLED when var.binary_authorization is false.
  binary_authorization {
    evaluation_mode = var.binary_authorization ? "PROJECT_SINGLETON_POLICY_ENFORCE" : "DISABLED"
  }

  # Mounts Secret Manager secrets into pods as files (the fare service's API-key hashes).
  secret_manager_config {
    enabled = true
  }

  release_channel {
    channel = var.gke_release_channel
  }

  # Pods act as Google service accounts through their Kubernetes service accounts (iam.tf).
  workload_identity_config {
    workload_pool = local.workload_pool
  }

  # Nodes run as a dedicated, minimal service account instead of the Compute Engine default one.
  cluster_autoscaling {
    auto_provisioning_defaults {
      service_account = google_service_account.gke_nodes.email
      oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]
    }
  }

  depends_on = [
    google_project_service.apis,
    google_project_iam_member.gke_nodes,
  ]
}

# The project's Binary Authorization policy (one per project): deny every image except those under our
# Artifact Registry repository, which only the deployer (CI) and the admin can push to; Google's
# system images (GKE's own pods) are allowed by the global policy.
resource "google_binary_authorization_policy" "main" {
  count = var.binary_authorization ? 1 : 0

  global_policy_evaluation_mode = "ENABLE"

  admission_whitelist_patterns {
    name_pattern = "${local.image_registry}/**"
  }

  default_admission_rule {
    evaluation_mode  = "ALWAYS_DENY"
    enforcement_mode = "ENFORCED_BLOCK_AND_AUDIT_LOG"
  }

  depends_on = [google_project_service.apis]
}
