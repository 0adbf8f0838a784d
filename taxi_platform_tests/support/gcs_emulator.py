"""A real GCS emulator (``gcp-storage-emulator``) on a free loopback port, as pytest fixtures.

The emulator runs in its own process (in-memory storage), so code under test can reach it from the
test process, from Dagster's run/step subprocesses and from any other child: they all read
``STORAGE_EMULATOR_HOST``. The child exits on its own when the process that started it goes away,
so a killed test run leaves nothing behind.

Use in a test module or ``conftest.py``::

    from taxi_platform_tests.support.gcs_emulator import gcs_emulator, gcs_env, gcs_lake_root  # noqa: F401

* ``gcs_emulator`` (session): the running :class:`GCSEmulator`.
* ``gcs_env`` (function): sets ``STORAGE_EMULATOR_HOST``, ``GOOGLE_CLOUD_PROJECT`` and
  ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` for this test (and for subprocesses it starts).
* ``gcs_lake_root`` (function): a fresh bucket per test; returns ``gs://<bucket>/lake``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from taxi_platform.devtools.loopback import NotReady, free_port, wait_http_ok

PROJECT = "taxi-platform-test"
START_TIMEOUT_S = 20.0

# Runs in the child: serve in memory until the parent process is gone.
_CHILD_CODE = """
import os, sys, threading, time
from http import HTTPStatus
import gcp_storage_emulator.handlers.objects as objects

# GCS refuses an upload or delete whose ifGenerationMatch does not hold (0: the object must not exist) with
# 412; the emulator ignores the parameter, so the handlers are wrapped (before the server binds them) to do the same.
_precondition_lock = threading.Lock()
def _with_precondition(handler):
    def wrapped(request, response, storage, *args, **kwargs):
        wanted = request.query.get("ifGenerationMatch")
        if not wanted:
            return handler(request, response, storage, *args, **kwargs)
        data = request.data if isinstance(request.data, dict) else {}
        name = (request.params.get("object_id") or (request.query.get("name") or [None])[0]
                or (data.get("meta") or {}).get("name") or data.get("name"))
        with _precondition_lock:
            try:
                current = int(storage.get_file_obj(request.params["bucket_name"], name)["generation"])
            except Exception:
                current = 0
            if current != int(wanted[0]):
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json({"error": {"code": 412, "message": "conditionNotMet: a precondition did not hold"}})
                return None
            return handler(request, response, storage, *args, **kwargs)
    return wrapped
objects.insert = _with_precondition(objects.insert)
objects.delete = _with_precondition(objects.delete)

# Faults on a share of object requests, read from a JSON plan file (argv[4]) the parent rewrites at will:
# {"seed": 0, "error_share": 0.2, "timeout_share": 0.1, "delay_s": 8.0, "methods": ["GET", "POST", ...],
#  "timeout_methods": ["POST"]} (timeouts only on those methods; default: all of "methods").
# An error answers 503 without applying the request; a timeout holds the request delay_s (longer than the
# client's timeout) and then applies it, as a server that was slow but not dead does. Counts go to argv[4].stats.
import json, random, re
import gcp_storage_emulator.server as emulator_server
_faults = {"mtime": None, "plan": {}, "rng": random.Random(0), "counts": {}}
_fault_lock = threading.Lock()
_OBJECT_PATH = re.compile(r".*/b/[^/]+/o(/.*)?")
def _fault_plan(path):
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError:
        return {}
    if mtime != _faults["mtime"]:
        with open(path) as handle:
            plan = json.load(handle)
        _faults.update(mtime=mtime, plan=plan, rng=random.Random(plan.get("seed", 0)),
                       counts={"requests": 0, "errors": 0, "timeouts": 0})
    return _faults["plan"]
def _count(path, kind):
    _faults["counts"][kind] = _faults["counts"].get(kind, 0) + 1
    if kind != "requests":
        _faults["counts"].setdefault("times", []).append(time.time())
    with open(path + ".stats.tmp", "w") as handle:
        json.dump(_faults["counts"], handle)
    os.replace(path + ".stats.tmp", path + ".stats")
def _with_faults(handle, path):
    def wrapped(router, method):
        method = router._request_handler.headers.get("x-http-method-override") or method
        url_path = router._request_handler.path.split("?", 1)[0]
        with _fault_lock:
            plan = _fault_plan(path)
            kind = None
            if plan and _OBJECT_PATH.fullmatch(url_path) and method in plan.get("methods", [method]):
                _count(path, "requests")
                draw = _faults["rng"].random()
                timeouts = method in plan.get("timeout_methods", plan.get("methods", [method]))
                if draw < plan.get("error_share", 0):
                    kind = "errors"
                elif timeouts and draw < plan.get("error_share", 0) + plan.get("timeout_share", 0):
                    kind = "timeouts"
                if kind:
                    _count(path, kind)
        if kind == "errors":
            handler = router._request_handler
            length = int(handler.headers.get("Content-Length") or 0)
            if length:
                handler.rfile.read(length)
            body = json.dumps({"error": {"code": 503, "message": "injected: service unavailable"}}).encode()
            handler.send_response(503, "Service Unavailable")
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
            return None
        if kind == "timeouts":
            time.sleep(plan.get("delay_s", 5.0))
        return handle(router, method)
    return wrapped
if len(sys.argv) > 4:
    emulator_server.Router.handle = _with_faults(emulator_server.Router.handle, sys.argv[4])

from gcp_storage_emulator.server import create_server
host, port, parent = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
server = create_server(host, port, in_memory=True)
server.start()
try:
    while os.getppid() == parent:
        time.sleep(0.5)
finally:
    server.stop()
"""


class GCSEmulator:
    """One running emulator process."""

    def __init__(self, log_path: Path, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.log_path = log_path
        self.faults_path = log_path.with_name(log_path.name + ".faults.json")
        self.process: subprocess.Popen | None = None

    @property
    def host_port(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def endpoint(self) -> str:
        return f"http://{self.host_port}"

    def env(self) -> dict[str, str]:
        """Environment variables that point GCS clients (ours, gcsfs, google-cloud-storage) here."""
        return {
            # With the scheme: google-cloud-storage (and so dagster-gcp's GCSResource) uses the
            # value verbatim as its API endpoint; gcsfs accepts either form.
            "STORAGE_EMULATOR_HOST": self.endpoint,
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        }

    def start(self) -> GCSEmulator:
        last_error = "not started"
        for _attempt in range(3):  # a free port can be taken between probing and binding
            self.port = free_port()
            log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
            try:
                self.process = subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        _CHILD_CODE,
                        self.host,
                        str(self.port),
                        str(os.getpid()),
                        str(self.faults_path),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            finally:
                log.close()
            try:
                wait_http_ok(
                    self.endpoint + "/",
                    self.process,
                    START_TIMEOUT_S,
                    interval=0.05,
                    request_timeout=1,
                    any_2xx=True,
                )
                return self
            except NotReady as exc:
                if exc.returncode is not None:
                    last_error = f"exited with code {exc.returncode}"
                elif exc.last_error:
                    last_error = exc.last_error
            self.stop()
        log_tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
        raise RuntimeError(f"GCS emulator did not start on {self.host}: {last_error}\n{log_tail}")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None

    def set_faults(
        self,
        error_share: float = 0.0,
        timeout_share: float = 0.0,
        delay_s: float = 5.0,
        methods: tuple[str, ...] = ("GET", "POST", "PUT", "PATCH", "DELETE"),
        seed: int = 0,
        timeout_methods: tuple[str, ...] | None = None,
    ) -> None:
        """From now on, answer ``error_share`` of object requests with 503 (not applied) and hold
        ``timeout_share`` of them (of ``timeout_methods`` only, when given) ``delay_s`` before applying them; the
        draw is seeded, the counts restart."""
        plan = {
            "seed": seed,
            "error_share": error_share,
            "timeout_share": timeout_share,
            "delay_s": delay_s,
            "methods": list(methods),
        }
        if timeout_methods is not None:
            plan["timeout_methods"] = list(timeout_methods)
        self.faults_path.with_name(self.faults_path.name + ".stats").unlink(missing_ok=True)
        staging = self.faults_path.with_suffix(".tmp")
        staging.write_text(json.dumps(plan))
        os.replace(staging, self.faults_path)
        time.sleep(0.01)  # a distinct mtime for the next plan

    def clear_faults(self) -> None:
        self.faults_path.unlink(missing_ok=True)

    def fault_counts(self) -> dict[str, int]:
        """Object requests seen, errors / timeouts injected and when (``times``), since the last :meth:`set_faults`."""
        stats = self.faults_path.with_name(self.faults_path.name + ".stats")
        try:
            return json.loads(stats.read_text())
        except (OSError, ValueError):
            return {"requests": 0, "errors": 0, "timeouts": 0}

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh random name by default) and return its name."""
        name = name or f"taxi-test-{uuid.uuid4().hex[:12]}"
        response = requests.post(
            f"{self.endpoint}/storage/v1/b",
            params={"project": PROJECT},
            json={"name": name},
            timeout=10,
        )
        if response.status_code not in (200, 409):
            raise RuntimeError(f"creating bucket {name} failed: {response.status_code} {response.text}")
        return name

    def object_names(self, bucket: str, prefix: str = "") -> list[str]:
        """Object names in ``bucket`` under ``prefix``, straight from the emulator's JSON API."""
        names: list[str] = []
        params = {"prefix": prefix}
        while True:
            response = requests.get(f"{self.endpoint}/storage/v1/b/{bucket}/o", params=params, timeout=10)
            response.raise_for_status()
            body = response.json()
            names.extend(item["name"] for item in body.get("items", []))
            if not body.get("nextPageToken"):
                return sorted(names)
            params["pageToken"] = body["nextPageToken"]


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GCSEmulator]:
    emulator = GCSEmulator(tmp_path_factory.mktemp("gcs-emulator") / "emulator.log").start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def gcs_env(gcs_emulator: GCSEmulator, monkeypatch: pytest.MonkeyPatch) -> GCSEmulator:
    for name, value in gcs_emulator.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("GCLOUD_PROJECT", raising=False)
    return gcs_emulator


@pytest.fixture
def gcs_lake_root(gcs_env: GCSEmulator) -> str:
    return f"gs://{gcs_env.create_bucket()}/lake"
