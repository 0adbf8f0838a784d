# GKE Autopilot: Google manages the nodes; we choose the network, the node identity and who may talk
# to the control plane. Nodes have private IPs only. The control plane has no public IP endpoint;
# clients outside the VPC (GitHub Actions, workstations) use the DNS-based endpoint, where every
# request is authorized by IAM (container.clusters.connect) and then by Kubernetes RBAC.

resource "google_container_cluster" "main" {
  name     = local.name
  location = var.region

  enable_autopilot    = true
  deletion_protection = var.deletion_protection
  resource_labels     = local.labels

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
