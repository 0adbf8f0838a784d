"""The Dagster instance directory (``DAGSTER_HOME``) for ``dagster dev``, the demo and process deployments.

``dagster dev``, ``dagster-webserver`` and ``dagster-daemon`` read ``$DAGSTER_HOME/dagster.yaml``. Two templates
ship with the package (read through :func:`taxi_platform.core.package_files.runtime_file`, so an installed wheel
has them too; their one home in the repository is ``dagster.yaml`` and ``deploy/dagster-postgres.yaml``):

* ``dagster.yaml``: SQLite storage under ``DAGSTER_HOME``, a run queue of 2, the ``tlc_downloads`` pool limit,
  telemetry off: the one to use on one machine;
* ``dagster-postgres.yaml``: the same with PostgreSQL storage (``DAGSTER_PG_*`` variables), for a webserver,
  daemon and run workers on different hosts.

:func:`ensure_dagster_home` lays one out under the data dir::

    export DAGSTER_HOME="$(python -c 'from taxi_platform.devtools.instance import ensure_dagster_home; print(ensure_dagster_home())')"
    dagster dev
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from taxi_platform.core.package_files import runtime_file

LOCAL_TEMPLATE = "dagster.yaml"
POSTGRES_TEMPLATE = "dagster-postgres.yaml"


def local_instance_yaml() -> Path:
    """The SQLite instance config shipped with the package (the repository's ``dagster.yaml``)."""
    return runtime_file(LOCAL_TEMPLATE)


def postgres_instance_yaml() -> Path:
    """The PostgreSQL instance config shipped with the package (``deploy/dagster-postgres.yaml``)."""
    return runtime_file(POSTGRES_TEMPLATE)


def __getattr__(name: str) -> Path:
    # Older names, resolved when used (not at import), so importing this module never needs the files.
    if name == "REPO_DAGSTER_YAML":
        return local_instance_yaml()
    if name == "POSTGRES_DAGSTER_YAML":
        return postgres_instance_yaml()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def ensure_dagster_home(
    data_dir: Path | str | None = None, source: Path | str | None = None, postgres: bool = False
) -> Path:
    """Create ``<data_dir>/dagster_home`` with a ``dagster.yaml`` in it, and return that directory.

    ``data_dir`` defaults to ``TAXI_DATA_DIR`` (else ``.data``); ``source`` to the packaged ``dagster.yaml``
    (``postgres=True``: the packaged ``dagster-postgres.yaml``). An existing ``dagster.yaml`` there is left as
    it is (it may have been edited on purpose), so calling this again is harmless. Set ``DAGSTER_HOME`` to the
    returned path before starting Dagster.
    """
    if (
        data_dir is None
    ):  # imported here: the rest of this module needs no data stack (numpy, via the settings)
        from taxi_platform.core.settings import load_data_dir

        data_dir = load_data_dir()
    data = Path(data_dir)
    home = data.expanduser().absolute() / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    if not target.exists():
        if source is not None:
            config = Path(source)
            if not config.is_file():
                raise FileNotFoundError(
                    f"no Dagster instance config at {config}: pass source= an existing dagster.yaml (or leave it "
                    "out to use the one shipped with the package)"
                )
        else:
            config = postgres_instance_yaml() if postgres else local_instance_yaml()
        tmp = target.with_name(f".dagster.yaml.{os.getpid()}.tmp")
        shutil.copyfile(config, tmp)
        os.replace(tmp, target)
    return home
