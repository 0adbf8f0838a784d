"""``taxi-platform serve``: serve the fare model over HTTP with BentoML.

Serves the most recently built Bento in ``$TAXI_DATA_DIR/bentoml`` (what the ``fare_service`` asset builds),
or a given ``--bento`` tag. Without any Bento it serves ``bento/service.py`` from the source checkout with the
MLflow champion, importing it into the BentoML store first. Each worker runs with ``OMP_NUM_THREADS=1``
(several workers, one thread each, is what scales on a small machine). The server gets ``TAXI_DATA_DIR`` and
``TAXI_PREDICTION_LOG_PATH`` as absolute paths resolved in the caller's working directory, so its prediction
log lands where ``served_quotes`` reads it, from any working directory, and never inside the Bento.

    taxi-platform serve                      # http://127.0.0.1:3000, one worker per CPU
    taxi-platform serve --port 8080 --workers 2 --host 0.0.0.0
    taxi-platform serve --from-champion      # ignore built Bentos, serve the current champion from source

The process becomes ``bentoml serve`` (exec), so Ctrl-C and SIGTERM stop the server directly.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

DEFAULT_PORT = 3000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"HTTP port (default {DEFAULT_PORT})")
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1; 0.0.0.0 for all)"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: one per CPU, at most 4)"
    )
    parser.add_argument("--bento", default=None, help="Bento tag to serve (default: the latest built Bento)")
    parser.add_argument(
        "--from-champion",
        action="store_true",
        help="serve the MLflow champion from source even if a Bento exists",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the command and exit without serving")


def _config_options(existing: str | None, service: str, workers: int) -> str:
    option = f"services.{service}.workers={workers}"
    return f"{existing} {option}".strip() if existing else option


def _warn_if_stale(home, tag: str, tracking_uri: str) -> None:
    """Say so when the latest Bento does not package the current champion (best effort, never fatal)."""
    from taxi_platform.serving import bento_build, bento_store

    try:
        champion = bento_build.champion_info(tracking_uri)
        packaged = bento_build.bento_models(bento_store.bento_path(home, tag))
    except Exception:  # registry unreachable, Bento unreadable: serve what was asked for
        return
    if champion.store_tag not in packaged:
        print(
            f"warning: {tag} packages {packaged}, but the champion is now {champion.name} v{champion.version}: "
            "materialise `fare_service` to build its Bento, or use --from-champion",
            file=sys.stderr,
        )


def run(args: argparse.Namespace) -> int:
    from taxi_platform.core.settings import load_settings
    from taxi_platform.serving import bento_build, bento_context, bento_store

    if not 0 < args.port < 65536:
        print(f"--port {args.port}: expected 1-65535", file=sys.stderr)
        return 2
    workers = args.workers if args.workers is not None else max(1, min(os.cpu_count() or 1, 4))
    if workers < 1:
        print(f"--workers {workers}: expected at least 1", file=sys.stderr)
        return 2
    settings = load_settings()
    home = settings.bento_home
    serve_args: list[str]
    cwd = None
    try:
        target = None if args.from_champion else (args.bento or bento_store.latest_bento(home))
        if target is not None:
            if ":" not in target:
                target = f"{target}:latest"
            what = f"Bento {target}"
            serve_args = [target]
            if not args.bento:
                _warn_if_stale(home, target, settings.mlflow_tracking_uri)
        else:
            champion = bento_build.champion_info(settings.mlflow_tracking_uri)
            bento_store.import_champion(home, champion, settings.mlflow_tracking_uri)
            root = bento_context.repo_root()
            what = f"champion {champion.name} v{champion.version} from source"
            serve_args = [
                "bento.service:FareService",
                "--working-dir",
                str(root),
                "--arg",
                f"model_version={champion.store_version}",
            ]
            cwd = root
    except bento_store.ServingBuildError as exc:
        print(f"taxi-platform serve: {exc}", file=sys.stderr)
        return 1
    cmd = [*bento_store.bentoml_cli(), "serve", *serve_args, "--host", args.host, "--port", str(args.port)]
    env = bento_store.bentoml_env(home, settings.mlflow_tracking_uri)
    env["OMP_NUM_THREADS"] = "1"
    # `bentoml serve <tag>` runs from the Bento's own folder: absolute paths, so the prediction log goes where
    # served_quotes reads it (TAXI_PREDICTION_LOG_PATH, default $TAXI_DATA_DIR/predictions), never into the Bento.
    env["TAXI_DATA_DIR"] = str(settings.data_dir)
    env["TAXI_PREDICTION_LOG_PATH"] = settings.prediction_log_path
    env["BENTOML_CONFIG_OPTIONS"] = _config_options(
        os.environ.get("BENTOML_CONFIG_OPTIONS"), bento_store.SERVICE_NAME, workers
    )
    print(f"serving {what} on http://{args.host}:{args.port} with {workers} worker(s)", flush=True)
    print(f"  BENTOML_HOME={home} {shlex.join(cmd)}", flush=True)
    if args.dry_run:
        return 0
    if cwd is not None:
        os.chdir(cwd)
    os.execve(cmd[0], cmd, env)
    return 0  # pragma: no cover - execve does not return
