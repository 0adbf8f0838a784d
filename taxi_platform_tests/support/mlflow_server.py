"""A real ``mlflow server`` on loopback for tests: sqlite backend, proxied artifacts, bounded start-up.

    with MlflowServer(tmp_path) as server:
        server.url  # http://127.0.0.1:<port>

``mlflow_server`` is a pytest fixture (module scope) built on it. The server runs in its own process
group with one worker; teardown terminates it (then kills it after a grace period) and the log file is
attached to start-up errors.

``MlflowServer(root, auth=BasicAuth(...))`` runs MLflow's own ``basic-auth`` app instead, as the cluster does:
the auth config file (``basic_auth.ini``) and its sqlite user store in ``root``, the admin created on first
start from that file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from taxi_platform.devtools.loopback import NotReady, free_port, wait_http_ok

STARTUP_TIMEOUT_S = 90.0


def closed_port() -> int:
    """A loopback port nothing listens on (bound and released; nothing else binds it in the test's lifetime)."""
    return free_port()


@dataclass(frozen=True)
class BasicAuth:
    """Settings of MLflow's ``basic-auth`` app (the ``[mlflow]`` section of its config file)."""

    admin_username: str = "admin"
    admin_password: str = "admin-password-for-tests"
    default_permission: str = "READ"
    secret_key: str = "flask-secret-key-for-tests"

    def config_text(self, database_uri: str) -> str:
        return (
            "[mlflow]\n"
            f"default_permission = {self.default_permission}\n"
            f"database_uri = {database_uri}\n"
            f"admin_username = {self.admin_username}\n"
            f"admin_password = {self.admin_password}\n"
        )


class MlflowServer:
    def __init__(
        self,
        root: Path,
        port: int | None = None,
        startup_timeout: float = STARTUP_TIMEOUT_S,
        auth: BasicAuth | None = None,
    ):
        self.root = Path(root)
        self.auth = auth
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self.log_path = self.root / "mlflow-server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def backend_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def artifacts_dir(self) -> Path:
        return self.root / "artifacts"

    def start(self) -> MlflowServer:
        self.root.mkdir(parents=True, exist_ok=True)
        self.artifacts_dir.mkdir(exist_ok=True)
        cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--workers", "1",
            "--backend-store-uri", self.backend_uri,
            "--artifacts-destination", str(self.artifacts_dir),
        ]  # fmt: skip
        env = {**os.environ, "MLFLOW_ENABLE_ASYNC_LOGGING": "false", "GIT_PYTHON_REFRESH": "quiet"}
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            env.pop(name, None)
        if self.auth is not None:
            config = self.root / "basic_auth.ini"
            config.write_text(self.auth.config_text(f"sqlite:///{self.root / 'basic_auth.db'}"))
            cmd += ["--app-name", "basic-auth"]
            env.update(
                MLFLOW_AUTH_CONFIG_PATH=str(config), MLFLOW_FLASK_SERVER_SECRET_KEY=self.auth.secret_key
            )
            for name in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD"):
                env.pop(name, None)  # they would override the config file
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process in stop()
        self._log = log
        self.proc = subprocess.Popen(
            cmd, cwd=self.root, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            wait_http_ok(f"{self.url}/health", self.proc, self.startup_timeout, interval=0.3)
        except NotReady as exc:
            self.stop()
            if exc.returncode is not None:
                raise RuntimeError(
                    f"mlflow server exited with {exc.returncode}:\n{self.log_tail()}"
                ) from None
            raise RuntimeError(
                f"mlflow server did not answer /health within {self.startup_timeout:.0f}s:\n{self.log_tail()}"
            ) from None
        return self

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        self._log.close()

    def kill(self) -> None:
        """Stop the server at once (SIGKILL: requests in flight get no answer), as a crashed pod does."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
        self.stop()

    def restart(self) -> MlflowServer:
        """Start again on the same port, with the same store and artifacts, after :meth:`stop` or :meth:`kill`."""
        self.stop()
        return self.start()

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> MlflowServer:
    with MlflowServer(tmp_path_factory.mktemp("mlflow-server")) as server:
        yield server
