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

import os
import subprocess
import sys
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
                    [sys.executable, "-c", _CHILD_CODE, self.host, str(self.port), str(os.getpid())],
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
