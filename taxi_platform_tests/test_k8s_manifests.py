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

REPO = Path(__file__).resolve().parents[1]
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


@pytest.mark.parametrize("app", ["fare-service", "mlflow"])
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


@pytest.mark.parametrize("app", ["fare-service", "mlflow"])
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
    env = env_of(container)
    assert env["MLFLOW_DB_PASSWORD"] == {"secretKeyRef": {"name": "mlflow-db", "key": "password"}}
    uri = env["MLFLOW_BACKEND_STORE_URI"]
    # psycopg2 is the driver the image installs; a bare postgresql:// makes SQLAlchemy 2.1 import psycopg (3).
    assert uri.startswith("postgresql+psycopg2://mlflow:$(MLFLOW_DB_PASSWORD)@$(MLFLOW_DB_HOST):5432/mlflow")
    init_env = env_of(deployment["spec"]["template"]["spec"]["initContainers"][0])
    assert init_env["MLFLOW_BACKEND_STORE_URI"] == uri
    assert "sslmode=require" in uri
    assert "--serve-artifacts" in container["args"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"

    kustomization = yaml.safe_load((K8S / "mlflow" / "kustomization.yaml").read_text())
    (generator,) = kustomization["configMapGenerator"]
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

    policy = one(docs, "NetworkPolicy")
    sources = [
        p["namespaceSelector"]["matchLabels"] for rule in policy["spec"]["ingress"] for p in rule["from"]
    ]
    assert sources == [
        {"kubernetes.io/metadata.name": terraform_defaults()["k8s_workloads"]["dagster"]["namespace"]}
    ]


# -- Dagster Helm values ------------------------------------------------------------------------


def test_dagster_helm_values():
    values = helm_values()
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert values["dagster-user-deployments"]["enabled"] is True
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", "taxi_platform.definitions"]
    assert deployment["image"]["repository"].endswith("/taxi-platform-dagster")
    assert deployment["image"]["tag"] not in ("", "latest")
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True
    env = {e["name"]: e["value"] for e in deployment["env"]}
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
    env = {e["name"]: e["value"] for e in deployment["env"]}
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
    assert "europe-west1-docker.pkg.dev/proj-1/taxi-platform/mlflow:" in result.stdout
    assert "taxi-dev-mlflow@proj-1.iam.gserviceaccount.com" in result.stdout

    missing = {k: v for k, v in RENDER_ENV.items() if k != "CLOUD_SQL_PRIVATE_IP"}
    result = render(text, **missing)
    assert result.returncode != 0 and "CLOUD_SQL_PRIVATE_IP" in result.stderr and result.stdout == ""
