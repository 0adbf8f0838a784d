"""Static checks of deploy/: Kubernetes manifests, kustomizations, Dagster Helm values, Dockerfiles.

They also check that the names the pieces share agree: Workload Identity bindings in terraform/,
Kubernetes service accounts and namespaces in deploy/, the MLflow URL Dagster uses, the container
name the prediction-log sink filters on.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml
from hcl2.utils import SerializationOptions

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
IMAGE_PLACEHOLDER = re.compile(r"^REGION-docker\.pkg\.dev/PROJECT/REPO/[a-z0-9-]+:[A-Za-z0-9_.-]+$")


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifests(app: str) -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / app / "kustomization.yaml").read_text())
    docs = []
    for resource in kustomization["resources"]:
        docs.extend(load_docs(K8S / app / resource))
    return docs


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    spec = deployment["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def terraform_defaults() -> dict[str, Any]:
    options = SerializationOptions(
        with_comments=False, explicit_blocks=False, preserve_heredocs=False, strip_string_quotes=True
    )
    doc = hcl2.loads((REPO / "terraform" / "variables.tf").read_text(), serialization_options=options)
    return {name: body.get("default") for v in doc["variable"] for name, body in v.items()}


def helm_values() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "helm" / "dagster-values.yaml").read_text())


# -- kustomizations -----------------------------------------------------------------------------


@pytest.mark.parametrize("app", ["fare-service", "fare-canary", "mlflow"])
def test_kustomization_lists_every_manifest_and_nothing_missing(app: str):
    directory = K8S / app
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in directory.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk, f"{app}: kustomization resources {sorted(listed)} != files {sorted(on_disk)}"
    for generator in kustomization.get("configMapGenerator", []):
        for env_file in generator.get("envs", []):
            assert (directory / env_file).is_file(), f"{app}: configMapGenerator file {env_file} missing"
    for doc in manifests(app):
        assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), doc


@pytest.mark.parametrize("app", ["fare-service", "mlflow"])
def test_everything_lives_in_the_apps_namespace(app: str):
    docs = manifests(app)
    namespace = one(docs, "Namespace")["metadata"]["name"]
    assert namespace == app
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == namespace, f"{doc['kind']} outside {namespace}"


# -- every Deployment ---------------------------------------------------------------------------


@pytest.mark.parametrize("app", ["fare-service", "fare-canary", "mlflow"])
def test_deployments_are_hardened_and_sized(app: str):
    deployment = one(manifests(app), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert (
        isinstance(pod["securityContext"].get("runAsUser"), int) and pod["securityContext"]["runAsUser"] > 0
    )
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    volumes = {v["name"] for v in pod.get("volumes", [])}
    for container in containers(deployment):
        name = container["name"]
        image = container["image"]
        assert not image.endswith(":latest") and ":" in image.rsplit("/", 1)[-1], (
            f"{name}: untagged image {image}"
        )
        assert IMAGE_PLACEHOLDER.match(image), (
            f"{name}: image {image} is not REGION-docker.pkg.dev/PROJECT/REPO/..."
        )
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= container["resources"][kind].keys(), f"{name}: no cpu/memory {kind}"
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"]["drop"] == ["ALL"]
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes, f"{name}: mounts undefined volume {mount['name']}"
        for value in env_of(container).values():
            assert not (isinstance(value, str) and re.search(r"password=|:[^@/$]+@", value)), (
                f"{name}: literal credential in env value {value!r}"
            )
    main = pod["containers"][0]
    assert main.get("readinessProbe") and main.get("livenessProbe"), f"{app}: probes missing"


# -- fare service ---------------------------------------------------------------------------------


def test_fare_service_deployment_contract():
    docs = manifests("fare-service")
    deployment = one(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "REGION-docker.pkg.dev/PROJECT/REPO/fare-service:BENTO_TAG"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 3000}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ("http", 3000)
    env = env_of(container)
    assert env["OMP_NUM_THREADS"] == "1"
    assert env["TAXI_PREDICTION_LOG"] == "stdout"
    # The HPA owns the replica count; a `replicas` field would reset it on every apply.
    assert "replicas" not in deployment["spec"]
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_fare_service_hpa_pdb_and_service_select_the_deployment():
    docs = manifests("fare-service")
    deployment = one(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()

    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1",
        "Deployment",
        deployment["metadata"]["name"],
    )
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"

    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items(), "PDB selects no fare pods"
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "PDB would block every node drain"

    service = one(docs, "Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"].items() <= pod_labels.items()
    container_ports = {
        p["name"]: p["containerPort"]
        for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in container_ports or port["targetPort"] in container_ports.values()


def test_fare_service_identity_matches_terraform():
    docs = manifests("fare-service")
    defaults = terraform_defaults()
    serving = defaults["k8s_workloads"]["serving"]
    account = one(docs, "ServiceAccount")
    assert (account["metadata"]["namespace"], account["metadata"]["name"]) == (
        serving["namespace"],
        serving["service_account"],
    ), "Workload Identity in terraform/ binds a different Kubernetes service account"
    assert account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"].endswith(
        ".iam.gserviceaccount.com"
    )
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]
    # The prediction-log sink filters on the container name.
    assert (
        deployment["spec"]["template"]["spec"]["containers"][0]["name"]
        == defaults["fare_service_container_name"]
    )


# -- the fare service's canary (deploy/k8s/fare-canary) and its weighted route ---------------------------


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels and In/NotIn/Exists/DoesNotExist expressions; a Service's plain map) against
    a pod's labels."""
    if not selector.keys() <= {"matchLabels", "matchExpressions"}:
        selector = {"matchLabels": selector}  # a Service's selector
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not ok:
            return False
    return True


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"]["labels"]


def test_fare_canary_is_one_deployment_and_its_service_in_the_fare_service_namespace():
    docs = manifests("fare-canary")
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == [
        ("Deployment", "fare-service-canary"),
        ("Service", "fare-service-canary"),
    ]
    assert {d["metadata"]["namespace"] for d in docs} == {"fare-service"}
    assert one(manifests("fare-service"), "Namespace")["metadata"]["name"] == "fare-service"
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    # No HPA or PDB may target it (the weight, not the pod count, is its share of traffic).
    for doc in all_k8s_docs():
        if doc["kind"] == "HorizontalPodAutoscaler":
            assert doc["spec"]["scaleTargetRef"]["name"] != "fare-service-canary"


def test_canary_pod_spec_is_the_stable_one():
    """Same image placeholder, hardening, probes, env, volumes, service account and container name (the
    prediction-log sink's filter): only the labels differ, so the stable objects never select canary pods."""
    stable = one(manifests("fare-service"), "Deployment")
    canary = one(manifests("fare-canary"), "Deployment")
    assert canary["metadata"]["annotations"] == stable["metadata"]["annotations"], "checkov skips differ"
    assert {k: v for k, v in canary["spec"].items() if k not in ("replicas", "selector", "template")} == {
        k: v for k, v in stable["spec"].items() if k not in ("selector", "template")
    }
    rename = {"app.kubernetes.io/name": "fare-service-canary"}
    expected = yaml.safe_load(yaml.safe_dump(stable["spec"]["template"]["spec"]))
    for constraint in expected.get("topologySpreadConstraints", []):
        constraint["labelSelector"]["matchLabels"].update(rename)
    assert canary["spec"]["template"]["spec"] == expected
    assert pod_labels(canary) == {**pod_labels(stable), **rename, "taxi-platform/track": "canary"}


def test_stable_and_canary_selectors_never_overlap():
    stable_docs = manifests("fare-service")
    canary_docs = manifests("fare-canary")
    stable, canary = one(stable_docs, "Deployment"), one(canary_docs, "Deployment")
    # A Deployment's selector is immutable: the stable one stays what the cluster already has.
    assert stable["spec"]["selector"] == {"matchLabels": {"app.kubernetes.io/name": "fare-service"}}
    assert matches(canary["spec"]["selector"], pod_labels(canary))
    assert not matches(canary["spec"]["selector"], pod_labels(stable))
    for doc in stable_docs:
        selector = doc.get("spec", {}).get("selector")
        if selector is not None:  # Deployment, Service, PDB
            assert matches(selector, pod_labels(stable)), doc["kind"]
            assert not matches(selector, pod_labels(canary)), f"the stable {doc['kind']} selects canary pods"
    canary_service = one(canary_docs, "Service")
    assert matches(canary_service["spec"]["selector"], pod_labels(canary))
    assert not matches(canary_service["spec"]["selector"], pod_labels(stable))
    assert canary_service["spec"]["type"] == "ClusterIP"
    assert canary_service["spec"]["ports"] == one(stable_docs, "Service")["spec"]["ports"]


def test_fare_service_network_policies_treat_canary_pods_like_stable_ones():
    policies = [
        d
        for d in all_k8s_docs()
        if d["kind"] == "NetworkPolicy" and d["metadata"]["namespace"] == "fare-service"
    ]

    def applying(labels: dict[str, str]) -> list[str]:
        return sorted(p["metadata"]["name"] for p in policies if matches(p["spec"]["podSelector"], labels))

    stable = applying(pod_labels(one(manifests("fare-service"), "Deployment")))
    canary = applying(pod_labels(one(manifests("fare-canary"), "Deployment")))
    assert stable == canary, f"stable pods get {stable}, canary pods {canary}"
    assert "fare-service-http" in canary, "canary pods would be default-denied: no port 3000, no DNS"
    # The selector helper itself: the http policy selects neither an unrelated pod nor a pod without labels.
    assert applying({"app.kubernetes.io/name": "other"}) == applying({}) == ["default-deny"]


def test_fare_api_route_splits_by_weight_between_the_stable_and_the_canary_service():
    docs = all_k8s_docs()
    (route,) = [d for d in docs if d["kind"] == "HTTPRoute" and d["metadata"]["namespace"] == "fare-service"]
    assert route["metadata"]["name"] == "fare-service"
    assert route["spec"]["parentRefs"] == [{"name": "fare-api", "namespace": "fare-service"}]
    (rule,) = route["spec"]["rules"]
    # Only the quote endpoints are public (not /metrics or the docs).
    assert rule["matches"] == [
        {"path": {"type": "Exact", "value": "/predict"}},
        {"path": {"type": "Exact", "value": "/predict_batch"}},
    ]
    services = {
        s["metadata"]["name"]: s
        for s in (one(manifests("fare-service"), "Service"), one(manifests("fare-canary"), "Service"))
    }
    # The workflow's JSON patch addresses the weights by index: 0 stable, 1 canary (test_workflows checks it).
    assert [(ref["name"], ref["weight"]) for ref in rule["backendRefs"]] == [
        ("fare-service", 100),
        ("fare-service-canary", 0),
    ]
    for ref in rule["backendRefs"]:
        assert ref["port"] in [p["port"] for p in services[ref["name"]]["spec"]["ports"]]
    # Health checks on /readyz for both backends; no IAP in front of the API-key protected fare API.
    checks = {
        d["spec"]["targetRef"]["name"]: d["spec"]["default"]["config"]["httpHealthCheck"]
        for d in docs
        if d["kind"] == "HealthCheckPolicy" and d["metadata"]["namespace"] == "fare-service"
    }
    assert checks == {name: {"requestPath": "/readyz", "port": 3000} for name in services}
    assert not [
        d for d in docs if d["kind"] == "GCPBackendPolicy" and d["metadata"]["namespace"] == "fare-service"
    ]


def deployer_allows(group: str, resource: str, verb: str, name: str, namespace: str = "fare-service") -> bool:
    """Whether the deployer's Role in `namespace` (deploy/k8s/platform/deployer-rbac.yaml) allows the request."""
    roles = [
        d
        for d in load_docs(K8S / "platform" / "deployer-rbac.yaml")
        if d["kind"] == "Role" and d["metadata"]["namespace"] == namespace
    ]
    return any(
        group in rule["apiGroups"]
        and resource in rule["resources"]
        and verb in rule["verbs"]
        and (not rule.get("resourceNames") or name in rule["resourceNames"])
        for role in roles
        for rule in role["rules"]
    )


def test_deployer_may_remove_the_canary_and_shift_weights_but_nothing_more():
    assert deployer_allows("apps", "deployments", "delete", "fare-service-canary")
    assert not deployer_allows("apps", "deployments", "delete", "fare-service"), "it must never delete stable"
    assert deployer_allows("gateway.networking.k8s.io", "httproutes", "patch", "fare-service")
    assert deployer_allows("gateway.networking.k8s.io", "httproutes", "get", "fare-service")
    for verb in ("create", "delete", "update"):
        assert not deployer_allows("gateway.networking.k8s.io", "httproutes", verb, "fare-service")
    assert not deployer_allows("gateway.networking.k8s.io", "httproutes", "patch", "other-route")
    for resource in ("gateways", "gatewayclasses", "referencegrants"):
        assert not deployer_allows("gateway.networking.k8s.io", resource, "patch", "fare-api")
    assert not deployer_allows("networking.gke.io", "healthcheckpolicies", "patch", "fare-service-health")
    assert not deployer_allows(
        "gateway.networking.k8s.io", "httproutes", "patch", "mlflow", namespace="mlflow"
    )


def test_render_fills_the_canary_manifests_and_its_service_needs_no_rendering():
    kustomized = yaml.safe_dump_all(manifests("fare-canary"), width=10**6)
    image = "us-east4-docker.pkg.dev/proj-1/taxi-platform/fare-service:x7k2mqa4@sha256:" + "a" * 64
    result = render(kustomized, FARE_SERVICE_IMAGE=image, **RENDER_ENV)
    assert result.returncode == 0, result.stderr
    deployment = next(d for d in yaml.safe_load_all(result.stdout) if d["kind"] == "Deployment")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == image
    result = render(kustomized, **RENDER_ENV)
    assert result.returncode != 0 and "FARE_SERVICE_IMAGE" in result.stderr and result.stdout == ""
    # deploy.yml applies the canary Service file as it is (the route's second backend from the first deploy on).
    service = (K8S / "fare-canary" / "service.yaml").read_text()
    result = render(service)
    assert result.returncode == 0 and yaml.safe_load(result.stdout) == yaml.safe_load(service), result.stderr


# -- MLflow ---------------------------------------------------------------------------------------


def test_mlflow_is_internal_and_uses_cloud_sql_and_gcs():
    docs = manifests("mlflow")
    service = one(docs, "Service")
    assert service["spec"]["type"] == "ClusterIP", "MLflow must not be exposed by a LoadBalancer/NodePort"
    assert [p["port"] for p in service["spec"]["ports"]] == [5000]
    for doc in docs:
        assert doc.get("spec", {}).get("type") not in ("LoadBalancer", "NodePort")

    deployment = one(docs, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    pod = deployment["spec"]["template"]["spec"]
    init = pod["initContainers"][0]
    # The password is a mounted Secret file, read by the start command; no secret in any env (CKV_K8S_35).
    (secret_volume,) = [v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == "mlflow-db"]
    for c in (container, init):
        assert not any("valueFrom" in e for e in c.get("env", [])), f"{c['name']}: secret in the environment"
        assert {"name": secret_volume["name"], "mountPath": "/etc/mlflow-db", "readOnly": True} in c[
            "volumeMounts"
        ]
        script = c["command"][2]
        # psycopg2 is the driver the image installs; a bare postgresql:// makes SQLAlchemy 2.1 import psycopg (3).
        uri = re.search(r'(?:MLFLOW_BACKEND_STORE_URI|db)="(postgresql[^"]+)"', script).group(1)
        assert uri == (
            "postgresql+psycopg2://mlflow:$(cat /etc/mlflow-db/password)@${MLFLOW_DB_HOST}:5432/mlflow?sslmode=require"
        )
    assert container["command"][:2] == ["sh", "-c"] and container["command"][2].endswith('exec mlflow "$@"')
    assert pod["automountServiceAccountToken"] is False
    assert "--serve-artifacts" in container["args"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"

    kustomization = yaml.safe_load((K8S / "mlflow" / "kustomization.yaml").read_text())
    (generator,) = [g for g in kustomization["configMapGenerator"] if g["name"] == "mlflow-config"]
    config = dict(
        line.split("=", 1)
        for line in (K8S / "mlflow" / generator["envs"][0]).read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert config["MLFLOW_ARTIFACTS_DESTINATION"].startswith("gs://")
    assert {"MLFLOW_DB_HOST", "GOOGLE_CLOUD_PROJECT"} <= config.keys()

    mlflow = terraform_defaults()["k8s_workloads"]["mlflow"]
    account = one(docs, "ServiceAccount")
    assert (account["metadata"]["namespace"], account["metadata"]["name"]) == (
        mlflow["namespace"],
        mlflow["service_account"],
    )
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]

    policies = {d["metadata"]["name"]: d for d in docs if d["kind"] == "NetworkPolicy"}
    sources = [p for rule in policies["mlflow-ingress"]["spec"]["ingress"] for p in rule["from"]]
    assert [p["namespaceSelector"]["matchLabels"] for p in sources if "namespaceSelector" in p] == [
        {"kubernetes.io/metadata.name": terraform_defaults()["k8s_workloads"]["dagster"]["namespace"]}
    ]
    assert {p["ipBlock"]["cidr"] for p in sources if "ipBlock" in p} == GOOGLE_FRONT_ENDS


# -- Dagster Helm values ------------------------------------------------------------------------


def test_dagster_helm_values():
    values = helm_values()
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert values["dagster-user-deployments"]["enabled"] is True
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", "taxi_platform.definitions"]
    assert deployment["image"]["repository"].endswith("/taxi-platform-dagster")
    assert deployment["image"]["tag"] not in ("", "latest")
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True
    env = {e["name"]: e["value"] for e in deployment["env"] if "value" in e}
    assert env["TAXI_LAKE_ROOT"].startswith("gs://")
    assert env["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] == "false"

    # Dagster reaches MLflow through the mlflow Service defined in deploy/k8s/mlflow.
    mlflow_service = one(manifests("mlflow"), "Service")
    expected = (
        f"http://{mlflow_service['metadata']['name']}.{mlflow_service['metadata']['namespace']}"
        f".svc.cluster.local:{mlflow_service['spec']['ports'][0]['port']}"
    )
    assert env["MLFLOW_TRACKING_URI"] == expected

    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    resources = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["containerConfig"][
        "resources"
    ]
    assert {"cpu", "memory"} <= resources["requests"].keys()

    postgres = values["postgresql"]
    assert postgres["enabled"] is False and postgres["postgresqlParams"]["sslmode"] == "require"
    assert "postgresqlPassword" not in postgres, "the password comes from a Secret, not from values"
    assert values["generatePostgresqlPasswordSecret"] is False
    assert values["global"]["postgresqlSecretName"]

    assert values["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert values["concurrency"]["runs"]["maxConcurrentRuns"] > 0
    assert (
        "maxConcurrentRuns" not in values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    )

    dagster = terraform_defaults()["k8s_workloads"]["dagster"]
    assert (
        values["global"]["serviceAccountName"]
        == values["serviceAccount"]["name"]
        == dagster["service_account"]
    )
    assert values["serviceAccount"]["annotations"]["iam.gke.io/gcp-service-account"].endswith(
        ".iam.gserviceaccount.com"
    )
    assert values["dagsterWebserver"]["service"]["type"] == "ClusterIP"


def test_helm_run_limits_match_the_postgres_instance_config():
    """deploy/dagster-postgres.yaml (instance config outside Helm) and the Helm values agree."""
    instance_file = DEPLOY / "dagster-postgres.yaml"
    assert instance_file.is_file(), "deploy/dagster-postgres.yaml is missing"
    instance = yaml.safe_load(instance_file.read_text())
    concurrency = helm_values()["concurrency"]
    assert concurrency["runs"]["maxConcurrentRuns"] == instance["concurrency"]["runs"]["max_concurrent_runs"]
    assert concurrency["pools"]["defaultLimit"] == instance["concurrency"]["pools"]["default_limit"]
    assert concurrency["pools"]["granularity"] == instance["concurrency"]["pools"]["granularity"]


# -- Dockerfiles --------------------------------------------------------------------------------


def test_dagster_dockerfile_builds_from_the_lockfile_as_non_root():
    text = (DEPLOY / "Dockerfile.dagster").read_text()
    assert "uv sync --locked --no-dev" in text
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for path in source.split():
            assert (REPO / path).exists(), f"Dockerfile.dagster copies {path}, which does not exist"
    assert re.search(r"^USER 10001", text, re.M)
    assert "taxi_platform.definitions" in text
    # Run pods build Bentos (fare_service): the runtime files ship in the wheel, and bentoml build needs uv.
    for path in ("bento", "dagster.yaml", "deploy/dagster-postgres.yaml"):
        assert re.search(rf"^COPY {re.escape(path)} ", text, re.M), f"Dockerfile.dagster does not copy {path}"
    final = text.split("\nFROM ")[-1]
    assert "COPY --from=build /usr/local/bin/uv /usr/local/bin/uv" in final
    assert ":latest" not in text


def test_mlflow_dockerfile_pins_the_locked_mlflow_version():
    text = (DEPLOY / "Dockerfile.mlflow").read_text()
    locked = re.search(
        r'\[\[package\]\]\nname = "mlflow"\nversion = "([^"]+)"', (REPO / "uv.lock").read_text()
    )
    assert locked, "mlflow not found in uv.lock"
    assert f"ARG MLFLOW_VERSION={locked.group(1)}" in text
    deployment = one(manifests("mlflow"), "Deployment")
    assert all(c["image"].endswith(f":{locked.group(1)}") for c in containers(deployment))
    assert re.search(r"^USER 10001", text, re.M)


# -- deploy/render.sh fills every placeholder -------------------------------------------------------

RENDER_ENV = {
    "IMAGE_REGISTRY": "europe-west1-docker.pkg.dev/proj-1/taxi-platform",
    "DAGSTER_IMAGE_TAG": "0123abcd4567",
    "CLOUD_SQL_PRIVATE_IP": "10.77.0.3",
    "CONTROL_PLANE_IP": "10.0.0.2",
    "PROJECT_ID": "proj-1",
    "PLATFORM_NAME": "taxi-dev",
}


def render(text: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(DEPLOY / "render.sh")],
        input=text,
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_render_fills_the_dagster_helm_values():
    result = render((DEPLOY / "helm" / "dagster-values.yaml").read_text(), **RENDER_ENV)
    assert result.returncode == 0, result.stderr
    values = yaml.safe_load(result.stdout)
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["image"] == {
        "repository": "europe-west1-docker.pkg.dev/proj-1/taxi-platform/taxi-platform-dagster",
        "tag": "0123abcd4567",
        "pullPolicy": "IfNotPresent",
    }
    env = {e["name"]: e["value"] for e in deployment["env"] if "value" in e}
    # The bucket names terraform/storage.tf creates: <project>-<prefix>-<environment>-lake.
    assert env["TAXI_LAKE_ROOT"] == "gs://proj-1-taxi-dev-lake/lake"
    assert env["GOOGLE_CLOUD_PROJECT"] == "proj-1"
    assert values["postgresql"]["postgresqlHost"] == "10.77.0.3"
    assert values["serviceAccount"]["annotations"]["iam.gke.io/gcp-service-account"] == (
        "taxi-dev-dagster@proj-1.iam.gserviceaccount.com"
    )
    assert values["computeLogManager"]["config"]["gcsComputeLogManager"]["bucket"] == "proj-1-taxi-dev-lake"


def test_render_fills_the_mlflow_manifests_and_refuses_missing_values():
    app = K8S / "mlflow"
    text = "\n---\n".join(
        (app / name).read_text() for name in ["config.env", *sorted(p.name for p in app.glob("*.yaml"))]
    )
    result = render(text, **RENDER_ENV)
    assert result.returncode == 0, result.stderr
    assert "10.77.0.3" in result.stdout and "gs://proj-1-taxi-dev-mlflow/artifacts" in result.stdout
    assert "--app-name=basic-auth" in result.stdout
    assert "europe-west1-docker.pkg.dev/proj-1/taxi-platform/mlflow:" in result.stdout
    assert "taxi-dev-mlflow@proj-1.iam.gserviceaccount.com" in result.stdout

    missing = {k: v for k, v in RENDER_ENV.items() if k != "CLOUD_SQL_PRIVATE_IP"}
    result = render(text, **missing)
    assert result.returncode != 0 and "CLOUD_SQL_PRIVATE_IP" in result.stderr and result.stdout == ""


# -- least privilege and network isolation (security review) -------------------------------------------------

GOOGLE_FRONT_ENDS = {"35.191.0.0/16", "130.211.0.0/22"}  # Google load-balancer proxies and health checkers
APP_NAMESPACES = ("dagster", "mlflow", "fare-service")
DEPLOYER = "taxi-prod-deployer@PROJECT_ID.iam.gserviceaccount.com"


def all_k8s_docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs.extend(d for d in load_docs(path) if isinstance(d, dict) and "kind" in d)
    return docs


def test_platform_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "platform" / "kustomization.yaml").read_text())
    on_disk = {p.name for p in (K8S / "platform").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk


@pytest.mark.parametrize("namespace", APP_NAMESPACES)
def test_every_namespace_denies_all_traffic_by_default(namespace: str):
    policies = [
        d for d in all_k8s_docs() if d["kind"] == "NetworkPolicy" and d["metadata"]["namespace"] == namespace
    ]
    deny = [
        p
        for p in policies
        if p["spec"]["podSelector"] == {}
        and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert deny, f"namespace {namespace} has no default-deny NetworkPolicy"
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                if "ipBlock" in peer:
                    assert peer["ipBlock"]["cidr"] in GOOGLE_FRONT_ENDS, (policy["metadata"]["name"], peer)
            if not rule.get("from"):  # open to every source: only the fare service's API port
                assert namespace == "fare-service" and rule["ports"] == [{"protocol": "TCP", "port": 3000}]
        for rule in policy["spec"].get("egress", []):
            for peer in rule.get("to", []):
                if peer.get("ipBlock", {}).get("cidr") == "0.0.0.0/0":
                    assert rule["ports"] == [{"protocol": "TCP", "port": 443}], (
                        policy["metadata"]["name"],
                        rule,
                    )


def test_fare_service_egress_is_dns_only_and_dagster_is_not_reachable_from_other_namespaces():
    docs = all_k8s_docs()
    fare = [d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["namespace"] == "fare-service"]
    egress_ports = {
        (p["protocol"], p["port"]) for d in fare for r in d["spec"].get("egress", []) for p in r["ports"]
    }
    assert egress_ports == {("UDP", 53), ("TCP", 53)}
    dagster = [d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["namespace"] == "dagster"]
    for policy in dagster:
        for rule in policy["spec"].get("ingress", []):
            for peer in rule["from"]:
                assert "namespaceSelector" not in peer, (
                    f"{policy['metadata']['name']} admits another namespace"
                )


def test_dagster_ui_and_mlflow_only_behind_iap_no_load_balancer_services():
    docs = all_k8s_docs()
    assert not [
        d for d in docs if d["kind"] == "Service" and d["spec"].get("type") in ("LoadBalancer", "NodePort")
    ]
    assert not [d for d in docs if d["kind"] == "Ingress"], "an Ingress would bypass the IAP Gateway"
    webserver = helm_values()["dagsterWebserver"]["service"]
    assert webserver["type"] == "ClusterIP"
    routes = {
        (d["metadata"]["namespace"], ref["name"], ref["port"])
        for d in docs
        if d["kind"] == "HTTPRoute"
        for rule in d["spec"]["rules"]
        for ref in rule["backendRefs"]
    }
    # The public fare API (API keys, no IAP) has its own Gateway; every other routed backend is a tool for people.
    tools = {r for r in routes if r[0] != "fare-service"}
    assert tools == {("dagster", "dagster-dagster-webserver", webserver["port"]), ("mlflow", "mlflow", 5000)}
    assert routes - tools == {
        ("fare-service", "fare-service", 3000),
        ("fare-service", "fare-service-canary", 3000),
    }
    iap = {
        (d["metadata"]["namespace"], d["spec"]["targetRef"]["name"])
        for d in docs
        if d["kind"] == "GCPBackendPolicy" and d["spec"]["default"]["iap"]["enabled"] is True
    }
    assert {(ns, name) for ns, name, _ in tools} <= iap, "every routed tool backend needs IAP"
    gateways = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Gateway"}
    assert set(gateways) == {"tools", "fare-api"}
    for gateway in gateways.values():
        assert {listener["protocol"] for listener in gateway["spec"]["listeners"]} == {"HTTPS"}
    # The tools Gateway admits no route from the fare-service namespace, the fare API's none from elsewhere.
    (tools_listener,) = gateways["tools"]["spec"]["listeners"]
    (expression,) = tools_listener["allowedRoutes"]["namespaces"]["selector"]["matchExpressions"]
    assert "fare-service" not in expression["values"]
    assert all(
        listener["allowedRoutes"]["namespaces"]["from"] == "Same"
        for listener in gateways["fare-api"]["spec"]["listeners"]
    )
    tf = (REPO / "terraform" / "iam.tf").read_text()
    assert "roles/iap.httpsResourceAccessor" in tf and "var.iap_members" in tf


def test_deployer_rbac_is_scoped_to_the_fare_service_namespace():
    docs = all_k8s_docs()
    bindings = [
        d
        for d in docs
        if d["kind"] in ("RoleBinding", "ClusterRoleBinding")
        and any(s["kind"] == "User" and s["name"] == DEPLOYER for s in d["subjects"])
    ]
    assert bindings
    roles = {
        (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d
        for d in docs
        if "Role" in d["kind"] and "Binding" not in d["kind"]
    }
    forbidden = {
        "secrets",
        "roles",
        "rolebindings",
        "clusterroles",
        "clusterrolebindings",
        "networkpolicies",
        "*",
    }
    granted_namespaces = set()
    for binding in bindings:
        ref = binding["roleRef"]
        namespace = binding["metadata"].get("namespace")
        role = roles[(ref["kind"], namespace if ref["kind"] == "Role" else None, ref["name"])]
        granted_namespaces.add(namespace)
        for rule in role["rules"]:
            assert not forbidden & set(rule["resources"]), rule
            assert "*" not in rule["verbs"] and "*" not in rule.get("apiGroups", [])
            if (
                binding["kind"] == "ClusterRoleBinding"
            ):  # cluster-wide: only the fare-service Namespace object
                assert rule["resources"] == ["namespaces"] and rule["resourceNames"] == ["fare-service"]
                assert set(rule["verbs"]) <= {"get", "patch"}
            if namespace == "mlflow":  # read the champion through a port-forward, nothing else
                assert rule["resources"] == ["pods/portforward"] or set(rule["verbs"]) <= {"get", "list"}
            if "pods" in rule["resources"] and namespace != "fare-service":
                assert "create" not in rule["verbs"]
    assert granted_namespaces == {"fare-service", None, "mlflow"}
    # terraform names the deployer <name>-deployer and grants it no Kubernetes object permission in IAM
    tf = (REPO / "terraform" / "github_oidc.tf").read_text()
    assert (
        'account_id   = "${local.name}-deployer"' in tf
        and 'roles/container.developer"' not in tf.split("#")[0]
    )


def test_fare_service_reads_api_key_hashes_from_secret_manager():
    deployment = one(manifests("fare-service"), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    keys_file = env_of(container)["TAXI_API_KEYS_FILE"]
    (volume,) = [v for v in pod["volumes"] if "csi" in v]
    assert volume["csi"]["driver"] == "secrets-store-gke.csi.k8s.io"
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True and keys_file.startswith(mount["mountPath"] + "/")
    provider_name = volume["csi"]["volumeAttributes"]["secretProviderClass"]
    (provider,) = [d for d in all_k8s_docs() if d["kind"] == "SecretProviderClass"]
    assert provider["metadata"] == {
        **provider["metadata"],
        "name": provider_name,
        "namespace": "fare-service",
    }
    (secret,) = yaml.safe_load(provider["spec"]["parameters"]["secrets"])
    assert secret["path"] == keys_file.rsplit("/", 1)[1]
    assert secret["resourceName"] == "projects/PROJECT_ID/secrets/taxi-prod-fare-api-keys/versions/latest"
    tf = (REPO / "terraform" / "secrets.tf").read_text()
    assert 'secret_id = "${local.name}-fare-api-keys"' in tf
    assert "google_secret_manager_secret.fare_api_keys.id" in (REPO / "terraform" / "iam.tf").read_text()


@pytest.mark.parametrize("dockerfile", ["Dockerfile.dagster", "Dockerfile.mlflow"])
def test_dockerfiles_take_the_base_image_digest_from_a_variable(dockerfile: str):
    text = (DEPLOY / dockerfile).read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms and all(f == "python:3.11-slim@${PYTHON_DIGEST}" for f in froms), froms
    arg = re.search(r"^ARG PYTHON_DIGEST(=\S*)?$", text, re.M)
    assert arg and not arg.group(1), (
        "no default: the build must pass --build-arg PYTHON_DIGEST=sha256:<digest>"
    )
    assert '--build-arg PYTHON_DIGEST="$PYTHON_DIGEST"' in text


def test_render_fills_the_platform_manifests():
    text = "---\n".join(
        (K8S / "platform" / name).read_text() for name in sorted(os.listdir(K8S / "platform"))
    )
    result = render(text, **RENDER_ENV)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d and "kind" in d]
    subjects = {s["name"] for d in docs if d["kind"].endswith("Binding") for s in d["subjects"]}
    assert subjects == {"taxi-dev-deployer@proj-1.iam.gserviceaccount.com"}
    (provider,) = [d for d in docs if d["kind"] == "SecretProviderClass"]
    assert (
        "projects/proj-1/secrets/taxi-dev-fare-api-keys/versions/latest"
        in provider["spec"]["parameters"]["secrets"]
    )
    cidrs = {
        peer["ipBlock"]["cidr"]
        for d in docs
        if d["kind"] == "NetworkPolicy"
        for rule in d["spec"].get("egress", [])
        for peer in rule.get("to", [])
        if "ipBlock" in peer
    }
    assert "10.77.0.3/32" in cidrs  # the Cloud SQL private IP


def test_deploy_docs_have_a_threat_model_naming_each_identity():
    text = (REPO / "docs" / "deploy.md").read_text()
    section = text.split("## Threat model", 1)[1].split("\n## ", 1)[0]
    for needle in ("API key", "Identity-Aware Proxy", "<name>-dagster", "<name>-mlflow", "<name>-serving",
                   "<name>-deployer", "deployer-rbac.yaml", "Binary Authorization", "default deny"):  # fmt: skip
        assert needle in section, f"threat model does not mention {needle}"


# -- MLflow's own authentication (basic-auth app) ---------------------------------------------------------------

MLFLOW_CLIENT_SECRET = "mlflow-client"  # in the dagster namespace: Dagster's MLflow user (docs/deploy.md)


def mlflow_auth_config() -> dict[str, str]:
    import configparser

    kustomization = yaml.safe_load((K8S / "mlflow" / "kustomization.yaml").read_text())
    (generator,) = [g for g in kustomization["configMapGenerator"] if g["name"] == "mlflow-auth-config"]
    (name,) = generator["files"]
    parser = configparser.ConfigParser()
    parser.read_string((K8S / "mlflow" / name).read_text())
    return dict(parser["mlflow"])


def test_mlflow_runs_the_basic_auth_app_with_credentials_from_mounted_secrets():
    deployment = one(manifests("mlflow"), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = container["args"]
    assert "--app-name=basic-auth" in args or args[args.index("--app-name") + 1] == "basic-auth"
    # Admin password and CSRF key: files of the Secret mlflow-auth, read by the start command; never env.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts["/etc/mlflow-auth"]]["secret"]["secretName"] == "mlflow-auth"
    assert volumes[mounts["/etc/mlflow-auth-config"]]["configMap"]["name"] == "mlflow-auth-config"
    assert all(m.get("readOnly") for m in container["volumeMounts"] if m["mountPath"].startswith("/etc/"))
    script = container["command"][2]
    for variable, path in (
        ("MLFLOW_AUTH_ADMIN_PASSWORD", "/etc/mlflow-auth/admin-password"),
        ("MLFLOW_FLASK_SERVER_SECRET_KEY", "/etc/mlflow-auth/flask-secret-key"),
        ("MLFLOW_AUTH_CONFIG_PATH", "/tmp/basic_auth.ini"),
    ):
        assert re.search(rf'{variable}="?(\$\(cat )?{re.escape(path)}', script), f"{variable} not from {path}"
        assert variable not in env_of(container), f"{variable} must not be in the pod spec"
    # The auth config: its user store is the same Cloud SQL database (appended at start, with the password).
    assert "cat /etc/mlflow-auth-config/basic_auth.ini" in script
    assert re.search(r"printf 'database_uri = %s\\n' \"\$db\"", script), script
    config = mlflow_auth_config()
    assert config["default_permission"] == "READ" and config["admin_username"] == "admin"
    assert "admin_password" not in config and "database_uri" not in config, (
        "secrets stay out of the ConfigMap"
    )
    # The image has the basic-auth app's dependencies.
    # The image installs the hashed lock of mlflow[auth] (Flask-WTF is the auth app's dependency).
    assert re.search(r"^mlflow\[auth\]$", (DEPLOY / "mlflow-requirements.in").read_text(), re.M)
    assert re.search(r"^flask-wtf==", (DEPLOY / "mlflow-requirements.txt").read_text(), re.M)


def test_every_pod_with_mlflow_tracking_uri_signs_in_from_the_mlflow_client_secret():
    """Every Dagster container that talks to MLflow (code server, and run pods through
    includeConfigInLaunchedRuns) gets its MLflow user from the Secret, never a literal."""
    values = helm_values()
    users = values["dagster-user-deployments"]["deployments"]
    pods: list[tuple[str, list[dict]]] = [(u["name"], u.get("env", [])) for u in users]
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    pods.append(("run launcher", launcher.get("envVars", [])))
    for app in ("fare-service", "mlflow"):
        for doc in manifests(app):
            if doc["kind"] == "Deployment":
                pods.extend((f"{app}/{c['name']}", c.get("env", [])) for c in containers(doc))
    with_uri = [(name, env) for name, env in pods if any(e.get("name") == "MLFLOW_TRACKING_URI" for e in env)]
    assert [name for name, _ in with_uri] == ["taxi-platform"], with_uri
    for name, env in with_uri:
        assert users[0]["includeConfigInLaunchedRuns"]["enabled"] is True, "run pods need the same env"
        by_name = {e["name"]: e for e in env}
        for variable, key in (
            ("MLFLOW_TRACKING_USERNAME", "username"),
            ("MLFLOW_TRACKING_PASSWORD", "password"),
        ):
            assert variable in by_name, f"{name}: {variable} missing"
            assert "value" not in by_name[variable], f"{name}: {variable} is a literal"
            assert by_name[variable]["valueFrom"]["secretKeyRef"] == {
                "name": MLFLOW_CLIENT_SECRET,
                "key": key,
            }
    # No other place hard-codes MLflow credentials.
    for path in [*K8S.rglob("*.yaml"), DEPLOY / "helm" / "dagster-values.yaml"]:
        text = path.read_text()
        assert not re.search(
            r"MLFLOW_TRACKING_PASSWORD\s*[:=]\s*\S", text.replace("MLFLOW_TRACKING_PASSWORD\n", "")
        ), path


def test_mlflow_secrets_come_from_terraform_generated_secret_manager_secrets():
    options = SerializationOptions(
        with_comments=False, explicit_blocks=False, preserve_heredocs=False, strip_string_quotes=True
    )
    tf = {
        p.name: hcl2.loads(p.read_text(), serialization_options=options)
        for p in (REPO / "terraform").glob("*.tf")
    }
    resources = {
        (kind, name): body
        for doc in tf.values()
        for block in doc.get("resource", [])
        for kind, named in block.items()
        for name, body in named.items()
    }
    locals_ = {k: v for doc in tf.values() for block in doc.get("locals", []) for k, v in block.items()}
    assert locals_["mlflow_users"] == '${toset(["admin", "dagster", "deployer"])}'
    secret = resources[("google_secret_manager_secret", "mlflow_user_password")]
    assert secret["secret_id"] == "${local.name}-mlflow-${each.key}-password"
    version = resources[("google_secret_manager_secret_version", "mlflow_user_password")]
    assert version["secret_data"] == "${random_password.mlflow_user[each.key].result}"
    assert resources[("random_password", "mlflow_user")]["special"] is False
    # Who reads which password: the server its admin's, Dagster its own, the deployer its read-only user's.
    readers = {
        name: (body["secret_id"], body["member"])
        for (kind, name), body in resources.items()
        if kind == "google_secret_manager_secret_iam_member" and "mlflow" in name
    }
    assert readers == {
        "mlflow_admin_password": (
            '${google_secret_manager_secret.mlflow_user_password["admin"].id}',
            'serviceAccount:${google_service_account.workload["mlflow"].email}',
        ),
        "mlflow_flask_secret_key": (
            "${google_secret_manager_secret.mlflow_flask_secret_key.id}",
            'serviceAccount:${google_service_account.workload["mlflow"].email}',
        ),
        "mlflow_dagster_password": (
            '${google_secret_manager_secret.mlflow_user_password["dagster"].id}',
            'serviceAccount:${google_service_account.workload["dagster"].email}',
        ),
        "deployer_mlflow_password": (
            '${google_secret_manager_secret.mlflow_user_password["deployer"].id}',
            "serviceAccount:${google_service_account.deployer.email}",
        ),
    }, readers


def test_deploy_docs_create_the_mlflow_secrets_and_users_from_secret_manager():
    text = (REPO / "docs" / "deploy.md").read_text()
    for needle in (
        "kubectl -n mlflow create secret generic mlflow-auth",
        "--from-literal=admin-password=",
        "--from-literal=flask-secret-key=",
        f"kubectl -n dagster create secret generic {MLFLOW_CLIENT_SECRET}",
        "${PLATFORM_NAME}-mlflow-admin-password",
        "${PLATFORM_NAME}-mlflow-dagster-password",
        "for user in dagster deployer",
        "${PLATFORM_NAME}-mlflow-$user-password",
        "/api/2.0/mlflow/users/create",
    ):
        assert needle in text, f"docs/deploy.md does not show {needle}"
    section = text.split("## Threat model", 1)[1].split("\n## ", 1)[0]
    assert "basic-auth" in section and "deployer" in section and "MLflow user" in section
    assert "basic-auth` app is not turned on" not in section
