"""Static checks of the GitHub Actions workflows: they parse, pin their actions, authenticate without
keys, run the project's own commands, and every repository path they mention exists."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / ".github" / "workflows"
# Top-level directories/files of this repository that workflow scripts may refer to.
LOCAL_PATH = re.compile(
    r"(?<![\w./-])((?:bento|deploy|terraform|taxi_platform|taxi_platform_tests|benchmarks|docs)(?:/[\w.-]+)*/?)"
)


def load(name: str) -> dict[str, Any]:
    path = WORKFLOWS / name
    assert path.is_file(), f"{path} is missing"
    doc = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the bare key `on` as the boolean True.
    doc["on"] = doc.pop(True, doc.get("on"))
    return doc


def steps(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in doc["jobs"].values() for step in job["steps"]]


def scripts(doc: dict[str, Any]) -> str:
    return "\n".join(step.get("run", "") for step in steps(doc))


@pytest.mark.parametrize("name", ["ci.yml", "deploy.yml"])
def test_workflow_parses_and_pins_every_action(name: str):
    doc = load(name)
    assert doc["on"] and doc["jobs"]
    for job in doc["jobs"].values():
        assert job.get("timeout-minutes"), "every job has a timeout"
    text = (WORKFLOWS / name).read_text()
    for step in steps(doc):
        if "uses" in step:
            action, _, ref = step["uses"].partition("@")
            # A tag can be moved to other code; a commit SHA cannot. The comment keeps the release readable.
            assert re.fullmatch(r"[0-9a-f]{40}", ref), f"{action} is not pinned by commit SHA: @{ref or '?'}"
            assert re.search(rf"{re.escape(step['uses'])} # v\d+\.\d+\.\d+\n", text), (
                f"{action}@{ref}: say which release the SHA is (`# vX.Y.Z`)"
            )


@pytest.mark.parametrize("name", ["ci.yml", "deploy.yml"])
def test_every_local_path_a_workflow_mentions_exists(name: str):
    text = scripts(load(name))
    paths = sorted(set(LOCAL_PATH.findall(text)))
    assert paths, f"{name} mentions no repository path: the check would be vacuous"
    missing = [p for p in paths if not (REPO / p).exists()]
    hints: dict[str, str] = {}
    assert not missing, f"{name} refers to missing paths: " + "; ".join(
        f"{p} ({hints.get(p, 'not in the repository')})" for p in missing
    )


def test_ci_runs_lint_tests_and_terraform_fmt_on_the_locked_environment():
    doc = load("ci.yml")
    assert {"push", "pull_request"} <= set(doc["on"])
    text = scripts(doc)
    for command in (
        "uv sync --locked",
        "uv run ruff check",
        "uv run pytest",
        "terraform fmt -check -recursive terraform",
    ):
        assert command in text, f"ci.yml does not run `{command}`"
    uses = [s["uses"].split("@")[0] for s in steps(doc) if "uses" in s]
    assert {"actions/checkout", "astral-sh/setup-uv", "hashicorp/setup-terraform"} <= set(uses)
    assert doc["permissions"] == {"contents": "read"}


def test_deploy_uses_workload_identity_federation_and_no_keys():
    doc = load("deploy.yml")
    assert "workflow_dispatch" in doc["on"]
    assert doc["on"]["push"]["tags"]
    assert doc["permissions"]["id-token"] == "write"
    (auth,) = [s for s in steps(doc) if s.get("uses", "").startswith("google-github-actions/auth@")]
    assert {"workload_identity_provider", "service_account"} <= auth["with"].keys()
    raw = (WORKFLOWS / "deploy.yml").read_text()
    assert "credentials_json" not in raw and "secrets.GCP_SA_KEY" not in raw and "private_key" not in raw


def test_deploy_builds_pushes_and_rolls_out_the_bento_tag():
    doc = load("deploy.yml")
    text = scripts(doc)
    order = [
        "uv sync --locked --no-dev --no-editable",
        "port-forward svc/mlflow",
        "taxi-platform build-bento",
        "bentoml containerize",
        "docker push",
        "kubectl apply",
        "rollout status deployment/fare-service",
        "/readyz",
    ]
    positions = [text.find(command) for command in order]
    assert -1 not in positions, (
        f"deploy.yml misses {[c for c, p in zip(order, positions, strict=True) if p < 0]}"
    )
    assert positions == sorted(positions), "deploy.yml runs the steps out of order"
    assert "port-forward svc/fare-service" in text
    assert ":latest" not in text.replace("grep -nE 'BENTO_TAG|PROJECT_ID|REGION-docker|:latest'", "")
    # One build path: the asset's code through `taxi-platform build-bento`, never an inline import/build that
    # would use the bentofile without the lock's pins.
    assert "bentoml build" not in text and "import_model" not in text


def test_deploy_containerizes_the_tag_build_bento_prints():
    (step,) = [s for s in steps(load("deploy.yml")) if "taxi-platform build-bento" in s.get("run", "")]
    assert step["id"] == "bento"
    assert "--json" in step["run"] and '["tag"]' in step["run"]
    (push,) = [s for s in steps(load("deploy.yml")) if "bentoml containerize" in s.get("run", "")]
    assert push["env"]["BENTO_TAG"] == "${{ steps.bento.outputs.tag }}"


def test_deploy_renders_the_fare_service_manifests_with_deploy_render_sh():
    """deploy.yml pipes the kustomize output through deploy/render.sh with the Bento image; run the
    same script on the same manifests: the image must be the Bento tag and no placeholder may remain."""
    text = scripts(load("deploy.yml"))
    assert 'FARE_SERVICE_IMAGE="$IMAGE" deploy/render.sh' in text
    env_block = load("deploy.yml")["env"]
    assert {"PROJECT_ID", "PLATFORM_NAME"} <= env_block.keys()

    app = REPO / "deploy" / "k8s" / "fare-service"
    resources = yaml.safe_load((app / "kustomization.yaml").read_text())["resources"]
    docs = [d for name in resources for d in yaml.safe_load_all((app / name).read_text()) if d]
    kustomized = yaml.safe_dump_all(docs, width=10**6)  # what `kubectl kustomize` emits: no comments
    image = "us-east4-docker.pkg.dev/proj-1/taxi-platform/fare-service:x7k2mqa4"
    env = {
        "PATH": os.environ["PATH"],
        "FARE_SERVICE_IMAGE": image,
        "PROJECT_ID": "proj-1",
        "PLATFORM_NAME": "taxi-staging",
    }
    result = subprocess.run(
        ["bash", str(REPO / "deploy" / "render.sh")],
        input=kustomized,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    rendered = list(yaml.safe_load_all(result.stdout))
    deployment = next(d for d in rendered if d["kind"] == "Deployment")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == image
    account = next(d for d in rendered if d["kind"] == "ServiceAccount")
    assert account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"] == (
        "taxi-staging-serving@proj-1.iam.gserviceaccount.com"
    )

    # Without the image the script refuses, naming the variable, instead of deploying a placeholder.
    del env["FARE_SERVICE_IMAGE"]
    result = subprocess.run(
        ["bash", str(REPO / "deploy" / "render.sh")],
        input=kustomized,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "FARE_SERVICE_IMAGE" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("name", ["ci.yml", "deploy.yml"])
def test_every_run_script_is_valid_bash_and_embedded_python_compiles(name: str):
    for step in steps(load(name)):
        script = step.get("run")
        if not script:
            continue
        script = re.sub(r"\$\{\{[^}]*\}\}", "x", script)  # GitHub expressions are filled before bash runs
        result = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"{name} step {step.get('name')!r}: {result.stderr}"
        for heredoc in re.findall(r"<<'PY'\n(.*?)\nPY\n", script, re.S):
            compile(heredoc, f"{name}:{step.get('name')}", "exec")
