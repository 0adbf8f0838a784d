"""Production rehearsal: the GKE topology as processes on loopback, from the built artifacts, never the checkout.

1. ``uv build`` makes the wheel; a fresh virtualenv outside the repository gets it with the locked dependencies
   (``uv export --frozen --no-dev``), as ``deploy/Dockerfile.dagster`` installs the user-code image. Every
   process below runs that venv's executables from an empty working directory, with an environment built
   from nothing (no variable of the test session leaks in).
2. Dagster as deployed: instance storage in PostgreSQL through the packaged ``dagster-postgres.yaml``, a
   ``dagster api grpc`` code server with the Helm values' arguments and environment, a webserver and a daemon
   loading it over gRPC, runs launched as their own processes (the DefaultRunLauncher, the stand-in for the
   K8sRunLauncher's pod per run). The lake is on the GCS emulator (``TAXI_LAKE_ROOT=gs://…`` from the
   values), MLflow is ``mlflow server`` with a PostgreSQL backend and ``--serve-artifacts`` to a bucket on
   the emulator, started as ``deploy/k8s/mlflow`` starts it (init container's ``db upgrade`` first).
   Environment variables come from the Helm values, the kustomize ConfigMap, the manifests and the
   Dockerfile; only placeholders are filled and cluster addresses mapped to loopback (:func:`fill`).
3. The release sensor is switched on against a 3-month sample mirror; with no other step, the months flow
   through ingest and transform to a champion, drift reports and a built Bento.
4. As ``.github/workflows/deploy.yml`` does, ``taxi-platform build-bento`` builds the champion's Bento into a
   fresh store (same tag as the asset's: same champion, same code, same pins). A second venv gets only the
   Bento's own ``env/python/requirements.txt`` (``--no-deps``, then ``uv pip check``), i.e. what the image
   installs; ``bentoml serve`` runs the Bento from its store in another empty directory with the fare-service
   Deployment's environment; the probes' paths answer 200, a quote is priced, ``/metrics`` counts it.
5. The quote's stdout line goes where the Cloud Logging sink puts it (a ``LogEntry`` with the line as
   ``jsonPayload``, picked by the sink's filter, in ``stdout/YYYY/MM/DD/…json`` of the predictions bucket named
   by the Helm values' ``TAXI_PREDICTION_LOG_PATH``); ``served_quotes`` and ``served_quote_accuracy`` run for the
   quote's pickup month as a run pod would, and the quote is in the month's accuracy report.

docs/deploy.md ("What is proven before a deploy") lists what this covers and what it cannot reproduce.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
import yaml

from taxi_platform.devtools.loopback import free_port
from taxi_platform.devtools.mirror import MirrorServer
from taxi_platform.devtools.sample import write_sample_mirror
from taxi_platform_tests.support.dagster_services import (
    DagsterServices,
    ManagedProcess,
    PostgresServer,
    wait_until,
)
from taxi_platform_tests.support.gcs_emulator import PROJECT, GCSEmulator

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
HELM_VALUES = DEPLOY / "helm" / "dagster-values.yaml"
MLFLOW_K8S = DEPLOY / "k8s" / "mlflow"
FARE_K8S = DEPLOY / "k8s" / "fare-service"
ROWS = {"yellow": 3000, "green": 300}
FLOW_TIMEOUT = 600.0  # ~4-6 min of runs on a loaded 2-core machine
QUOTE = {
    "pickup_datetime": "2023-03-07T08:15:00",
    "pickup_zone": 132,
    "dropoff_zone": 230,
    "passenger_count": 1,
    "service": "yellow",
}


# -- reading the deploy files --------------------------------------------------------------------------
def user_deployment() -> dict:
    values = yaml.safe_load(HELM_VALUES.read_text())
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    return deployment


def helm_values() -> dict:
    return yaml.safe_load(HELM_VALUES.read_text())


def k8s_docs(folder: Path) -> list[dict]:
    return [d for f in sorted(folder.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]


def container(folder: Path, kind: str = "Deployment", init: bool = False) -> dict:
    (doc,) = [d for d in k8s_docs(folder) if d["kind"] == kind]
    spec = doc["spec"]["template"]["spec"]
    (c,) = spec["initContainers"] if init else spec["containers"]
    return c


def dockerfile_env(path: Path) -> dict[str, str]:
    """``ENV k=v ...`` of the final stage of a Dockerfile (line continuations joined)."""
    text = path.read_text().replace("\\\n", " ")
    final = text.split("\nFROM ")[-1]
    env: dict[str, str] = {}
    for line in re.findall(r"^ENV (.+)$", final, re.M):
        env.update(dict(pair.split("=", 1) for pair in line.split()))
    return env


def config_env(path: Path) -> dict[str, str]:
    pairs = (
        line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#")
    )
    return {k.strip(): v.strip() for k, v in pairs}


def k8s_env(c: dict, secrets: dict[str, dict[str, str]], known: dict[str, str]) -> dict[str, str]:
    """A container's ``env`` list: values, ``valueFrom.secretKeyRef`` from ``secrets`` (Secret name -> key ->
    value), ``$(VAR)`` references expanded in order."""
    env = dict(known)
    out: dict[str, str] = {}
    for item in c.get("env", []):
        if "value" in item:
            value = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], str(item["value"]))
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            value = secrets[ref["name"]][ref["key"]]
        env[item["name"]] = out[item["name"]] = value
    return out


def kustomize_configmaps(folder: Path) -> dict[str, dict[str, str]]:
    """The ``files`` ConfigMaps of a kustomization's configMapGenerator: name -> file name -> content."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    return {
        g["name"]: {Path(f).name: (folder / f).read_text() for f in g["files"]}
        for g in kustomization.get("configMapGenerator", [])
        if "files" in g
    }


@dataclass
class Places:
    """What the placeholders and cluster addresses of the deploy files become on loopback."""

    root: Path  # stands in for each pod's /tmp emptyDir (one folder per pod)
    project: str
    mlflow_url: str
    pg_host: str
    pg_port: int


def pod_mounts(
    c: dict, pod: str, places: Places, files: dict[str, dict[str, str]] | None = None
) -> dict[str, Path]:
    """A container's volumeMounts as local folders (``<root>/<pod>/<volume>``), with ``files`` written into
    them (a Secret's keys); the image's own ``/tmp`` when no volume is mounted there."""
    mounts: dict[str, Path] = {}
    for m in c.get("volumeMounts", []):
        local = places.root / pod / m["name"]
        local.mkdir(parents=True, exist_ok=True)
        for name, content in (files or {}).get(m["name"], {}).items():
            (local / name).write_text(content)
        mounts[m["mountPath"]] = local
    mounts.setdefault("/tmp", places.root / pod / "tmp")
    return mounts


def fill(value: str, places: Places, pod: str, mounts: dict[str, Path] | None = None) -> str:
    """Fill a deploy-file value: placeholders (as deploy/render.sh and docs/deploy.md fill them), cluster
    service URLs to loopback, the pod's mount paths (``/tmp``, Secret volumes) to its local folders."""
    value = value.replace("PROJECT_ID", places.project).replace("CLOUD_SQL_PRIVATE_IP", places.pg_host)
    if value.startswith("http://") and ".svc.cluster.local" in value:
        assert "mlflow.mlflow.svc" in value, f"unknown cluster service in {value}"
        value = places.mlflow_url
    mounts = mounts or {"/tmp": places.root / pod / "tmp"}
    pattern = "|".join(re.escape(m) for m in sorted(mounts, key=len, reverse=True))
    # One pass, so a local folder (itself under /tmp) is never rewritten again.
    return re.sub(rf"(?<![\w/.-])({pattern})(?=/|$|[^\w.-])", lambda m: str(mounts[m.group(1)]), value)


def base_env(venv: Path, home: Path) -> dict[str, str]:
    """An environment from nothing: the venv's executables first, a fresh HOME, nothing from this session."""
    home.mkdir(parents=True, exist_ok=True)
    return {
        "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
    }


def empty_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


# -- the artifacts --------------------------------------------------------------------------------------
def uv() -> str:
    found = shutil.which("uv")
    if not found:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true and uv not found: the rehearsal builds the wheel with `uv build`")
        pytest.skip("uv not found (pip install uv): the rehearsal builds the wheel with `uv build`")
    return found


def run(cmd: list[str], **kw) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=kw.pop("timeout", 600), **kw)
    assert done.returncode == 0, (
        f"{' '.join(map(str, cmd))} failed ({done.returncode}):\n{done.stderr[-3000:]}"
    )
    return done.stdout


def uv_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "UV_PROJECT"))}
    env["UV_PYTHON_DOWNLOADS"] = "never"
    return env


def base_python() -> str:
    """The interpreter behind this test session's venv (the new venvs must not nest in the repo's)."""
    return os.path.realpath(sys.executable)


@dataclass
class Artifacts:
    wheel: Path
    venv: Path
    seconds: float


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Artifacts:
    start = time.monotonic()
    base = tmp_path_factory.mktemp("artifacts")
    uv_bin = uv()
    run([uv_bin, "build", "--out-dir", str(base / "dist")], cwd=REPO, env=uv_env())
    (wheel,) = (base / "dist").glob("taxi_platform-*.whl")
    reqs = base / "requirements.txt"
    run([uv_bin, "export", "--frozen", "--no-dev", "--no-hashes", "--no-emit-project", "-q", "-o", str(reqs)],
        cwd=REPO, env=uv_env())  # fmt: skip
    venv = base / "venv"
    run([uv_bin, "venv", "-q", "--python", base_python(), str(venv)], cwd=base, env=uv_env())
    run([uv_bin, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), "-r", str(reqs), str(wheel)],
        cwd=base, env=uv_env())  # fmt: skip
    return Artifacts(wheel=wheel, venv=venv, seconds=time.monotonic() - start)


def test_the_wheel_installs_outside_the_repository_and_finds_its_runtime_files(artifacts, tmp_path):
    """Today's main stops here: no Dagster instance config at …/site-packages/dagster.yaml."""
    code = (
        "import json, taxi_platform\n"
        "from taxi_platform.devtools.instance import ensure_dagster_home\n"
        "from taxi_platform.serving.bento_context import stage_build_context\n"
        "from taxi_platform.serving.bento_requirements import locked_requirements\n"
        "from pathlib import Path\n"
        "home = ensure_dagster_home(Path('data'), postgres=True)\n"
        "ctx = stage_build_context(Path('ctx'))\n"
        "print(json.dumps({'package': taxi_platform.__file__, 'home': str(home),\n"
        "    'pins': len(locked_requirements()), 'ctx': sorted(str(p.relative_to(ctx)) for p in ctx.rglob('*.py'))}))\n"
    )
    cwd = empty_dir(tmp_path / "empty")
    out = json.loads(run([str(artifacts.venv / "bin" / "python"), "-c", code], cwd=cwd,
                         env=base_env(artifacts.venv, tmp_path / "home")))  # fmt: skip
    assert out["package"].startswith(str(artifacts.venv)), "the package came from the checkout, not the wheel"
    assert (Path(out["home"]) / "dagster.yaml").read_bytes() == (
        DEPLOY / "dagster-postgres.yaml"
    ).read_bytes()
    assert out["pins"] > 50
    assert "bento/service.py" in out["ctx"] and "taxi_platform/fare_model/pyfunc.py" in out["ctx"]
    assert not [p for p in out["ctx"] if "_runtime" in p]


# -- the topology ---------------------------------------------------------------------------------------
class WheelDagster(DagsterServices):
    """``dagster api grpc`` + ``dagster-webserver`` + ``dagster-daemon`` from the wheel's venv, in empty dirs."""

    def __init__(
        self, venv: Path, code_env: dict, service_env: dict, root: Path, location: str, grpc_args: list
    ):
        super().__init__(service_env, root / "logs", cwd=empty_dir(root / "webserver-cwd"))
        self.venv = venv
        self.code_env = code_env
        self.root = root
        self.location = location
        self.grpc_args = grpc_args
        self.grpc_port = free_port()
        self.code_server: ManagedProcess | None = None
        self.workspace = root / "config" / "workspace.yaml"
        self.workspace.parent.mkdir(parents=True)
        self.workspace.write_text(yaml.safe_dump({"load_from": [{"grpc_server": {
            "host": "127.0.0.1", "port": self.grpc_port, "location_name": location}}]}))  # fmt: skip

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def init_storage(self) -> None:
        run([self.bin("dagster"), "instance", "migrate"], cwd=self.cwd, env=self.env, timeout=180)

    def __enter__(self) -> WheelDagster:
        self.init_storage()
        try:
            self.code_server = ManagedProcess(
                "code-server",
                [self.bin("dagster"), "api", "grpc", *self.grpc_args, "--host", "127.0.0.1",
                 "--port", str(self.grpc_port)],
                self.code_env, empty_dir(self.root / "code-server-cwd"), self.log_dir / "code-server.log",
            )  # fmt: skip
            self._wait_code_server()
            self._start_daemon()
            self.webserver = ManagedProcess(
                "dagster-webserver",
                [self.bin("dagster-webserver"), "-h", "127.0.0.1", "-p", str(self.port), "-w", str(self.workspace)],
                self.env, self.cwd, self.log_dir / "webserver.log",
            )  # fmt: skip
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_code_server(self, timeout: float = 240) -> None:
        """Start the webserver and daemon once the code server answers, as Kubernetes readiness probes do: a
        webserver that asks first records the location as unreachable until it reloads."""

        def healthy() -> bool:
            self.code_server.check_alive()
            probe = subprocess.run(
                [self.bin("dagster"), "api", "grpc-health-check", "--port", str(self.grpc_port)],
                env=self.code_env, cwd=self.cwd, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            return probe.returncode == 0

        wait_until(healthy, timeout, "the code server to answer its gRPC health check", interval=1.0)

    def _start_daemon(self) -> None:
        self.daemon = ManagedProcess(
            "dagster-daemon", [self.bin("dagster-daemon"), "run", "-w", str(self.workspace)],
            self.env, empty_dir(self.root / "daemon-cwd"), self.log_dir / "daemon.log",
        )  # fmt: skip

    def stop(self) -> None:
        super().stop()
        if self.code_server is not None:
            self.code_server.stop()

    def check_alive(self) -> None:
        super().check_alive()
        if self.code_server is not None:
            self.code_server.check_alive()

    def tail_logs(self, lines: int = 30) -> str:
        text = super().tail_logs(lines)
        if self.code_server is not None:
            text += f"\n--- code-server ---\n{self.code_server.tail(lines)}"
        return text

    def _sensor_selector(self, name: str, location: str = "") -> dict:
        return super()._sensor_selector(name, self.location)

    # -- queries --------------------------------------------------------------------------------
    def materializations(self, asset: str, limit: int = 20) -> list[dict]:
        data = self.graphql(
            """query($key: AssetKeyInput!, $limit: Int) { assetOrError(assetKey: $key) { __typename
                 ... on Asset { assetMaterializations(limit: $limit) { runId partition timestamp
                     metadataEntries { label
                       ... on TextMetadataEntry { text } ... on PathMetadataEntry { path }
                       ... on BoolMetadataEntry { boolValue } ... on IntMetadataEntry { intValue } } } } } }""",
            {"key": {"path": [asset]}, "limit": limit},
        )
        found = data["assetOrError"]
        return found.get("assetMaterializations") or [] if found["__typename"] == "Asset" else []

    def failure_messages(self, run_id: str) -> list[str]:
        """The error messages of a run's failed steps and of the run itself (for the assertion message)."""
        try:
            data = self.graphql(
                """query($id: ID!) { logsForRun(runId: $id) { __typename
                     ... on EventConnection { events { __typename
                       ... on MessageEvent { message level stepKey }
                       ... on ExecutionStepFailureEvent { error { message } }
                       ... on EngineEvent { error { message } } } }
                     ... on PythonError { message } } }""",
                {"id": run_id},
            )
        except Exception as exc:  # noqa: BLE001 - the message is diagnostics only
            return [f"(could not read the run's events: {exc})"]
        events = data["logsForRun"].get("events") or []
        return [
            f"{e.get('stepKey') or 'run'}: {(e.get('error') or {}).get('message') or e.get('message')}"
            for e in events
            if e.get("level") == "ERROR"
            or e["__typename"] in ("ExecutionStepFailureEvent", "RunFailureEvent")
        ]


def emulator_fs(emulator: GCSEmulator):
    """gcsfs's plain filesystem on the emulator (not the gRPC-probing one ``fsspec.filesystem("gcs")`` may give)."""
    from gcsfs.core import GCSFileSystem

    return GCSFileSystem(token="anon", endpoint_url=emulator.endpoint, use_listings_cache=False)


def read_object(emulator: GCSEmulator, path: str) -> bytes:
    return emulator_fs(emulator).cat_file(path)


def sink_to_bucket(lines: list[str], bucket_url: str, emulator: GCSEmulator) -> int:
    """What the logging sink (terraform/logging.tf) does with the fare service's stdout: each JSON line that
    passes its payload filter (``prediction_log_payload_filter``: ``fare_amount`` and ``request_id``) becomes a
    ``LogEntry`` with the line as ``jsonPayload``, in the hourly object ``stdout/YYYY/MM/DD/HH:00:00_HH:59:59_S0.json``
    of the predictions bucket. Returns the entries written."""
    fs = emulator_fs(emulator)
    hourly: dict[str, list[str]] = {}
    for line in lines:
        try:
            payload = json.loads(line)
        except ValueError:
            continue
        if not isinstance(payload, dict) or "fare_amount" not in payload or "request_id" not in payload:
            continue
        ts = payload["ts"]
        name = f"stdout/{ts[:4]}/{ts[5:7]}/{ts[8:10]}/{ts[11:13]}:00:00_{ts[11:13]}:59:59_S0.json"
        entry = {"insertId": f"{len(hourly)}-{ts}", "jsonPayload": payload, "logName": f"projects/{PROJECT}/logs/stdout",
                 "resource": {"type": "k8s_container", "labels": {"container_name": "fare-service"}},
                 "severity": "INFO", "timestamp": ts}  # fmt: skip
        hourly.setdefault(name, []).append(json.dumps(entry))
    root = bucket_url.removeprefix("gs://").rstrip("/")
    for name, entries_ in hourly.items():
        fs.pipe_file(f"{root}/{name}", ("\n".join(entries_) + "\n").encode())
    return sum(len(e) for e in hourly.values())


def entries(mat: dict) -> dict:
    out = {}
    for e in mat["metadataEntries"]:
        out[e["label"]] = next((e[k] for k in ("text", "path", "boolValue", "intValue") if k in e), None)
    return out


@dataclass
class Stage:
    """Wall-clock time per phase (printed; pytest shows it with -s or on failure)."""

    start: float
    last: float

    def __call__(self, name: str) -> None:
        now = time.monotonic()
        print(f"[rehearsal] {name}: +{now - self.last:.0f}s (at {now - self.start:.0f}s)", flush=True)
        self.last = now


@dataclass
class MlflowUsers:
    """MLflow basic-auth users as docs/deploy.md ("MLflow users") sets them up: name -> password."""

    admin: tuple[str, str]
    dagster: tuple[str, str]
    deployer: tuple[str, str]


def start_mlflow(
    venv: Path, root: Path, places: Places, pg: PostgresServer, emulator: GCSEmulator
) -> tuple[ManagedProcess, MlflowUsers]:
    """``mlflow server`` as ``deploy/k8s/mlflow`` runs it: the init container's ``db upgrade``, then the
    container's command and args (MLflow's basic-auth app), the Secrets and ConfigMaps as mounted files, the
    ConfigMap from ``config.env``; then the admin creates the ``dagster`` and ``deployer`` users."""
    password = "mlflow" + pg.password
    pg._psql(f"CREATE ROLE mlflow LOGIN PASSWORD '{password}'")
    pg._psql("CREATE DATABASE mlflow OWNER mlflow")
    # The image installs mlflow[auth] (deploy/Dockerfile.mlflow): the basic-auth app needs its extra.
    version = run([str(venv / "bin" / "python"), "-c", "import mlflow; print(mlflow.__version__)"],
                  cwd=root, env=uv_env()).strip()  # fmt: skip
    run([uv(), "pip", "install", "-q", "--python", str(venv / "bin" / "python"), f"mlflow[auth]=={version}"],
        cwd=root, env=uv_env())  # fmt: skip
    users = MlflowUsers(admin=("admin", "admin-" + pg.password), dagster=("dagster", "dagster-" + pg.password),
                        deployer=("deployer", "deployer-" + pg.password))  # fmt: skip
    # The Secrets docs/deploy.md creates from Secret Manager, and the kustomize ConfigMaps, by name.
    secrets = {
        "mlflow-db": {"password": password},
        "mlflow-auth": {"admin-password": users.admin[1], "flask-secret-key": "csrf-" + pg.password},
    }
    configmaps = kustomize_configmaps(MLFLOW_K8S)
    (doc,) = [d for d in k8s_docs(MLFLOW_K8S) if d["kind"] == "Deployment"]
    volume_files = {
        v["name"]: secrets[v["secret"]["secretName"]] if "secret" in v else configmaps[v["configMap"]["name"]]
        for v in doc["spec"]["template"]["spec"]["volumes"]
        if "secret" in v or "configMap" in v
    }

    def pod(c: dict, name: str) -> tuple[list[str], dict[str, str]]:
        mounts = pod_mounts(c, name, places, volume_files)
        configmap = {
            k: fill(v, places, name, mounts) for k, v in config_env(MLFLOW_K8S / "config.env").items()
        }
        env = {**base_env(venv, root / "pods" / name / "home"), **configmap, **emulator.env()}
        env.update({k: fill(v, places, name, mounts) for k, v in k8s_env(c, {}, configmap).items()})
        Path(env["HOME"]).mkdir(parents=True, exist_ok=True)
        argv = [fill(a, places, name, mounts) for a in c["command"]]
        # Cloud SQL listens on 5432 with TLS required; the loopback server on a free port, without TLS.
        assert sum(":5432/" in a and "sslmode=require" in a for a in argv) == 1, argv
        argv = [
            a.replace(":5432/", f":{places.pg_port}/").replace("sslmode=require", "sslmode=disable")
            for a in argv
        ]
        return argv, env

    init = container(MLFLOW_K8S, init=True)
    argv, env = pod(init, "mlflow-init")
    run(argv, cwd=empty_dir(root / "mlflow-init-cwd"), env=env, timeout=300)
    bucket = urlsplit(env["MLFLOW_ARTIFACTS_DESTINATION"]).netloc
    emulator.create_bucket(bucket)
    main = container(MLFLOW_K8S)
    port = urlsplit(places.mlflow_url).port
    args = [re.sub(r"^--host=.*", "--host=127.0.0.1", a) for a in main["args"]]
    args = [re.sub(r"^--port=.*", f"--port={port}", a) for a in args]
    assert "--serve-artifacts" in args and f"--port={port}" in args
    argv, env = pod(main, "mlflow")
    proc = ManagedProcess(
        "mlflow", [*argv, *args], env, empty_dir(root / "mlflow-cwd"), root / "logs" / "mlflow.log"
    )
    probe = main["readinessProbe"]["httpGet"]["path"]
    wait_until(lambda: (proc.check_alive(), requests.get(places.mlflow_url + probe, timeout=5).ok)[1],
               120, "mlflow server /health", status=proc.tail)  # fmt: skip
    api = places.mlflow_url + "/api/2.0/mlflow"
    assert requests.get(f"{api}/experiments/search", params={"max_results": 1}, timeout=10).status_code == 401
    for user, user_password in (users.dagster, users.deployer):
        r = requests.post(f"{api}/users/create", json={"username": user, "password": user_password},
                          auth=users.admin, timeout=30)  # fmt: skip
        assert r.ok, (r.status_code, r.text)
    return proc, users


def test_production_rehearsal_from_the_built_artifacts(artifacts, tmp_path_factory):
    uv_bin = uv()
    root = tmp_path_factory.mktemp("rehearsal")
    stage = Stage(time.monotonic(), time.monotonic())
    print(f"[rehearsal] wheel + venv: {artifacts.seconds:.0f}s", flush=True)
    venv = artifacts.venv
    deployment = user_deployment()
    values = helm_values()
    start_month = next(e["value"] for e in deployment["env"] if e["name"] == "TAXI_START_MONTH")
    year, month = map(int, start_month.split("-"))
    months = [date(year + (month - 1 + k) // 12, (month - 1 + k) % 12 + 1, 1) for k in range(3)]
    write_sample_mirror(root / "mirror", months, rows_per_month=ROWS, seed=13)

    emulator = GCSEmulator(root / "gcs-emulator.log").start()
    try:
        with (
            MirrorServer(root / "mirror") as mirror,
            PostgresServer(root / "logs") as pg,
        ):
            places = Places(root=root / "pods", project=PROJECT, mlflow_url=f"http://127.0.0.1:{free_port()}",
                            pg_host="127.0.0.1", pg_port=pg.port)  # fmt: skip
            mlflow, users = start_mlflow(venv, root, places, pg, emulator)
            try:
                stage("postgres, GCS emulator, mlflow server (db upgrade, then serve with basic-auth)")
                _rehearse(uv_bin, venv, root, places, pg, emulator, mirror, deployment, values, months, stage,
                          users)  # fmt: skip
            finally:
                mlflow.stop()
    finally:
        emulator.stop()


def _rehearse(
    uv_bin, venv, root, places, pg, emulator, mirror, deployment, values, months, stage, users
) -> None:
    # -- Dagster: instance config from the wheel, env from the Dockerfile + Helm values ------------------
    dagster_home = root / "pods" / "dagster-home"
    base = base_env(venv, root / "pods" / "dagster-home-user")
    pg_values = values["postgresql"]
    pg_env = {
        "DAGSTER_PG_HOST": fill(pg_values["postgresqlHost"], places, "dagster"),
        "DAGSTER_PG_PORT": str(pg.port),  # the chart's service.port is 5432; the loopback server's is free
        "DAGSTER_PG_USER": pg_values["postgresqlUsername"],
        "DAGSTER_PG_DB": pg_values["postgresqlDatabase"],
        "DAGSTER_PG_PASSWORD": pg.password,  # global.postgresqlSecretName in the cluster
    }
    assert (pg_env["DAGSTER_PG_USER"], pg_env["DAGSTER_PG_DB"]) == (pg.user, pg.db_name)
    home = run(
        [str(venv / "bin" / "python"), "-c",
         "import sys; from taxi_platform.devtools.instance import ensure_dagster_home; "
         "print(ensure_dagster_home(sys.argv[1], postgres=True))", str(dagster_home.parent / "instance")],
        cwd=empty_dir(root / "install-cwd"), env=base,
    ).strip()  # fmt: skip
    service_env = {**base, **pg_env, "DAGSTER_HOME": home, "PYTHONUNBUFFERED": "1"}

    image_env = dockerfile_env(DEPLOY / "Dockerfile.dagster")
    # The image puts the uv binary on PATH (bentoml build runs it); so does setup-uv in deploy.yml.
    final_stage = (DEPLOY / "Dockerfile.dagster").read_text().split("\nFROM ")[-1]
    assert re.search(r"^COPY --from=build \S+/uv /usr/local/bin/uv$", final_stage, re.M)
    image_bin = empty_dir(root / "image-bin")
    (image_bin / "uv").symlink_to(uv_bin)
    base["PATH"] = service_env["PATH"] = f"{venv / 'bin'}:{image_bin}:/usr/bin:/bin"
    code_env = dict(service_env)
    code_env.update(
        {k: fill(v, places, "run") for k, v in image_env.items() if k not in ("PATH", "DAGSTER_HOME")}
    )
    # The Secret mlflow-client (docs/deploy.md): Dagster's own MLflow user.
    client_secret = {"mlflow-client": {"username": users.dagster[0], "password": users.dagster[1]}}
    code_env.update({k: fill(v, places, "run") for k, v in k8s_env(deployment, client_secret, {}).items()})
    assert (code_env["MLFLOW_TRACKING_USERNAME"], code_env["MLFLOW_TRACKING_PASSWORD"]) == users.dagster
    code_env.update(emulator.env())  # the emulator stands in for GCS; Workload Identity for credentials
    code_env.update(
        TLC_BASE_URL=mirror.url,  # production reads the TLC CDN (the default)
        TAXI_SENSOR_INTERVAL_SECONDS="5",  # hourly in production
        TAXI_AUTOMATION_INTERVAL_SECONDS="5",  # 30 s in production
    )
    lake = code_env["TAXI_LAKE_ROOT"]
    assert lake.startswith("gs://") and code_env["MLFLOW_TRACKING_URI"] == places.mlflow_url
    emulator.create_bucket(urlsplit(lake).netloc)
    predictions = code_env["TAXI_PREDICTION_LOG_PATH"]  # the bucket terraform/storage.tf creates for the sink
    assert predictions.startswith("gs://") and predictions.endswith("-predictions")
    emulator.create_bucket(urlsplit(predictions).netloc)

    svc = WheelDagster(venv, code_env, service_env, root / "dagster", deployment["name"],
                       deployment["dagsterApiGrpcArgs"])  # fmt: skip
    with svc:
        svc.wait_ready(240)
        stage("code server, webserver, daemon up on the PostgreSQL instance")
        assert svc.start_sensor("tlc_release_sensor") == "RUNNING"

        def flowed() -> dict | None:
            svc.check_alive()
            runs = svc.runs()
            failed = [r for r in runs if r["status"] in ("FAILURE", "CANCELED")]
            if failed:
                detail = {r["runId"]: svc.failure_messages(r["runId"]) for r in failed}
                raise AssertionError(
                    f"run(s) failed: {json.dumps(detail, indent=1)[:6000]}\n{svc.tail_logs()}"
                )
            busy = [r for r in runs if r["status"] not in ("SUCCESS",)]
            services = svc.materializations("fare_service")
            drift = svc.materializations("drift_report")
            if busy or not services or not drift:
                return None
            return {"runs": runs, "fare_service": services, "drift_report": drift}

        try:
            state = wait_until(flowed, FLOW_TIMEOUT, "three months to flow to a champion, drift reports and a Bento",
                               interval=5.0)  # fmt: skip
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\nruns: {[(r['runId'][:8], r['status']) for r in svc.runs()]}\n"
                                 f"{svc.tail_logs(60)}") from exc  # fmt: skip
        stage(f"release sensor -> champion, drift report, Bento ({len(state['runs'])} runs)")
        # Let the automation sensor settle (a champion move after the first Bento builds a second one).
        time.sleep(12)
        state = wait_until(flowed, 180, "the runs the last ticks started", interval=5.0)
        stage("settled")

    # -- what the flow left: every month ingested, a champion, drift reports in the lake, the Bento --------
    pids = {r["runId"] for r in state["runs"]}
    assert len(pids) >= 5, "ingest runs, fare_model runs, drift and fare_service runs"
    latest = entries(state["fare_service"][0])
    from mlflow import MlflowClient

    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = users.deployer
    try:
        client = MlflowClient(tracking_uri=places.mlflow_url, registry_uri=places.mlflow_url)
        champion = client.get_model_version_by_alias("taxi_fare_model", "champion")
    finally:
        del os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
    assert latest["model_version"] == str(champion.version)
    assert latest["rebuilt"] is True or len(state["fare_service"]) > 1
    bucket = urlsplit(code_env["TAXI_LAKE_ROOT"]).netloc
    prefix = urlsplit(code_env["TAXI_LAKE_ROOT"]).path.strip("/")
    lake_objects = emulator.object_names(bucket, prefix)
    for m in months:
        assert any(f"trip_features/month={m:%Y-%m}/" in o for o in lake_objects), (m, lake_objects[:20])
    reports = [o for o in lake_objects if o.endswith("report.json") and "/drift_report/" in o]
    assert reports, lake_objects
    mlflow_bucket = urlsplit(fill(config_env(MLFLOW_K8S / "config.env")["MLFLOW_ARTIFACTS_DESTINATION"],
                                  places, "mlflow")).netloc  # fmt: skip
    assert emulator.object_names(mlflow_bucket), "the model's artifacts went to the MLflow bucket"
    run_bento_home = Path(latest["bento_home"])
    assert str(run_bento_home).startswith(str(places.root / "run")), "the run built in its pod's /tmp"

    # -- deploy.yml: `taxi-platform build-bento` with the same wheel, from an empty dir ---------------------
    deploy_home = root / "deploy-runner" / "bentoml"
    # deploy.yml signs in as the read-only MLflow user `deployer` (password from Secret Manager).
    deploy_env = {**base_env(venv, root / "deploy-runner" / "home"), "BENTOML_HOME": str(deploy_home),
                  "MLFLOW_TRACKING_URI": places.mlflow_url, "PATH": base["PATH"],
                  "MLFLOW_TRACKING_USERNAME": users.deployer[0], "MLFLOW_TRACKING_PASSWORD": users.deployer[1]}  # fmt: skip
    info = json.loads(run([str(venv / "bin" / "taxi-platform"), "build-bento", "--json"],
                          cwd=empty_dir(root / "deploy-runner" / "cwd"), env=deploy_env, timeout=900))  # fmt: skip
    assert info["tag"] == latest["bento_tag"], (
        "deploy.yml builds the Bento the asset built (champion, code, pins)"
    )
    assert info["model_version"] == str(champion.version) and info["model_overrides"] == []
    bento_dir = Path(info["path"])
    pins = [line for line in (bento_dir / "env" / "python" / "requirements.txt").read_text().splitlines()
            if line and not line.startswith(("#", "-"))]  # fmt: skip
    packaged = [line for line in (REPO / "bento" / "requirements.txt").read_text().splitlines()
                if line and not line.startswith("#")]  # fmt: skip
    # BentoML appends its own `bentoml==<version>` line: the same pin as the lock's.
    assert set(pins) == set(packaged), "the Bento installs exactly the lock's pins"
    stage("taxi-platform build-bento (deploy.yml's step) -> the same tag")

    # -- the image's Python: only the Bento's own requirements, no dependency resolution -------------------
    image_venv = root / "image-venv"
    run([uv_bin, "venv", "-q", "--python", base_python(), str(image_venv)], env=uv_env())
    run([uv_bin, "pip", "install", "-q", "--no-deps", "--python", str(image_venv / "bin" / "python"),
         "-r", str(bento_dir / "env" / "python" / "requirements.txt")], env=uv_env())  # fmt: skip
    run([uv_bin, "pip", "check", "--python", str(image_venv / "bin" / "python")], env=uv_env())
    stage("image venv from the Bento's requirements (uv pip check: complete)")

    # -- bentoml serve the Bento from its store, the fare-service Deployment's env and probes ---------------
    fare = container(FARE_K8S)
    api_key = "rehearsal-" + pg.password
    key_volume = next(m["name"] for m in fare["volumeMounts"] if "api-keys" in m["name"])
    key_file = next(e["value"] for e in fare["env"] if e["name"] == "TAXI_API_KEYS_FILE").rsplit("/", 1)[1]
    mounts = pod_mounts(fare, "fare-service", places,
                        {key_volume: {key_file: f"rehearsal:{hashlib.sha256(api_key.encode()).hexdigest()}\n"}})  # fmt: skip
    serve_env = {
        **base_env(image_venv, root / "pods" / "fare-service" / "home"),
        "BENTOML_HOME": str(deploy_home),
    }
    serve_env.update({e["name"]: fill(str(e["value"]), places, "fare-service", mounts) for e in fare["env"]})
    assert Path(serve_env["TAXI_API_KEYS_FILE"]).is_file()
    port = free_port()
    assert fare["ports"][0]["containerPort"] == 3000
    server = ManagedProcess(
        "bentoml-serve",
        [str(image_venv / "bin" / "bentoml"), "serve", info["tag"], "--host", "127.0.0.1", "--port", str(port)],
        serve_env, empty_dir(root / "serve-cwd"), root / "logs" / "bentoml-serve.log",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        startup = fare["startupProbe"]
        budget = startup["periodSeconds"] * startup["failureThreshold"]
        wait_until(lambda: (server.check_alive(), requests.get(url + startup["httpGet"]["path"], timeout=5).ok)[1],
                   budget, "the startup probe", status=server.tail)  # fmt: skip
        for probe in ("readinessProbe", "livenessProbe"):
            spec = fare[probe]
            resp = requests.get(url + spec["httpGet"]["path"], timeout=spec.get("timeoutSeconds", 1))
            assert resp.status_code == 200, (probe, resp.status_code, resp.text[:200])
        stage("bentoml serve: startup, readiness and liveness probes answer 200")
        refused = requests.post(url + "/predict", json=QUOTE, timeout=30)
        assert refused.status_code == 401, (refused.status_code, refused.text[:300])
        quote = requests.post(
            url + "/predict", json=QUOTE, timeout=30, headers={"Authorization": f"Bearer {api_key}"}
        )
        assert quote.status_code == 200, quote.text
        body = quote.json()
        assert body["model_version"] == str(champion.version) and body["currency"] == "USD"
        assert 3.0 <= body["fare_amount"] < 500
        metrics = requests.get(url + "/metrics", timeout=10)
        assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
        priced = re.search(r'^taxi_fare_quotes_priced_total\{[^}]*endpoint="predict"[^}]*\} (\S+)$',
                           metrics.text, re.M)  # fmt: skip
        assert priced and float(priced.group(1)) >= 1, metrics.text[:2000]
        stage(
            f"priced {QUOTE['pickup_zone']}->{QUOTE['dropoff_zone']}: ${body['fare_amount']}; /metrics counts it"
        )

        def logged() -> list[dict]:  # the writer thread flushes every 0.2 s
            records = [json.loads(x) for x in server.tail(400).splitlines() if x.startswith('{"ts"')]
            return [
                r for r in records if r["endpoint"] == "predict" and r["fare_amount"] == [body["fare_amount"]]
            ]

        wait_until(logged, 10, "the quote's record on stdout (TAXI_PREDICTION_LOG=stdout)", interval=0.2)
        stdout_lines = server.tail(400).splitlines()
    finally:
        server.stop()

    # -- the Cloud Logging sink's path: stdout lines -> LogEntry objects in the predictions bucket -------------
    written = sink_to_bucket(stdout_lines, predictions, emulator)
    assert written >= 1
    month = QUOTE["pickup_datetime"][:7]
    run_cwd = empty_dir(root / "served-quotes-run-cwd")
    run([str(venv / "bin" / "dagster"), "asset", "materialize", "-m", "taxi_platform.definitions",
         "--select", "served_quotes,served_quote_accuracy", "--partition", f"{month}-01"],
        cwd=run_cwd, env=code_env, timeout=600)  # fmt: skip
    report = json.loads(
        read_object(emulator, f"{lake.removeprefix('gs://')}/served_quote_accuracy/month={month}/report.json")
    )
    assert report["quotes"] == 1 and report["model_versions"] == {str(champion.version): 1}, report
    stage(f"the quote, through the sink's bucket, is in served_quote_accuracy for {month}")
