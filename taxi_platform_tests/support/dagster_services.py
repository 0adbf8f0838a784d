"""Real Dagster services for end-to-end tests: dagster-webserver, dagster-daemon and a PostgreSQL server.

Everything listens on 127.0.0.1 on a free port, runs in its own process group, and is torn down (process
group and every descendant, such as code servers and run workers) when the context manager exits. Every
wait is bounded and says what it was waiting for when it gives up.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import psutil
import requests

from taxi_platform.devtools.loopback import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKSPACE = REPO_ROOT / "workspace.yaml"
T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    interval: float = 1.0,
    status: Callable[[], str] | None = None,
) -> T:
    """Call ``predicate`` until it returns something truthy; raise ``TimeoutError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (requests.RequestException, OSError) as exc:
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = f"; last error: {last_exc}" if last_exc else ""
            extra = f"; state: {status()}" if status else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{detail}{extra}")
        time.sleep(interval)


# -- processes ---------------------------------------------------------------------------------------
class ManagedProcess:
    """A subprocess in its own session (process group), logging to a file."""

    def __init__(
        self, name: str, argv: list[str], env: Mapping[str, str], cwd: Path, log_path: Path, **popen: Any
    ):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv,
            env=dict(env),
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **popen,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(
                f"{self.name} exited with code {self.proc.returncode}; last log lines:\n{self.tail()}"
            )

    def stop(self, grace: float = 15.0, sig: signal.Signals = signal.SIGTERM) -> None:
        """Signal the process group (and every descendant), wait, then SIGKILL what is left."""
        try:
            descendants = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            descendants = []
        if self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)
        for child in descendants:
            with contextlib.suppress(psutil.Error):
                child.send_signal(sig)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        _, still = psutil.wait_procs(descendants, timeout=max(1.0, grace / 3))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for child in still:
            with contextlib.suppress(psutil.Error):
                child.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self._log.close()


# -- dagster -----------------------------------------------------------------------------------------
class GraphQLError(RuntimeError):
    pass


class DagsterServices:
    """``dagster-daemon run`` and ``dagster-webserver`` on one ``DAGSTER_HOME``, loading ``workspace.yaml``.

    ``env`` is the complete environment for both (and so for code servers and run workers); it must hold
    ``DAGSTER_HOME``.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        log_dir: Path,
        port: int | None = None,
        cwd: Path = REPO_ROOT,
        daemon: bool = True,
    ):
        if "DAGSTER_HOME" not in env:
            raise ValueError("env must set DAGSTER_HOME")
        self.env = dict(env)
        self.log_dir = log_dir
        self.port = port or free_port()
        self.cwd = cwd
        self.with_daemon = daemon
        self.webserver: ManagedProcess | None = None
        self.daemon: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def init_storage(self) -> None:
        """Create the instance's tables once, before two processes race to create them on a fresh home."""
        import dagster as dg

        with patched_environ({k: v for k, v in self.env.items() if k.startswith(("DAGSTER_", "PG"))}):
            instance = dg.DagsterInstance.from_config(self.env["DAGSTER_HOME"])
        instance.dispose()

    def __enter__(self) -> DagsterServices:
        bindir = Path(sys.executable).parent  # the venv that runs the tests has the dagster executables
        self.init_storage()
        try:
            if self.with_daemon:
                self._start_daemon()
            self.webserver = ManagedProcess(
                "dagster-webserver",
                [
                    str(bindir / "dagster-webserver"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-w",
                    str(WORKSPACE),
                ],
                self.env,
                self.cwd,
                self.log_dir / "webserver.log",
            )
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start_daemon(self) -> None:
        self.daemon = ManagedProcess(
            "dagster-daemon",
            [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(WORKSPACE)],
            self.env,
            self.cwd,
            self.log_dir / "daemon.log",
        )

    def restart_daemon(self, timeout: float = 180.0) -> None:
        """Stop the daemon (and its runs' processes) and start a new one on the same instance."""
        if self.daemon is not None:
            self.daemon.stop()
        self._start_daemon()
        self.wait_ready(timeout)

    def stop(self) -> None:
        for proc in (self.webserver, self.daemon):
            if proc is not None:
                proc.stop()

    def check_alive(self) -> None:
        for proc in (self.webserver, self.daemon):
            if proc is not None:
                proc.check_alive()

    # -- readiness -------------------------------------------------------------------------------
    def wait_ready(self, timeout: float = 180.0, daemons: bool = True) -> None:
        """Wait for the webserver to answer, the code location to load, and (``daemons``) the daemons to heartbeat."""

        def location_loaded() -> bool:
            self.check_alive()
            data = self.graphql(
                """{ workspaceOrError { __typename ... on Workspace { locationEntries {
                     name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
            )
            entries = data["workspaceOrError"].get("locationEntries") or []
            for entry in entries:
                error = entry.get("locationOrLoadError") or {}
                if error.get("__typename") == "PythonError":
                    raise RuntimeError(f"code location {entry['name']} failed to load: {error['message']}")
            return bool(entries) and all(
                e["loadStatus"] == "LOADED"
                and (e.get("locationOrLoadError") or {}).get("__typename") == "RepositoryLocation"
                for e in entries
            )

        wait_until(location_loaded, timeout, "the webserver to load the code location", interval=2.0)
        if not daemons:
            return

        def daemons_healthy() -> bool:
            self.check_alive()
            data = self.graphql(
                "{ instance { daemonHealth { allDaemonStatuses { daemonType healthy required } } } }"
            )
            statuses = data["instance"]["daemonHealth"]["allDaemonStatuses"]
            needed = {"SENSOR", "SCHEDULER", "QUEUED_RUN_COORDINATOR", "BACKFILL", "ASSET"}
            healthy = {s["daemonType"] for s in statuses if s["healthy"]}
            return needed <= healthy

        wait_until(daemons_healthy, timeout, "the daemons to report healthy heartbeats", interval=2.0)

    # -- GraphQL ---------------------------------------------------------------------------------
    def graphql(self, query: str, variables: Mapping[str, Any] | None = None, timeout: float = 60.0) -> dict:
        resp = requests.post(
            f"{self.url}/graphql", json={"query": query, "variables": dict(variables or {})}, timeout=timeout
        )
        resp.raise_for_status()
        body = resp.json()
        if body.get("errors"):
            raise GraphQLError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def launch_partition_backfill(
        self, asset_keys: list[str], partitions: list[str], title: str | None = None
    ) -> str:
        params = {"assetSelection": [{"path": [k]} for k in asset_keys], "partitionNames": partitions}
        return self._launch_backfill({**params, "title": title})

    def _launch_backfill(self, params: Mapping[str, Any]) -> str:
        """``launchPartitionBackfill`` with these ``LaunchBackfillParams``; the new backfill's id."""
        data = self.graphql(
            """mutation($params: LaunchBackfillParams!) {
                 launchPartitionBackfill(backfillParams: $params) {
                   __typename
                   ... on LaunchBackfillSuccess { backfillId }
                   ... on PythonError { message stack }
                   ... on Error { message }
                 } }""",
            {"params": dict(params)},
        )
        result = data["launchPartitionBackfill"]
        if result["__typename"] != "LaunchBackfillSuccess":
            raise GraphQLError(f"launchPartitionBackfill: {result}")
        return result["backfillId"]

    def backfill(self, backfill_id: str) -> dict:
        data = self.graphql(
            """query($id: String!) { partitionBackfillOrError(backfillId: $id) {
                 __typename
                 ... on PartitionBackfill { id status numPartitions
                   error { message }
                   assetBackfillData { assetBackfillStatuses {
                     ... on AssetPartitionsStatusCounts { assetKey { path } numPartitionsTargeted
                           numPartitionsInProgress numPartitionsMaterialized numPartitionsFailed }
                     ... on UnpartitionedAssetStatus { assetKey { path } inProgress materialized failed }
                   } } }
                 ... on PythonError { message }
                 ... on Error { message } } }""",
            {"id": backfill_id},
        )
        return data["partitionBackfillOrError"]

    def _sensor_selector(self, name: str, location: str = "taxi_platform") -> dict:
        return {"repositoryLocationName": location, "repositoryName": "__repository__", "sensorName": name}

    def start_sensor(self, name: str) -> str:
        data = self.graphql(
            """mutation($sel: SensorSelector!) { startSensor(sensorSelector: $sel) {
                 __typename ... on Sensor { sensorState { status } } ... on PythonError { message }
                 ... on Error { message } } }""",
            {"sel": self._sensor_selector(name)},
        )
        result = data["startSensor"]
        if result["__typename"] != "Sensor":
            raise GraphQLError(f"startSensor({name}): {result}")
        return result["sensorState"]["status"]

    def stop_sensor(self, name: str) -> str:
        """Stop a sensor (stopSensor takes the sensor's id, not its selector)."""
        found = self.graphql(
            "query($sel: SensorSelector!) { sensorOrError(sensorSelector: $sel) { __typename ... on Sensor { id } } }",
            {"sel": self._sensor_selector(name)},
        )["sensorOrError"]
        if found["__typename"] != "Sensor":
            raise GraphQLError(f"sensorOrError({name}): {found}")
        result = self.graphql(
            """mutation($id: String) { stopSensor(id: $id) { __typename
                 ... on StopSensorMutationResult { instigationState { status } } ... on PythonError { message } } }""",
            {"id": found["id"]},
        )["stopSensor"]
        if result["__typename"] != "StopSensorMutationResult":
            raise GraphQLError(f"stopSensor({name}): {result}")
        return result["instigationState"]["status"]

    def sensor(self, name: str, ticks: int = 20) -> dict:
        data = self.graphql(
            """query($sel: SensorSelector!, $limit: Int) { sensorOrError(sensorSelector: $sel) {
                 __typename
                 ... on Sensor { name minIntervalSeconds sensorState { status
                     ticks(limit: $limit) { tickId status timestamp skipReason runIds runKeys cursor
                                            error { message } } } }
                 ... on Error { message } } }""",
            {"sel": self._sensor_selector(name), "limit": ticks},
        )
        result = data["sensorOrError"]
        if result["__typename"] != "Sensor":
            raise GraphQLError(f"sensorOrError({name}): {result}")
        return result

    def runs(self, tags: Mapping[str, str] | None = None, limit: int = 200) -> list[dict]:
        data = self.graphql(
            """query($filter: RunsFilter, $limit: Int) { runsOrError(filter: $filter, limit: $limit) {
                 __typename ... on Runs { results { runId status startTime endTime
                     tags { key value } assetSelection { path } } }
                 ... on Error { message } } }""",
            {"filter": {"tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]}, "limit": limit},
        )
        result = data["runsOrError"]
        if result["__typename"] != "Runs":
            raise GraphQLError(f"runsOrError: {result}")
        return result["results"]

    def run_steps(self, run_id: str) -> list[dict]:
        data = self.graphql(
            """query($id: ID!) { runOrError(runId: $id) { __typename ... on Run {
                 stepStats { stepKey status startTime endTime } } } }""",
            {"id": run_id},
        )
        return data["runOrError"].get("stepStats") or []

    def tail_logs(self, lines: int = 30) -> str:
        parts = []
        for proc in (self.daemon, self.webserver):
            if proc is not None:
                parts.append(f"--- {proc.name} ({proc.log_path}) ---\n{proc.tail(lines)}")
        return "\n".join(parts)

    # -- faults (the fault matrix, taxi_platform_tests/support/faults/dagster_faults.py) ---------------
    def code_server_pids(self, of: str = "daemon") -> list[int]:
        """The gRPC code servers (``dagster api grpc``) the daemon (or the webserver) spawned for workspace.yaml."""
        proc = self.daemon if of == "daemon" else self.webserver
        if proc is None:
            return []
        found = []
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(proc.proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    argv = child.cmdline()
                    if "api" in argv and "grpc" in argv:
                        found.append(child.pid)
        return found

    def kill_daemon(self) -> ManagedProcess:
        """SIGKILL the daemon process alone (as the OOM killer would): what it spawned (code server, run workers)
        is left running, as after a real kill. Returns the dead daemon's ManagedProcess: its process group holds
        those orphans; ``.stop()`` it when done. Start a new daemon with ``start_daemon``."""
        dead = self.daemon
        if dead is None:
            raise RuntimeError("no daemon to kill")
        os.kill(dead.proc.pid, signal.SIGKILL)
        dead.proc.wait(timeout=30)
        self.daemon = None
        return dead

    def launch_backfill_by_assets(
        self, partitions: Mapping[str, tuple[str, str] | None], title: str | None = None
    ) -> str:
        """A backfill of exactly these partitions: asset -> (first, last) partition key, None for an unpartitioned
        asset. Unlike ``launch_partition_backfill`` (partition names for a selection), Dagster does not add the
        downstream assets' partitions their partition mappings reach (e.g. a window mapping's later months)."""
        by_assets = [
            {
                "assetKey": {"path": [asset]},
                "partitions": None if keys is None else {"range": {"start": keys[0], "end": keys[1]}},
            }
            for asset, keys in partitions.items()
        ]
        return self._launch_backfill({"partitionsByAssets": by_assets, "title": title})

    def start_daemon(self, timeout: float = 180.0) -> None:
        """Start a daemon on the same instance (after ``kill_daemon``) and wait until its daemons heartbeat."""
        self._start_daemon()
        self.wait_ready(timeout)


# -- postgres ----------------------------------------------------------------------------------------
def postgres_bindir() -> Path:
    """The folder holding ``initdb`` and ``postgres``: a system install, else the ``pgserver`` wheel's copy.

    Skips the calling test (fails under ``CI=true``) with how to get a server when there is none.
    """
    from taxi_platform_tests.support.system_binaries import POSTGRES_INITDB, require

    return Path(os.path.realpath(require(POSTGRES_INITDB))).parent


class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1:<free port>, its unix socket in its own temp dir.

    ``initdb`` refuses to run as root, so as root the cluster runs as the ``postgres`` OS user (created if
    missing). A ``dagster`` role with a random password owns a ``dagster`` database; TCP logins need that
    password (scram-sha-256), as they would in production.
    """

    def __init__(self, log_dir: Path, db_name: str = "dagster", user: str = "dagster"):
        self.bindir = postgres_bindir()
        self.log_dir = log_dir
        self.db_name = db_name
        self.user = user
        self.password = secrets.token_hex(12)
        self.port = free_port()
        self.base: Path | None = None
        self.proc: ManagedProcess | None = None
        self._os_user: str | None = None

    def _run_as(self) -> dict[str, Any]:
        if os.geteuid() != 0:
            return {}
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            subprocess.run(
                [
                    shutil.which("useradd") or "/usr/sbin/useradd",
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    "postgres",
                ],
                check=True,
                capture_output=True,
            )
        self._os_user = "postgres"
        return {"user": "postgres", "group": pwd.getpwnam("postgres").pw_gid}

    def _bindir_for(self, as_user: dict[str, Any]) -> Path:
        """A bindir the cluster's OS user can run. A checkout in a 0700 directory (``mktemp -d``) hides the
        ``pgserver`` wheel's copy from the ``postgres`` user: its install (relocatable) is then copied once to a
        world-readable place under the temp dir."""
        if not as_user:
            return self.bindir
        try:
            probe = [str(self.bindir / "initdb"), "--version"]
            subprocess.run(probe, check=True, capture_output=True, timeout=60, **as_user)
            return self.bindir
        except (PermissionError, subprocess.CalledProcessError):
            pass
        # The wheel's binaries find their shared libraries through an RPATH into the package's sibling
        # ``<package>.libs``: stage both with the same layout.
        install = self.bindir.parent
        root = install.parents[1]
        rel = install.relative_to(root)
        staged = (
            Path(tempfile.gettempdir())
            / f"taxi-pginstall-{hashlib.sha256(str(install).encode()).hexdigest()[:12]}"
        )
        if not (staged / rel / self.bindir.name / "initdb").exists():
            work = Path(tempfile.mkdtemp(prefix=f"{staged.name}.", dir=staged.parent))
            try:
                tree = work / "tree"
                shutil.copytree(install, tree / rel, symlinks=True)
                for libs in root.glob(f"{rel.parts[0]}.libs"):
                    shutil.copytree(libs, tree / libs.name, symlinks=True)
                tree.chmod(0o755)
                with contextlib.suppress(OSError):  # another process staged it first
                    os.replace(tree, staged)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        return staged / rel / self.bindir.name

    def __enter__(self) -> PostgresServer:
        as_user = self._run_as()
        self.bindir = self._bindir_for(as_user)
        # /tmp, not pytest's tmp_path: the postgres user cannot enter root's 0700 pytest directories.
        self.base = Path(tempfile.mkdtemp(prefix="taxi-pg-"))
        data, sock = self.base / "data", self.base / "sock"
        sock.mkdir()
        pwfile = self.base / "superuser.pw"
        pwfile.write_text(secrets.token_hex(12) + "\n")
        if self._os_user:
            pw = pwd.getpwnam(self._os_user)
            for path in (self.base, sock, pwfile):
                os.chown(path, pw.pw_uid, pw.pw_gid)
        env = {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
        try:
            subprocess.run(
                [
                    str(self.bindir / "initdb"), "-D", str(data), "-U", "postgres", "--pwfile", str(pwfile),
                    "-E", "UTF8", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync",
                ],
                env=env, check=True, capture_output=True, timeout=120, cwd=self.base, **as_user,
            )  # fmt: skip
            self.proc = ManagedProcess(
                "postgres",
                [
                    str(self.bindir / "postgres"), "-D", str(data), "-p", str(self.port), "-k", str(sock),
                    "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
                    "-c", "full_page_writes=off", "-c", "max_connections=200",
                ],
                env, self.base, self.log_dir / "postgres.log", **as_user,
            )  # fmt: skip
            wait_until(self._ready, 60, "postgres to accept connections", interval=0.5, status=self.proc.tail)
            self._psql(f"CREATE ROLE {self.user} LOGIN PASSWORD '{self.password}'")
            self._psql(f"CREATE DATABASE {self.db_name} OWNER {self.user}")
        except subprocess.CalledProcessError as exc:
            self.stop()
            raise RuntimeError(f"{exc.cmd[0]} failed: {exc.stderr.decode(errors='replace')}") from exc
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _ready(self) -> bool:
        if self.proc is not None:
            self.proc.check_alive()
        done = subprocess.run(
            [str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)], capture_output=True
        )
        return done.returncode == 0

    def _psql_bin(self) -> str:
        own = self.bindir / "psql"
        return str(own) if own.exists() else (shutil.which("psql") or str(own))

    def _psql(self, sql: str) -> str:
        assert self.base is not None
        done = subprocess.run(
            [self._psql_bin(), "-h", str(self.base / "sock"), "-p", str(self.port),
             "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-Atc", sql],
            capture_output=True, timeout=30, env={"PATH": os.environ.get("PATH", "")},
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"psql {sql!r} failed: {done.stderr.decode(errors='replace')}")
        return done.stdout.decode()

    def query(self, sql: str) -> str:
        """Run SQL in the Dagster database as the superuser (for assertions)."""
        assert self.base is not None
        done = subprocess.run(
            [self._psql_bin(), "-h", str(self.base / "sock"), "-p", str(self.port),
             "-U", "postgres", "-d", self.db_name, "-v", "ON_ERROR_STOP=1", "-Atc", sql],
            capture_output=True, timeout=30, env={"PATH": os.environ.get("PATH", "")},
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"psql {sql!r} failed: {done.stderr.decode(errors='replace')}")
        return done.stdout.decode().strip()

    def background_session(self, sql: str) -> subprocess.Popen:
        """Run SQL in the Dagster database in a psql session left running (e.g. one that holds a lock while it
        sleeps); the caller terminates it (a restart of the server ends it too)."""
        assert self.base is not None
        return subprocess.Popen(
            [self._psql_bin(), "-h", str(self.base / "sock"), "-p", str(self.port),
             "-U", "postgres", "-d", self.db_name, "-v", "ON_ERROR_STOP=1", "-Atc", sql],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={"PATH": os.environ.get("PATH", "")},
        )  # fmt: skip

    def dagster_env(self) -> dict[str, str]:
        """The variables deploy/dagster-postgres.yaml reads."""
        return {
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USER": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_DB": self.db_name,
        }

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(grace=10, sig=signal.SIGINT)  # postgres: SIGINT is the "fast" shutdown
            self.proc = None
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None

    def restart(self, down_seconds: float = 0.0, sig: signal.Signals = signal.SIGINT) -> tuple[float, float]:
        """Stop the server (SIGINT: PostgreSQL's fast shutdown, every connection cut; SIGKILL: a crash), keep it down
        ``down_seconds`` (counted from the stop), start it again on the same port and data; returns (stopped, ready)
        as ``time.time()``."""
        assert self.base is not None and self.proc is not None, "restart() needs a running server"
        argv = self.proc.argv
        stopped = time.time()
        self.proc.stop(grace=10, sig=sig)
        time.sleep(max(0.0, down_seconds - (time.time() - stopped)))
        env = {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
        self.proc = ManagedProcess(
            "postgres", argv, env, self.base, self.log_dir / "postgres.log", **self._run_as()
        )
        wait_until(
            self._ready, 60, "postgres to accept connections again", interval=0.3, status=self.proc.tail
        )
        return stopped, time.time()


@contextlib.contextmanager
def patched_environ(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of the block (e.g. to open a DagsterInstance)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
