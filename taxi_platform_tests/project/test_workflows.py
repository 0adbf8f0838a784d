"""Static checks of the GitHub Actions workflows: they parse, pin their actions, authenticate without
keys, run the project's own commands, and every repository path they mention exists."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
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


# -- the canary of deploy.yml ------------------------------------------------------------------------------------

DEPLOY_K8S = REPO / "deploy" / "k8s"


def step_named(doc: dict[str, Any], needle: str) -> tuple[int, dict[str, Any]]:
    (found,) = [(i, s) for i, s in enumerate(steps(doc)) if needle in s.get("run", "")]
    return found


def test_deploy_runs_the_canary_and_its_comparison_before_the_stable_rollout():
    doc = load("deploy.yml")
    push, _ = step_named(doc, "docker push")
    canary_i, canary = step_named(doc, "kubectl kustomize deploy/k8s/fare-canary")
    compare_i, compare = step_named(doc, "taxi-platform compare-services")
    rollout_i, rollout = step_named(doc, "kubectl kustomize deploy/k8s/fare-service ")
    smoke_i, _ = step_named(doc, "/predict")
    remove_i, remove = step_named(doc, "delete deployment/fare-service-canary")
    assert push < canary_i < compare_i < rollout_i < smoke_i < remove_i
    # The canary: rendered with the same pushed image by digest, rolled out and waited for, then given its weight.
    assert canary["env"]["IMAGE"] == rollout["env"]["IMAGE"] == "${{ steps.image.outputs.ref }}"
    run = canary["run"]
    order = [
        'FARE_SERVICE_IMAGE="$IMAGE" deploy/render.sh',
        'echo "applied=true"',
        "kubectl apply",
        "rollout status deployment/fare-service-canary",
        "patch httproute/fare-service",
    ]
    positions = [run.find(s) for s in order]
    assert -1 not in positions and positions == sorted(positions), positions
    # The gate: both services port-forwarded, compared with the production environment's smoke key.
    assert doc["jobs"]["deploy"]["environment"] == "production"
    assert compare["env"]["SMOKE_API_KEY"] == "${{ secrets.FARE_SERVICE_SMOKE_API_KEY }}"
    assert "port-forward svc/fare-service 3000:3000" in compare["run"]
    assert "port-forward svc/fare-service-canary 3001:3000" in compare["run"]
    assert (
        "uv run --no-sync taxi-platform compare-services http://127.0.0.1:3000 http://127.0.0.1:3001 \\\n"
        '  --api-key-env SMOKE_API_KEY --json "$RUNNER_TEMP/canary.json"'
    ) in compare["run"]
    # A rejected canary fails its step, so the stable rollout (default `success()`) never runs and the stable
    # rollback does not either (it needs the rollout applied); the canary goes whatever happened.
    for later in steps(doc)[compare_i + 1 : smoke_i + 1]:
        assert "if" not in later, f"{later.get('name')} would run after a rejected canary"
    (undo,) = [s for s in steps(doc) if "rollout undo" in s.get("run", "")]
    assert undo["if"] == "failure() && steps.rollout.outputs.applied == 'true'"
    assert remove["if"] == "always() && steps.canary.outputs.applied == 'true'"
    assert remove["run"].find("patch httproute/fare-service") < remove["run"].find("delete deployment")
    assert "rollout undo deployment/fare-service-canary" not in scripts(doc)


def rbac_allows(verb: str, group: str, resource: str, name: str | None, namespace: str | None) -> bool:
    docs = [d for d in yaml.safe_load_all((DEPLOY_K8S / "platform" / "deployer-rbac.yaml").read_text()) if d]
    kind = "Role" if namespace else "ClusterRole"
    bound = {
        d["roleRef"]["name"]
        for d in docs
        if d["kind"] == f"{kind}Binding" and d["metadata"].get("namespace") == namespace
    }
    return any(
        group in rule["apiGroups"]
        and resource in rule["resources"]
        and verb in rule["verbs"]
        and (not rule.get("resourceNames") or name in rule["resourceNames"])
        for d in docs
        if d["kind"] == kind
        and d["metadata"]["name"] in bound
        and d["metadata"].get("namespace") == namespace
        for rule in d["rules"]
    )


RESOURCES = {  # kind -> (API group, resource, namespaced)
    "Namespace": ("", "namespaces", False),
    "ServiceAccount": ("", "serviceaccounts", True),
    "Service": ("", "services", True),
    "Deployment": ("apps", "deployments", True),
    "HorizontalPodAutoscaler": ("autoscaling", "horizontalpodautoscalers", True),
    "PodDisruptionBudget": ("policy", "poddisruptionbudgets", True),
}


def test_the_deployer_rbac_allows_every_kubectl_call_of_deploy_yml():
    """Each kubectl call of deploy.yml, as the API requests it makes, against deploy/k8s/platform/deployer-rbac.yaml.
    An unknown kubectl command fails the test until it is taught here."""
    text = scripts(load("deploy.yml"))
    applied = {  # what each `kubectl apply -f` applies
        '"$RUNNER_TEMP/fare-service.yaml"': DEPLOY_K8S / "fare-service",
        '"$RUNNER_TEMP/fare-canary.yaml"': DEPLOY_K8S / "fare-canary",
        "deploy/k8s/fare-canary/service.yaml": DEPLOY_K8S / "fare-canary" / "service.yaml",
    }
    needed: list[tuple[str, str, str, str | None, str | None]] = []
    calls = re.findall(r"\bkubectl ((?:-n \S+ )?)(\S+)([^\n|]*)", text)
    assert len(calls) >= 12, calls
    for namespace_flag, command, rest in calls:
        namespace = (
            namespace_flag.split()[1].replace('"$NAMESPACE"', "fare-service") if namespace_flag else None
        )
        words = rest.split()
        if command == "kustomize":
            continue  # local
        if command == "apply":
            source = applied[words[1]]
            files = (
                [source]
                if source.is_file()
                else [
                    source / r
                    for r in yaml.safe_load((source / "kustomization.yaml").read_text())["resources"]
                ]
            )
            for doc in (d for f in files for d in yaml.safe_load_all(f.read_text()) if d):
                group, resource, namespaced = RESOURCES[doc["kind"]]
                ns = doc["metadata"].get("namespace") if namespaced else None
                # apply reads, then creates or patches; the Namespace exists before the first deploy (the
                # administrator creates it, docs/deploy.md), so the deployer may only read and patch it.
                for verb in ("get", "patch", "create") if namespaced else ("get", "patch"):
                    needed.append((verb, group, resource, doc["metadata"]["name"], ns))
            continue
        assert namespace, f"kubectl {command}{rest} without -n"
        if command == "port-forward":
            service = words[0].removeprefix("svc/")
            needed += [("get", "", "services", service, namespace), ("list", "", "pods", None, namespace),
                       ("create", "", "pods/portforward", None, namespace)]  # fmt: skip
        elif command == "rollout":
            name = words[1].removeprefix("deployment/")
            needed += [("get", "apps", "deployments", name, namespace), ("watch", "apps", "deployments", name, namespace),
                       ("list", "apps", "replicasets", None, namespace)]  # fmt: skip
            if words[0] == "undo":
                needed.append(("patch", "apps", "deployments", name, namespace))
        elif command == "get":
            assert words[:2] == ["deployment", "fare-service"], words
            needed.append(("get", "apps", "deployments", "fare-service", namespace))
        elif command == "patch":
            assert words[0] == "httproute/fare-service", words
            needed.append(("patch", "gateway.networking.k8s.io", "httproutes", "fare-service", namespace))
        elif command == "delete":
            assert words[0] == "deployment/fare-service-canary", words
            needed.append(("delete", "apps", "deployments", "fare-service-canary", namespace))
        else:
            raise AssertionError(f"kubectl {command}: teach this test which API requests it makes")
    assert ("delete", "apps", "deployments", "fare-service-canary", "fare-service") in needed
    missing = [n for n in needed if not rbac_allows(*n)]
    assert not missing, f"the deployer may not: {missing}"


def patch_arguments(run: str, **env: str) -> list[list[dict[str, Any]]]:
    """The JSON patches of `kubectl patch httproute/... -p ARG` in a step, as bash expands them."""
    patches = []
    quoted = r'"(?:[^"\\]|\\.)*"' + r"|'[^']*'"  # a bash "..." (with \-escapes) or '...' word
    for argument in re.findall(rf"patch httproute/fare-service --type=json -p ({quoted})", run):
        result = subprocess.run(["bash", "-c", f"printf %s {argument}"], env={"PATH": os.environ["PATH"], **env},
                                capture_output=True, text=True, timeout=30)  # fmt: skip
        assert result.returncode == 0, result.stderr
        patches.append(json.loads(result.stdout))
    return patches


def json_patch(doc: Any, operations: list[dict[str, Any]]) -> Any:
    """RFC 6902 `test` and `replace` (what the workflow uses) on a copy of doc; a failed test raises ValueError."""
    doc = json.loads(json.dumps(doc))
    for op in operations:
        *parents, last = [int(p) if p.isdigit() else p for p in op["path"].split("/")[1:]]
        target = doc
        for part in parents:
            target = target[part]
        if op["op"] == "test":
            if target[last] != op["value"]:
                raise ValueError(f"test {op['path']} failed")
        elif op["op"] == "replace":
            assert last in (range(len(target)) if isinstance(target, list) else target), op["path"]
            target[last] = op["value"]
        else:
            raise AssertionError(f"unexpected op {op['op']}")
    return doc


def fare_route() -> dict[str, Any]:
    path = DEPLOY_K8S / "platform" / "gateway-fare-service.yaml"
    (route,) = [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "HTTPRoute"]
    return route


def weights(route: dict[str, Any]) -> list[tuple[str, int]]:
    return [(r["name"], r["weight"]) for r in route["spec"]["rules"][0]["backendRefs"]]


def test_the_weight_patches_shift_the_route_to_the_canary_and_back():
    doc = load("deploy.yml")
    assert doc["env"]["CANARY_WEIGHT"] == "${{ vars.CANARY_WEIGHT || '10' }}"
    _, canary = step_named(doc, "kubectl kustomize deploy/k8s/fare-canary")
    _, remove = step_named(doc, "delete deployment/fare-service-canary")
    route = fare_route()
    assert weights(route) == [("fare-service", 100), ("fare-service-canary", 0)]
    for percent in (1, 10, 50):
        (shift,) = patch_arguments(canary["run"], CANARY_WEIGHT=str(percent))
        assert weights(json_patch(route, shift)) == [
            ("fare-service", 100 - percent),
            ("fare-service-canary", percent),
        ]
    (back,) = patch_arguments(remove["run"])
    assert weights(json_patch(json_patch(route, shift), back)) == weights(route)
    # Addressed by index, so each patch first tests which Service is where: a reordered route is refused.
    swapped = json.loads(json.dumps(route))
    swapped["spec"]["rules"][0]["backendRefs"].reverse()
    for operations in (shift, back):
        with pytest.raises(ValueError):
            json_patch(swapped, operations)
    # kubectl itself agrees, when it is installed (a local patch needs no cluster).
    if shutil.which("kubectl"):
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            yaml.safe_dump(route, f)
            f.flush()
            result = subprocess.run(["kubectl", "patch", "--local", "-f", f.name, "--type=json", "-p",
                                     json.dumps(shift), "-o", "yaml"], capture_output=True, text=True, timeout=60)  # fmt: skip
            assert result.returncode == 0, result.stderr
            assert weights(yaml.safe_load(result.stdout)) == [
                ("fare-service", 50),
                ("fare-service-canary", 50),
            ]


def test_canary_weight_outside_1_to_50_stops_the_deploy_before_any_kubectl_call(tmp_path: Path):
    _, canary = step_named(load("deploy.yml"), "kubectl kustomize deploy/k8s/fare-canary")
    script = re.sub(r"\$\{\{[^}]*\}\}", "x", canary["run"])
    for weight, code in (("0", 1), ("51", 1), ("ten", 1), ("10", 0)):
        # kubectl is a function here that only records it was called, and says no stable Deployment exists.
        prelude = f'kubectl() {{ echo "kubectl $*" >> {tmp_path}/calls; }}\n'
        (tmp_path / "calls").write_text("")
        summary, output = tmp_path / "summary", tmp_path / "output"
        result = subprocess.run(["bash", "-eo", "pipefail", "-c", prelude + script], capture_output=True, text=True,
                                env={"PATH": os.environ["PATH"], "CANARY_WEIGHT": weight, "NAMESPACE": "fare-service",
                                     "GITHUB_STEP_SUMMARY": str(summary), "GITHUB_OUTPUT": str(output)},
                                timeout=30)  # fmt: skip
        assert result.returncode == code, (weight, result.stdout, result.stderr)
        calls = (tmp_path / "calls").read_text()
        if code:
            assert "CANARY_WEIGHT" in result.stdout and calls == ""
        else:  # the first deploy: no stable service to compare with, the canary is skipped and says so
            assert calls == "kubectl -n fare-service get deployment fare-service --ignore-not-found -o name\n"
            assert "skipped=true" in output.read_text() and "first deploy" in summary.read_text()


def verdict_step_output(tmp_path: Path, verdict: dict[str, Any] | None, outcome: str) -> tuple[str, str]:
    _, step = step_named(load("deploy.yml"), 'canary.json" >> "$GITHUB_STEP_SUMMARY"')
    assert step["if"] == "always() && steps.canary.outputs.applied == 'true'"
    assert step["env"]["COMPARE_OUTCOME"] == "${{ steps.compare.outcome }}"
    (tmp_path / "canary.json").unlink(missing_ok=True)
    if verdict is not None:
        (tmp_path / "canary.json").write_text(json.dumps(verdict))
    summary = tmp_path / "summary.md"
    summary.write_text("")
    result = subprocess.run(["bash", "-eo", "pipefail", "-c", step["run"]], capture_output=True, text=True,
                            env={"PATH": os.environ["PATH"], "RUNNER_TEMP": str(tmp_path), "COMPARE_OUTCOME": outcome,
                                 "GITHUB_STEP_SUMMARY": str(summary)}, timeout=30)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return summary.read_text(), result.stdout


def test_a_rejected_canary_says_why_in_the_job_summary(tmp_path: Path):
    reasons = ["error rate 0.250 vs 0.000 (+0.250 > 0.01)", "median fare change 0.62 > 0.1"]
    summary, stdout = verdict_step_output(
        tmp_path, {"promote": False, "reasons": reasons, "figures": {"candidate_p99_ms": 8.5}}, "failure"
    )
    assert "### Canary rolled back: the stable service was not changed" in summary
    assert all(f"- {reason}" in summary for reason in reasons)
    assert "| candidate_p99_ms | 8.5 |" in summary
    assert stdout.strip() == "::error::canary rolled back: " + "; ".join(reasons)

    summary, stdout = verdict_step_output(
        tmp_path, {"promote": True, "reasons": [], "figures": {"ks": 0.01}}, "success"
    )
    assert "### Canary passed" in summary and "| ks | 0.01 |" in summary and stdout == ""

    summary, _ = verdict_step_output(tmp_path, None, "failure")
    assert "Canary: no verdict" in summary and "stable service was not changed" in summary


@pytest.mark.parametrize("status", [0, 1, 2])
def test_the_comparison_step_fails_exactly_when_compare_services_does_and_frees_its_ports(
    tmp_path: Path, status: int
):
    """The step's own bash (set -e, the port-forwards in the background) with kubectl, curl and uv as shell
    functions: compare-services' exit code is the step's, and both port-forwards are gone for the smoke test."""
    _, step = step_named(load("deploy.yml"), "taxi-platform compare-services")
    # An `if` without a status function implies success(): never after a failed canary step.
    assert step["if"] == "steps.canary.outputs.skipped != 'true'"
    prelude = f"""
kubectl() {{ echo "kubectl $*" >> {tmp_path}/calls; echo $BASHPID >> {tmp_path}/pids; exec sleep 30; }}
curl() {{  # "ready" once both port-forwards have started
  for _ in $(seq 200); do [ "$(cat {tmp_path}/pids 2> /dev/null | wc -l)" -ge 2 ] && return 0; sleep 0.05; done
  return 1
}}
uv() {{ echo "uv $*" >> {tmp_path}/calls; return {status}; }}
"""
    result = subprocess.run(["bash", "-eo", "pipefail", "-c", prelude + step["run"]], capture_output=True, text=True,
                            env={"PATH": os.environ["PATH"], "RUNNER_TEMP": str(tmp_path), "NAMESPACE": "fare-service"},
                            timeout=60)  # fmt: skip
    assert result.returncode == status, result.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert sorted(calls[:2]) == [
        "kubectl -n fare-service port-forward svc/fare-service 3000:3000",
        "kubectl -n fare-service port-forward svc/fare-service-canary 3001:3000",
    ]
    assert calls[2] == (
        "uv run --no-sync taxi-platform compare-services http://127.0.0.1:3000 http://127.0.0.1:3001 "
        f"--api-key-env SMOKE_API_KEY --json {tmp_path}/canary.json"
    )
    assert not list(tmp_path.glob("port-forward-*.pid")), "a port-forward pid file is left"
    pids = [int(pid) for pid in (tmp_path / "pids").read_text().split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 10
    while (alive := [pid for pid in pids if Path(f"/proc/{pid}").exists()]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive, f"port-forwards {alive} still run"
