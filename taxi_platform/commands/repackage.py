"""``taxi-platform repackage``: bring a rate-card change to the champion without retraining, as a new gated version.

A registered version ships the ``fare_model`` package it was validated with, rate card included, so a fare change
the TLC announces reaches its quotes only through a new version. After installing a release whose
``fare_model/rate_card.csv`` has the new rows, this command logs the champion's (or ``--version``'s) fitted state
again with the installed package, checks that every probe quote dated before the first change still prices exactly
as before, registers the result (tags ``repackaged_from``, ``rate_card_changes``) and runs the promotion gate,
which scores it on its validation month in the lake.

It refuses, registering nothing, when the cards are equal, when a change takes effect on or before the end of the
version's validation month (retrain that month instead), when the installed package differs in more than the card
(unless ``--allow-code-change``), or when the lake lacks the validation month's ``trip_features``.

    taxi-platform repackage --dry-run      # what would change, nothing logged
    taxi-platform repackage                # the champion
    taxi-platform repackage --version 7

Settings: ``MLFLOW_TRACKING_URI`` (or ``--tracking-uri``) and the lake (``TAXI_DATA_DIR``/``TAXI_LAKE_ROOT``).
The outcome is printed as JSON on stdout, a summary on stderr. Exit status 0 when a version was registered (even
if the gate kept the champion), 1 when it was refused or failed, 2 for bad settings.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--version", default=None, metavar="V", help="version to repackage (default: champion)"
    )
    parser.add_argument(
        "--tracking-uri", default=None, help="MLflow tracking/registry URI (default MLFLOW_TRACKING_URI)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print what would change; log nothing")
    parser.add_argument(
        "--allow-code-change",
        action="store_true",
        help="repackage even when package files other than the rate card differ",
    )
    parser.add_argument(
        "--tolerance", type=float, default=None, help="the gate's MAE tolerance (default 0.01)"
    )
    parser.add_argument("--require-shadow", action="store_true", help="the gate's require_shadow")
    parser.add_argument(
        "--evaluation-rows", type=int, default=100_000, help="rows of the validation month the gate scores on"
    )


def run(args: argparse.Namespace) -> int:
    from taxi_platform.core.setting_values import SettingsError
    from taxi_platform.core.settings import MODEL_NAME, load_settings

    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"taxi-platform repackage: {exc}", file=sys.stderr)
        return 2
    uri = args.tracking_uri or settings.mlflow_tracking_uri
    try:
        return _run(args, settings, uri, MODEL_NAME)
    except Exception as exc:
        from taxi_platform.model.repackage import RepackageError

        kind = "refused" if isinstance(exc, RepackageError) else f"failed ({type(exc).__name__})"
        print(f"taxi-platform repackage: {kind}: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, settings, uri: str, model_name: str) -> int:
    from taxi_platform.lake.lake import Lake
    from taxi_platform.model.registry_records import registry_client
    from taxi_platform.model.repackage import describe, plan, run_repackage, version_or_champion

    if args.dry_run:
        client = registry_client(uri)
        version = version_or_champion(client, model_name, args.version)
        the_plan = plan(client, model_name, version, args.allow_code_change)
        print(json.dumps(the_plan.as_dict()))
        print(f"v{version} would be repackaged: {the_plan.changes_text()}", file=sys.stderr)
        return 0
    result = run_repackage(
        uri,
        Lake(settings.lake_root),
        args.version,
        experiment=model_name,
        artifacts_dir=settings.data_dir / "mlartifacts",
        allow_code_change=args.allow_code_change,
        tolerance=args.tolerance,
        require_shadow=args.require_shadow,
        evaluation_rows=args.evaluation_rows,
    )
    print(json.dumps(result.as_dict()))
    print(describe(result), file=sys.stderr)
    return 0
