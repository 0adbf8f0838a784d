"""Static checks of terraform/: formatting, pinning, security and labelling rules, internal references.

No cloud and no provider downloads: ``terraform fmt`` runs offline, everything else parses the .tf
files with python-hcl2. (``terraform validate`` needs the providers, so CI can add it where they
can be downloaded.)
"""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import hcl2
import pytest
from hcl2.utils import SerializationOptions

from taxi_platform_tests.support.system_binaries import TERRAFORM, require

REPO = Path(__file__).resolve().parents[2]
TF_DIR = REPO / "terraform"

# Resource types that carry labels, and where: (attribute path inside the resource body).
LABEL_ATTRIBUTE = {
    "google_storage_bucket": ("labels",),
    "google_container_cluster": ("resource_labels",),
    "google_sql_database_instance": ("settings", "user_labels"),
    "google_artifact_registry_repository": ("labels",),
    "google_secret_manager_secret": ("labels",),
    "google_compute_global_address": ("labels",),
    "google_compute_address": ("labels",),
}
FORBIDDEN_OPEN_PORTS = {"22", "5000"}
OPEN_WORLD = {"0.0.0.0/0", "::/0"}

_OPTIONS = SerializationOptions(
    with_comments=False, explicit_blocks=False, preserve_heredocs=False, strip_string_quotes=True
)


# -- parsing helpers ---------------------------------------------------------------------------


def parse_hcl(text: str) -> dict[str, Any]:
    return hcl2.loads(text, serialization_options=_OPTIONS)


@cache
def tf_files() -> tuple[Path, ...]:
    files = tuple(sorted(TF_DIR.rglob("*.tf")))
    assert files, f"no .tf files under {TF_DIR}"
    return files


@cache
def parsed() -> dict[Path, dict[str, Any]]:
    return {path: parse_hcl(path.read_text()) for path in tf_files()}


def blocks(doc: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return doc.get(kind, [])


def resources_in(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for entry in blocks(doc, "resource"):
        for rtype, named in entry.items():
            for name, body in named.items():
                out.append((rtype, name, body))
    return out


def all_resources() -> list[tuple[str, str, dict[str, Any]]]:
    return [r for doc in parsed().values() for r in resources_in(doc)]


def first(value: Any) -> Any:
    """Nested blocks parse as lists of dicts; attributes as plain values."""
    return value[0] if isinstance(value, list) and value and isinstance(value[0], dict) else value


def dig(body: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = body
    for key in path:
        node = first(node)
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def walk_strings(node: Any):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from walk_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk_strings(item)


def walk_items(node: Any):
    """(key, value) of every attribute at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from walk_items(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk_items(item)


def is_literal(value: Any) -> bool:
    return isinstance(value, str) and "${" not in value


# -- the checkers (also run against known-bad snippets below, so they can fail) ------------------


def open_firewall_violations(resources) -> list[str]:
    problems = []
    for rtype, name, body in resources:
        if rtype != "google_compute_firewall":
            continue
        direction = str(body.get("direction", "INGRESS")).upper()
        sources = set(body.get("source_ranges") or [])
        if direction != "INGRESS" or not sources & OPEN_WORLD:
            continue
        for allow in body.get("allow", []):
            ports = {str(p) for p in allow.get("ports") or []}
            protocol = str(allow.get("protocol", "")).lower()
            if not ports and protocol in {"all", "tcp"}:
                problems.append(f"{rtype}.{name} opens every {protocol} port to the internet")
            for port in ports:
                low, _, high = port.partition("-")
                for forbidden in FORBIDDEN_OPEN_PORTS:
                    if int(low) <= int(forbidden) <= int(high or low):
                        problems.append(f"{rtype}.{name} opens port {forbidden} to {sorted(sources)}")
    return problems


def public_sql_violations(resources) -> list[str]:
    problems = []
    for rtype, name, body in resources:
        if rtype != "google_sql_database_instance":
            continue
        ip = first(dig(body, ("settings", "ip_configuration")))
        if not isinstance(ip, dict):
            problems.append(f"{rtype}.{name} has no ip_configuration (defaults to a public IP)")
            continue
        if ip.get("ipv4_enabled") is not False:
            problems.append(f"{rtype}.{name} does not set ipv4_enabled = false")
        for network in ip.get("authorized_networks", []):
            if network.get("value") in OPEN_WORLD:
                problems.append(f"{rtype}.{name} authorizes {network.get('value')}")
        if not ip.get("private_network"):
            problems.append(f"{rtype}.{name} has no private_network")
    return problems


def label_violations(resources) -> list[str]:
    problems = []
    for rtype, name, body in resources:
        path = LABEL_ATTRIBUTE.get(rtype)
        if path and dig(body, path) != "${local.labels}":
            problems.append(f"{rtype}.{name}: {'.'.join(path)} must be local.labels")
    return problems


CREDENTIAL_KEYS = re.compile(r"(password|secret_data|private_key|credentials|access_key|token)$")


def credential_violations(text_by_file: dict[str, str], docs: dict[str, dict[str, Any]]) -> list[str]:
    problems = []
    for fname, text in text_by_file.items():
        if "private_key" in text or "BEGIN PRIVATE KEY" in text:
            problems.append(f"{fname} mentions a private key")
    for fname, doc in docs.items():
        for key, value in walk_items(doc.get("resource", [])):
            if CREDENTIAL_KEYS.search(str(key)) and (is_literal(value) or isinstance(value, int | float)):
                problems.append(f"{fname}: {key} is a literal value; generate it (random_password)")
    return problems


# -- tests -------------------------------------------------------------------------------------


def test_terraform_fmt_check():
    terraform = require(TERRAFORM)
    result = subprocess.run(
        [terraform, "fmt", "-check", "-recursive", "-list=true", str(TF_DIR)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, (
        f"`terraform fmt -check -recursive terraform` wants to reformat:\n{result.stdout}{result.stderr}\n"
        "Run `terraform fmt -recursive terraform`."
    )


def test_required_version_and_providers_are_pinned():
    settings = [t for doc in parsed().values() for t in blocks(doc, "terraform")]
    required_version = next((t["required_version"] for t in settings if "required_version" in t), None)
    assert required_version, "terraform { required_version } is missing"
    assert "<" in required_version or "~>" in required_version, f"{required_version!r} has no upper bound"

    providers: dict[str, dict] = {}
    for t in settings:
        for block in t.get("required_providers", []):
            providers.update(block)
    assert {"google", "google-beta"} <= providers.keys()
    for name, spec in providers.items():
        assert re.match(r"^\s*(~>|=)\s*\d+\.\d+", spec.get("version", "")), (
            f"{name} version is not pinned: {spec}"
        )
        assert spec.get("source", "").startswith("hashicorp/"), f"{name} has no explicit source"


def test_every_variable_has_description_type_and_validation():
    variables = {
        name: body for doc in parsed().values() for v in blocks(doc, "variable") for name, body in v.items()
    }
    assert len(variables) >= 10
    for name, body in variables.items():
        assert str(body.get("description", "")).strip(), f"variable {name} has no description"
        assert body.get("type"), f"variable {name} has no type"
        validations = body.get("validation", [])
        assert validations, f"variable {name} has no validation block"
        for v in validations:
            assert f"var.{name}" in v["condition"], f"variable {name}: validation does not test var.{name}"
            assert v.get("error_message"), f"variable {name}: validation has no error_message"


def test_references_point_at_declared_things():
    """A cheap stand-in for `terraform validate`: every var./local./resource reference resolves."""
    variables = {n for doc in parsed().values() for v in blocks(doc, "variable") for n in v}
    local_names = {n for doc in parsed().values() for loc in blocks(doc, "locals") for n in loc}
    declared = {f"{t}.{n}" for t, n, _ in all_resources()}
    text = "\n".join(p.read_text() for p in tf_files())
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())  # drop comments

    for name in set(re.findall(r"\bvar\.([a-z0-9_]+)", code)):
        assert name in variables, f"var.{name} is used but not declared"
    for name in set(re.findall(r"\blocal\.([a-z0-9_]+)", code)):
        assert name in local_names, f"local.{name} is used but not declared"
    for ref in set(re.findall(r"\b(google_[a-z0-9_]+|random_[a-z_]+)\.([a-z0-9_]+)\b", code)):
        if re.search(rf'resource\s+"{ref[0]}"\s+"{ref[1]}"', code):
            continue
        assert f"{ref[0]}.{ref[1]}" in declared, f"{ref[0]}.{ref[1]} is referenced but not declared"


def test_no_firewall_opens_ssh_or_mlflow_to_the_internet():
    assert open_firewall_violations(all_resources()) == []


def test_firewall_checker_catches_an_open_rule():
    bad = parse_hcl(
        """
resource "google_compute_firewall" "ssh" {
  name          = "allow-ssh"
  network       = "default"
  source_ranges = ["0.0.0.0/0"]
  allow {
    protocol = "tcp"
    ports    = ["22", "4000-6000"]
  }
}
"""
    )
    problems = open_firewall_violations(resources_in(bad))
    assert any("port 22" in p for p in problems) and any("port 5000" in p for p in problems)


def test_cloud_sql_is_private_with_no_public_authorized_networks():
    instances = [r for r in all_resources() if r[0] == "google_sql_database_instance"]
    assert len(instances) == 1
    assert public_sql_violations(all_resources()) == []
    _, _, body = instances[0]
    ip = first(dig(body, ("settings", "ip_configuration")))
    assert ip["ssl_mode"] == "ENCRYPTED_ONLY"
    bad = parse_hcl(
        """
resource "google_sql_database_instance" "db" {
  settings {
    ip_configuration {
      ipv4_enabled = true
      authorized_networks {
        value = "0.0.0.0/0"
      }
    }
  }
}
"""
    )
    assert len(public_sql_violations(resources_in(bad))) == 3


def test_databases_for_dagster_and_mlflow_with_generated_passwords():
    res = {(t, n): b for t, n, b in all_resources()}
    assert res[("google_sql_database", "app")]["for_each"] == "${local.databases}"
    locals_text = (TF_DIR / "locals.tf").read_text()
    assert re.search(r'databases\s*=\s*toset\(\["dagster", "mlflow"\]\)', locals_text)
    assert res[("google_sql_user", "app")]["password"] == "${random_password.db[each.key].result}"
    version = res[("google_secret_manager_secret_version", "db_password")]
    assert version["secret_data"] == "${random_password.db[each.key].result}"
    assert int(res[("random_password", "db")]["length"]) >= 24


def test_every_labelable_resource_has_the_common_labels():
    resources = all_resources()
    present = {t for t, _, _ in resources}
    for required in (
        "google_storage_bucket",
        "google_container_cluster",
        "google_sql_database_instance",
        "google_artifact_registry_repository",
        "google_secret_manager_secret",
    ):
        assert required in present, f"no {required} in terraform/"
    assert label_violations(resources) == []
    assert label_violations(
        resources_in(parse_hcl('resource "google_storage_bucket" "x" {\n  name = "x"\n}\n'))
    )


def test_buckets_have_uniform_access_versioning_and_lifecycle():
    buckets = {n: b for t, n, b in all_resources() if t == "google_storage_bucket"}
    assert {"lake", "mlflow_artifacts", "predictions"} <= buckets.keys()
    for name, body in buckets.items():
        assert body.get("uniform_bucket_level_access") is True, f"bucket {name}: uniform access off"
        assert body.get("public_access_prevention") == "enforced", (
            f"bucket {name}: public access not prevented"
        )
        assert first(body.get("versioning"))["enabled"] is True, f"bucket {name}: versioning off"
        assert body.get("lifecycle_rule"), f"bucket {name}: no lifecycle rules"
        assert body.get("force_destroy") in (None, False), f"bucket {name}: force_destroy would delete data"
    predictions_actions = [first(r["action"])["type"] for r in buckets["predictions"]["lifecycle_rule"]]
    assert {"SetStorageClass", "Delete"} <= set(predictions_actions)


def test_no_hard_coded_credentials():
    texts = {p.name: p.read_text() for p in tf_files()}
    texts.update({p.name: p.read_text() for p in TF_DIR.glob("*.example")})
    docs = {p.name: d for p, d in parsed().items()}
    assert credential_violations(texts, docs) == []
    bad = {"bad.tf": parse_hcl('resource "google_sql_user" "u" {\n  password = "hunter2"\n}\n')}
    assert credential_violations({"bad.tf": ""}, bad)


def test_gke_autopilot_private_with_workload_identity():
    clusters = [b for t, _, b in all_resources() if t == "google_container_cluster"]
    assert len(clusters) == 1
    cluster = clusters[0]
    assert cluster["enable_autopilot"] is True
    assert first(cluster["private_cluster_config"])["enable_private_nodes"] is True
    assert first(cluster["workload_identity_config"])["workload_pool"] == "${local.workload_pool}"
    for block in cluster.get("master_authorized_networks_config", []):
        assert "0.0.0.0/0" not in str(block)


def test_workload_identity_binds_each_workload_to_its_kubernetes_service_account():
    res = {(t, n): b for t, n, b in all_resources()}
    binding = res[("google_service_account_iam_member", "workload_identity")]
    assert binding["role"] == "roles/iam.workloadIdentityUser"
    assert (
        binding["member"]
        == "serviceAccount:${local.workload_pool}[${each.value.namespace}/${each.value.ksa}]"
    )
    assert res[("google_service_account", "workload")]["for_each"] == "${local.workloads}"
    locals_text = (TF_DIR / "locals.tf").read_text()
    for workload in ("dagster", "mlflow", "serving"):
        assert re.search(rf"^\s+{workload} = {{", locals_text, re.M), f"no {workload} workload identity"
    # Least privilege: no workload gets a project-wide role; grants are on one bucket or secret.
    project_grants = [b for (t, _), b in res.items() if t == "google_project_iam_member"]
    for grant in project_grants:
        assert "workload" not in grant["member"], f"workload SA has a project-level role: {grant}"
        assert grant["role"] not in {"roles/owner", "roles/editor"}, grant


def test_prediction_log_sink_targets_the_predictions_bucket():
    res = {(t, n): b for t, n, b in all_resources()}
    sink = res[("google_logging_project_sink", "predictions")]
    assert sink["destination"] == "storage.googleapis.com/${google_storage_bucket.predictions.name}"
    assert sink["unique_writer_identity"] is True
    text = (TF_DIR / "logging.tf").read_text()
    assert "resource.labels.container_name" in text and "k8s_container" in text
    assert "var.prediction_log_payload_filter" in text
    writer = res[("google_storage_bucket_iam_member", "predictions_sink_writer")]
    assert writer["bucket"] == "${google_storage_bucket.predictions.name}"
    assert writer["role"] == "roles/storage.objectCreator"
    assert writer["member"] == "${google_logging_project_sink.predictions.writer_identity}"


def test_backend_is_a_documented_partial_gcs_backend_and_examples_exist():
    backend = (TF_DIR / "backend.tf").read_text()
    assert re.search(r'backend\s+"gcs"\s*\{\s*\}', backend), "backend.tf should hold a partial gcs backend"
    assert "terraform init -backend-config=" in backend
    example = parse_hcl((TF_DIR / "terraform.tfvars.example").read_text())
    variables = {n for doc in parsed().values() for v in blocks(doc, "variable") for n in v}
    required = {
        n
        for doc in parsed().values()
        for v in blocks(doc, "variable")
        for n, body in v.items()
        if "default" not in body
    }
    assert required <= example.keys(), f"terraform.tfvars.example misses required {required - example.keys()}"
    assert example.keys() <= variables, f"unknown variables in the example: {example.keys() - variables}"


@pytest.mark.parametrize("name", ["lake_root", "github_workload_identity_provider", "image_registry"])
def test_outputs_that_the_deploy_docs_use_exist(name: str):
    outputs = {n: b for doc in parsed().values() for o in blocks(doc, "output") for n, b in o.items()}
    assert name in outputs and outputs[name].get("description")


# -- least privilege for CI, admission, audit (issue: security review) ---------------------------------------

# IAM roles that let a principal create or change Kubernetes objects anywhere in the cluster.
CLUSTER_WIDE_CONTAINER_ROLES = {
    "roles/container.developer",
    "roles/container.admin",
    "roles/container.clusterAdmin",
    "roles/editor",
    "roles/owner",
}


def _resource(rtype: str, name: str) -> dict[str, Any]:
    res = {(t, n): b for t, n, b in all_resources()}
    assert (rtype, name) in res, f"{rtype}.{name} is missing"
    return res[(rtype, name)]


def test_deployer_has_no_project_wide_kubernetes_role_only_connect():
    grants = [
        b for t, _, b in all_resources() if t == "google_project_iam_member" and "deployer" in b["member"]
    ]
    assert grants, "the deployer needs a grant to reach the cluster"
    for grant in grants:
        assert grant["role"] not in CLUSTER_WIDE_CONTAINER_ROLES, grant
        assert grant["role"] == "${google_project_iam_custom_role.deployer_gke.id}", grant
    role = _resource("google_project_iam_custom_role", "deployer_gke")
    assert sorted(role["permissions"]) == ["container.clusters.connect", "container.clusters.get"]


def test_github_oidc_condition_pins_repository_workflow_ref_and_environment():
    provider = _resource("google_iam_workload_identity_pool_provider", "github")
    condition = provider["attribute_condition"]
    for clause in (
        'assertion.sub == \\"repo:${var.github_repository}:environment:${var.github_environment}\\"',
        'assertion.repository == \\"${var.github_repository}\\"',
        'assertion.environment == \\"${var.github_environment}\\"',
        'assertion.workflow_ref == \\"${var.github_repository}/${var.github_deploy_workflow}@\\" + assertion.ref',
        "${var.github_deploy_ref_condition}",
    ):
        assert clause in condition, f"attribute condition lacks {clause}"
    assert " && " in condition and "||" not in condition.replace("${var.github_deploy_ref_condition}", "")
    binding = _resource("google_service_account_iam_member", "deployer_github")
    assert binding["member"].startswith("principal://") and binding["member"].endswith(
        "/subject/repo:${var.github_repository}:environment:${var.github_environment}"
    ), "only the deploy job's subject may impersonate the deployer, not every token of the repository"
    variables = {
        k: v for doc in parsed().values() for entry in blocks(doc, "variable") for k, v in entry.items()
    }
    assert variables["github_deploy_workflow"]["default"] == ".github/workflows/deploy.yml"
    assert variables["github_environment"]["default"] == "production"
    # the environment is the one the deploy job declares
    import yaml

    deploy = yaml.safe_load((REPO / ".github/workflows/deploy.yml").read_text())
    assert {job.get("environment") for job in deploy["jobs"].values()} == {"production"}


def test_binary_authorization_is_an_enforced_option_allowing_only_our_registry():
    cluster = _resource("google_container_cluster", "main")
    mode = first(cluster["binary_authorization"])["evaluation_mode"]
    assert "PROJECT_SINGLETON_POLICY_ENFORCE" in mode and "var.binary_authorization" in mode
    policy = _resource("google_binary_authorization_policy", "main")
    assert first(policy["default_admission_rule"])["evaluation_mode"] == "ALWAYS_DENY"
    assert first(policy["admission_whitelist_patterns"])["name_pattern"] == "${local.image_registry}/**"
    assert first(cluster["master_auth"])["client_certificate_config"][0]["issue_client_certificate"] is False


def test_audit_logging_flow_logs_firewall_and_bucket_access_logs():
    flags = {
        f["name"]: f["value"]
        for f in first(_resource("google_sql_database_instance", "main")["settings"])["database_flags"]
    }
    assert flags["cloudsql.enable_pgaudit"] == "on" and flags["log_connections"] == "on"
    assert flags["log_min_error_statement"] == "error" and flags["log_statement"] == "ddl"
    assert (
        first(_resource("google_compute_subnetwork", "gke")["log_config"])["metadata"]
        == "INCLUDE_ALL_METADATA"
    )
    deny = _resource("google_compute_firewall", "deny_all_ingress")
    assert deny["direction"] == "INGRESS" and first(deny["deny"])["protocol"] == "all" and "allow" not in deny
    for name in ("lake", "mlflow_artifacts", "predictions"):
        logging = first(_resource("google_storage_bucket", name)["logging"])
        assert logging["log_bucket"] == "${google_storage_bucket.access_logs.name}", name


CHECKOV_SKIP = re.compile(r"#\s*checkov:skip=(CKV2?_[A-Z0-9]+_\d+)(:?)(.*)")


def test_every_checkov_skip_is_inline_with_a_reason():
    skips = []
    for path in [*tf_files(), *(REPO / "deploy").rglob("*"), *(REPO / ".github/workflows").glob("*.yml")]:
        if path.is_file():
            for match in CHECKOV_SKIP.finditer(path.read_text(errors="ignore")):
                skips.append((path.name, match.group(1)))
                assert match.group(2) == ":" and len(match.group(3).strip()) >= 40, (
                    f"{path.name}: checkov skip of {match.group(1)} without a written reason"
                )
    assert len(skips) == len(set(skips)), "a check is skipped twice in one file"
    ci = (REPO / ".ci/run").read_text()
    assert "--skip-check" not in ci and ".checkov" not in ci, "no blanket skip list"
    assert re.search(
        r"uvx --from checkov==\d+\.\d+\.\d+ checkov -d terraform -d deploy -d \.github/workflows \\\n\s+"
        r"--framework terraform kubernetes dockerfile github_actions --skip-download",
        ci,
    ), ".ci/run must scan terraform/, deploy/ and the workflows with a pinned checkov, offline"
    assert "checkov" not in (REPO / "pyproject.toml").read_text(), "checkov runs in its own tool environment"
