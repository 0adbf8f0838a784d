"""The local Dagster instance directory (``DAGSTER_HOME``) for ``dagster dev`` and the demo.

``dagster dev``, ``dagster-webserver`` and ``dagster-daemon`` read ``$DAGSTER_HOME/dagster.yaml``. The repo's
``dagster.yaml`` (SQLite storage under ``DAGSTER_HOME``, a run queue of 2, the ``tlc_downloads`` pool limit,
telemetry off) is the one to use locally; :func:`ensure_dagster_home` lays it out under the data dir::

    export DAGSTER_HOME="$(python -c 'from taxi_platform.lib.instance import ensure_dagster_home; print(ensure_dagster_home())')"
    dagster dev
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
REPO_DAGSTER_YAML = REPO_ROOT / "dagster.yaml"
POSTGRES_DAGSTER_YAML = REPO_ROOT / "deploy" / "dagster-postgres.yaml"


def ensure_dagster_home(data_dir: Path | str | None = None, source: Path | str | None = None) -> Path:
    """Create ``<data_dir>/dagster_home`` with a ``dagster.yaml`` in it, and return that directory.

    ``data_dir`` defaults to ``TAXI_DATA_DIR`` (else ``.data``); ``source`` to the repo's ``dagster.yaml``.
    An existing ``dagster.yaml`` there is left as it is (it may have been edited on purpose), so calling this
    again is harmless. Set ``DAGSTER_HOME`` to the returned path before starting Dagster.
    """
    data = Path(data_dir if data_dir is not None else os.environ.get("TAXI_DATA_DIR", ".data"))
    home = data.expanduser().absolute() / "dagster_home"
    config = Path(source) if source is not None else REPO_DAGSTER_YAML
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    if not target.exists():
        if not config.is_file():
            raise FileNotFoundError(
                f"no Dagster instance config at {config}: run from a checkout of the repository (it has "
                "dagster.yaml at its root) or pass source= the dagster.yaml to use"
            )
        tmp = target.with_name(f".dagster.yaml.{os.getpid()}.tmp")
        shutil.copyfile(config, tmp)
        os.replace(tmp, target)
    return home
