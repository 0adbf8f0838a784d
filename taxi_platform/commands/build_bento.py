"""``taxi-platform build-bento``: build the fare-service Bento from the MLflow champion, as the ``fare_service`` asset does.

Looks up ``taxi_fare_model@champion`` at ``MLFLOW_TRACKING_URI``, imports that registry version into the
BentoML model store and runs ``bentoml build`` on a build context staged from the installed package
(``bento/service.py`` + ``taxi_platform``), with the Python requirements pinned from ``uv.lock``
(``bento/requirements.txt``). The model's own ``requirements.txt`` may only repeat pins of the lock: a line
naming another version, a package outside the lock, a URL or an option fails the build (exit 1) naming it. Same
champion and same code: the existing Bento is found and nothing is rebuilt.

The store is ``--bento-home``, else ``BENTOML_HOME``, else ``$TAXI_DATA_DIR/bentoml``. The Bento tag is the
only line on stdout (progress goes to stderr), so scripts can take it directly:

    taxi-platform build-bento                         # prints e.g. taxi_fare_service:v3-1a2b3c4d-0f9e8d7c
    tag=$(taxi-platform build-bento) && bentoml containerize "$tag"
    taxi-platform build-bento --json                  # tag, path, model, requirements, rebuilt, ... as JSON
    taxi-platform build-bento --base-image python:3.11-slim-bookworm@sha256:<digest>

``--base-image`` (default ``TAXI_BENTO_BASE_IMAGE``) is the container image's base, pinned as
``name:tag@sha256:<64 hex>`` (anything else is refused); without it BentoML's default base image is used. The
base image is part of the Bento's version. It must have Python 3.11 (BentoML installs no Python into it).

Exit status 1 with the reason when there is no champion or the build fails, 2 for bad settings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bento-home",
        type=Path,
        default=None,
        help="BentoML home (model and Bento store); default BENTOML_HOME, else $TAXI_DATA_DIR/bentoml",
    )
    parser.add_argument(
        "--tracking-uri", default=None, help="MLflow tracking/registry URI (default MLFLOW_TRACKING_URI)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print the build as one JSON object instead of the tag"
    )
    parser.add_argument(
        "--import-timeout", type=float, default=600.0, help="seconds for importing the champion"
    )
    parser.add_argument("--build-timeout", type=float, default=900.0, help="seconds for `bentoml build`")
    parser.add_argument(
        "--no-shadow",
        action="store_true",
        help="do not package the registry's challenger as a shadow (default: packaged when it is not the champion)",
    )
    parser.add_argument(
        "--base-image",
        default=None,
        metavar="REF",
        help="base of the Bento's container image, as name:tag@sha256:<64 hex> (default TAXI_BENTO_BASE_IMAGE; "
        "unset: BentoML's default image)",
    )


def run(args: argparse.Namespace) -> int:
    from taxi_platform.core.setting_values import SettingsError
    from taxi_platform.core.settings import load_settings
    from taxi_platform.serving import bento_build, bento_store
    from taxi_platform.serving.image_ref import ImageRefError, require_pinned_image

    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"taxi-platform build-bento: {exc}", file=sys.stderr)
        return 2
    # Given on the command line, even empty, it must be valid (an unset CI variable is an error, not the
    # default image); the environment variable counts only when non-empty.
    base_image = args.base_image if args.base_image is not None else settings.bento_base_image
    if args.base_image is not None or base_image:
        source = "--base-image" if args.base_image is not None else "TAXI_BENTO_BASE_IMAGE"
        try:
            base_image = require_pinned_image(base_image or "", source)
        except ImageRefError as exc:
            print(f"taxi-platform build-bento: {exc}", file=sys.stderr)
            return 2
    home = args.bento_home or (Path(os.environ["BENTOML_HOME"]) if os.environ.get("BENTOML_HOME") else None)
    home = (home or settings.bento_home).expanduser().absolute()
    uri = args.tracking_uri or settings.mlflow_tracking_uri
    print(f"building the champion's Bento from {uri} into {home}", file=sys.stderr, flush=True)
    try:
        champion, imported, build = bento_build.build_champion_bento(
            home,
            uri,
            import_timeout=args.import_timeout,
            build_timeout=args.build_timeout,
            base_image=base_image or None,
            shadow=not args.no_shadow,
        )
    except bento_store.ServingBuildError as exc:
        print(f"taxi-platform build-bento: {exc}", file=sys.stderr)
        return 1
    what = "built" if build.built else "already built (same champion and code)"
    print(
        f"{build.tag}: {what}; champion {champion.name} v{champion.version} ({build.model_tag}"
        f"{', imported now' if imported else ''}), {len(build.requirements)} pinned requirements"
        + (f"; shadow challenger {build.shadow_tag}" if build.shadow_tag else ""),
        file=sys.stderr,
    )
    if args.json:
        info = build.as_dict()
        info.update(
            base_image=base_image or None,
            bento_home=str(home),
            model_name=champion.name,
            model_version=champion.version,
            model_run_id=champion.run_id,
            model_imported=imported,
        )
        print(json.dumps(info, indent=2, sort_keys=True))
    else:
        print(build.tag)
    return 0
