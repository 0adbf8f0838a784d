"""``taxi-platform ui``: open the platform's UIs on this machine's data, in one command.

Starts, on loopback:

* the **Dagster UI** (``dagster dev``: webserver + daemon) on the project's instance under
  ``$TAXI_DATA_DIR/dagster_home`` — the demo's runs, the asset graph, partitions, checks;
* the **MLflow UI** on the project's tracking store (``MLFLOW_TRACKING_URI``, default the local SQLite store);
  when that is already an ``http(s)://`` server, its address is printed instead;
* a **report server** for the local lake's files, so the drift report links in Dagster's metadata
  (``html_url``, ``plot_url``) open in the browser.

Prints the three URLs once they answer, and stops everything on Ctrl-C (or SIGTERM).

    taxi-platform ui                          # Dagster :3001, MLflow :5000, reports :3002
    taxi-platform ui --dagster-port 4001 --mlflow-port 5001 --reports-port 4002
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DAGSTER_PORT = 3001  # 3000 is the fare service's (taxi-platform serve)
MLFLOW_PORT = 5000
REPORTS_PORT = 3002
READY_TIMEOUT = 180.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument(
        "--dagster-port", type=int, default=DAGSTER_PORT, help=f"Dagster UI port ({DAGSTER_PORT})"
    )
    parser.add_argument(
        "--mlflow-port", type=int, default=MLFLOW_PORT, help=f"MLflow UI port ({MLFLOW_PORT})"
    )
    parser.add_argument(
        "--reports-port",
        type=int,
        default=REPORTS_PORT,
        help=f"port serving the lake's reports ({REPORTS_PORT})",
    )
    parser.add_argument("--no-mlflow", action="store_true", help="do not start the MLflow UI")


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


def serve_directory(root: Path, host: str, port: int) -> ThreadingHTTPServer:
    """Serve ``root`` read-only over HTTP in a background thread; the caller shuts it down."""
    server = ThreadingHTTPServer((host, port), partial(_QuietHandler, directory=str(root)))
    threading.Thread(target=server.serve_forever, name="reports", daemon=True).start()
    return server


def _start(name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    print(f"starting {name}: {' '.join(argv)}", flush=True)
    return subprocess.Popen(argv, env=env, start_new_session=True)  # own group: Ctrl-C is ours to forward


def _stop(procs: list[subprocess.Popen], grace: float = 20.0) -> None:
    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
    for proc in procs:
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


class _Launcher:
    """The UI processes started so far on ``host``: their URLs, and the health URLs that say they are ready."""

    def __init__(self, host: str, env: dict[str, str]) -> None:
        self.host, self.env = host, env
        self.urls: dict[str, str] = {}
        self.procs: list[subprocess.Popen] = []
        self.waits: list[tuple[str, subprocess.Popen | None]] = []

    def launch(self, name: str, argv: list[str], port: int, health_path: str) -> None:
        """Start one UI process on ``host:port``; it counts as ready once ``health_path`` answers."""
        proc = _start(f"{name} UI", [*argv, str(port)], self.env)
        self.procs.append(proc)
        self.urls[name] = f"http://{self.host}:{port}"
        self.waits.append((self.urls[name] + health_path, proc))


def _tool(name: str) -> str:
    """``name`` from this interpreter's environment when it is installed there, else from the PATH."""
    bindir = Path(sys.executable).parent
    return str(bindir / name) if (bindir / name).exists() else name


def _on_term(signum, frame):  # SIGTERM behaves like Ctrl-C
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from taxi_platform.core.settings import load_settings
    from taxi_platform.devtools.instance import ensure_dagster_home
    from taxi_platform.devtools.loopback import NotReady, wait_http_ok

    settings = load_settings()
    home = ensure_dagster_home(settings.data_dir)
    env = {**os.environ, "DAGSTER_HOME": str(home), "TAXI_DATA_DIR": str(settings.data_dir)}
    launcher = _Launcher(args.host, env)
    reports: ThreadingHTTPServer | None = None

    signal.signal(signal.SIGTERM, _on_term)
    try:
        reports = _start_uis(args, settings, launcher)
        for url, proc in launcher.waits:
            wait_http_ok(url, proc, READY_TIMEOUT)
        return _until_one_exits(launcher)
    except NotReady as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping…", flush=True)
        return 0
    finally:
        _stop(launcher.procs)
        if reports is not None:
            reports.shutdown()
            reports.server_close()


def _start_uis(args: argparse.Namespace, settings, launcher: _Launcher) -> ThreadingHTTPServer | None:
    """Start the Dagster UI, the MLflow UI (unless the tracking store is a server, or ``--no-mlflow``) and, for a
    local lake, the report server, which is returned."""
    host = args.host
    dagster = [_tool("dagster"), "dev", "-m", "taxi_platform.definitions", "-h", host, "-p"]
    launcher.launch("Dagster", dagster, args.dagster_port, "/server_info")
    uri = settings.mlflow_tracking_uri
    if uri.startswith(("http://", "https://")):
        launcher.urls["MLflow"] = uri + "  (the tracking server MLFLOW_TRACKING_URI names)"
    elif not args.no_mlflow:
        mlflow = [_tool("mlflow"), "ui", "--backend-store-uri", uri, "--host", host, "--port"]
        launcher.launch("MLflow", mlflow, args.mlflow_port, "/health")
    if settings.is_remote_lake:
        return None
    lake = Path(settings.lake_root.removeprefix("file://"))
    lake.mkdir(parents=True, exist_ok=True)
    reports = serve_directory(lake, host, args.reports_port)
    launcher.urls["Reports"] = f"http://{host}:{args.reports_port}/drift_report/"
    return reports


def _until_one_exits(launcher: _Launcher) -> int:
    """Print the URLs, then wait until a UI process exits (1) or Ctrl-C."""
    print("\nready:", flush=True)
    for name, url in launcher.urls.items():
        print(f"  {name:<8} {url}", flush=True)
    print("\nCtrl-C stops them all.", flush=True)
    while all(p.poll() is None for p in launcher.procs):
        time.sleep(0.5)
    failed = next(p for p in launcher.procs if p.poll() is not None)
    print(f"a UI process exited with code {failed.returncode}; stopping the others", file=sys.stderr)
    return 1
