"""A fare model version as MLflow logs it: the whole ``fare_model`` package, shipped under a name of its own.

A registered version must price every quote as it did when it was validated, whatever ``taxi_platform`` is
installed in the process that loads it. MLflow's ``code_paths`` only go to the front of ``sys.path``, and a
module the process already imported wins over them, so the package is shipped as
``taxi_fare_model_<digest>``: the digest is the SHA-256 of the package's files (computed from the folder, never
a list), so no installed module can ever stand in for it, and two versions with the same code share one import.
The models-from-code script is generated to import that name; the fitted state is plain data
(:meth:`~taxi_platform.fare_model.pyfunc.FareQuoteModel.fitted_state`), so no class path is frozen in a pickle.

Each version records what it was built with — ``fare_model_code`` (the digest), ``features_version``,
``training_version`` and ``state_format`` — in its MLmodel metadata, its state and (through
:mod:`taxi_platform.model.run_registration`) its registry tags (names in
:mod:`taxi_platform.model.version_tags`), plus ``probe_fares.json``: the fares it priced for a fixed set
of quotes (:func:`probe_quotes`) when it was logged, which :func:`taxi_platform.model.model_loading.verify_version`
re-prices before a Bento is built.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from taxi_platform.fare_model.features import FEATURES_VERSION, SERVICES
from taxi_platform.fare_model.pyfunc import STATE_ARTIFACT, STATE_FORMAT, FareQuoteModel, input_example
from taxi_platform.fare_model.pyfunc import model_signature as _signature
from taxi_platform.model.version_tags import CODE_TAG, FEATURES_TAG, STATE_TAG, TRAINING_TAG

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "fare_model"
SHIPPED_PREFIX = "taxi_fare_model_"
CODE_SCRIPT = "fare_model_code.py"
PROBE_ARTIFACT = "probe_fares"
_PIP_PACKAGES = ("mlflow", "scikit-learn", "numpy", "pandas", "pyarrow", "cloudpickle", "joblib")


def package_files(root: Path = PACKAGE_DIR) -> list[Path]:
    """The files of the package under ``root`` (what a version ships and the digest covers), sorted."""
    return sorted(
        p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )


def package_digest(root: Path = PACKAGE_DIR) -> str:
    """SHA-256 (16 hex digits) of every file of the package, by relative path and content."""
    h = hashlib.sha256()
    for path in package_files(root):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def shipped_name(digest: str) -> str:
    return f"{SHIPPED_PREFIX}{digest}"


def code_versions(training_version: str) -> dict[str, str]:
    """What a version built now records: the package digest, the feature, training and state versions."""
    return {
        CODE_TAG: package_digest(),
        FEATURES_TAG: FEATURES_VERSION,
        TRAINING_TAG: training_version,
        STATE_TAG: str(STATE_FORMAT),
    }


def stage_model_code(dest: Path) -> tuple[Path, Path]:
    """Copy the package to ``dest/code/taxi_fare_model_<digest>`` and write the models-from-code script;
    returns ``(package_dir, script)`` (MLflow ships the package dir as the model's ``code/<name>``)."""
    name = shipped_name(package_digest())
    code = dest / "code"
    shutil.copytree(PACKAGE_DIR, code / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    script = dest / CODE_SCRIPT
    script.write_text(
        f'"""The models-from-code script of this fare model version: its own code, shipped as `{name}`."""\n\n'
        "import mlflow.models\n\n"
        f"from {name}.pyfunc import FareQuoteModel\n\n"
        "mlflow.models.set_model(FareQuoteModel.from_code())\n"
    )
    return code / name, script


def probe_quotes() -> pd.DataFrame:
    """A fixed, varied set of quotes (services, hours, weekdays, airports, boroughs, passenger counts)."""
    rng = np.random.default_rng(20240305)
    n = 64
    zones = np.array([1, 4, 7, 13, 43, 48, 61, 74, 79, 100, 132, 138, 142, 161, 162, 186, 230, 236, 237, 244])
    stamps = np.datetime64("2024-03-04T00:00") + rng.integers(0, 7 * 24 * 60, n).astype("timedelta64[m]")
    return pd.DataFrame(
        {
            "pickup_datetime": stamps.astype(str),
            "pickup_zone": rng.choice(zones, n),
            "dropoff_zone": rng.choice(zones, n),
            "passenger_count": rng.integers(0, 7, n),
            "service": rng.choice(np.array(SERVICES), n),
        }
    )


def probe_record(model: Any) -> dict[str, Any]:
    """The probe quotes and what ``model`` (a ``FareQuoteModel`` or a loaded pyfunc's inner model) priced."""
    quotes = probe_quotes()
    services = set((getattr(model, "info", None) or {}).get("services") or SERVICES)
    quotes = quotes[quotes["service"].isin(services)].reset_index(drop=True)
    fares = model.predict_quotes({c: quotes[c].to_numpy() for c in quotes.columns})
    return {"quotes": quotes.to_dict(orient="list"), "fares": [float(f) for f in fares]}


def _pip_requirements() -> list[str]:
    reqs = []
    for dist in _PIP_PACKAGES:
        try:
            reqs.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:  # pragma: no cover
            reqs.append(dist)
    return reqs


def log_fare_model(
    model: FareQuoteModel,
    registered_model_name: str | None,
    training_version: str | None = None,
    name: str = "model",
    tags: Mapping[str, str] | None = None,
    await_registration_for: int = 300,
):
    """Log ``model`` in the active MLflow run (and register it) with its own code; returns ``ModelInfo``. A registered
    version is tagged with :func:`code_versions` too.

    ``training_version`` defaults to the installed :data:`taxi_platform.model.training.TRAINING_VERSION`."""
    if training_version is None:
        from taxi_platform.model.training import TRAINING_VERSION as training_version
    versions = code_versions(training_version)
    with _staged_package() as staged:
        info = _log_staged(model, staged, versions, name, registered_model_name, tags, await_registration_for)
    if registered_model_name and info.registered_model_version is not None:  # the version says it too
        client = mlflow.MlflowClient()
        for key, value in versions.items():
            client.set_model_version_tag(
                registered_model_name, str(info.registered_model_version), key, value
            )
    return info


def relog_fitted_state(
    state_path: Path, training_version: str, tags: Mapping[str, str] | None = None, name: str = "model"
):
    """Log a version's ``fare_state`` again with the installed package, in the active MLflow run (not registered):
    the same fitted estimator, pair statistics, ranges and tolls, priced by the installed package's code and rate
    card (:mod:`taxi_platform.model.repackage` decides when that is safe). The model is rebuilt by the *shipped*
    copy of the package, so its probe fares are what the logged version prices, whatever else is imported.

    ``training_version`` is the source version's (the fitting is not redone). Returns ``ModelInfo``."""
    import importlib
    from types import SimpleNamespace

    versions = code_versions(training_version)
    with _staged_package() as staged:
        shipped = importlib.import_module(f"{staged.code.name}.pyfunc")
        model = shipped.FareQuoteModel.from_code()
        model.load_context(SimpleNamespace(artifacts={STATE_ARTIFACT: str(state_path)}))
        return _log_staged(model, staged, versions, name, None, tags, 300)


@dataclass(frozen=True)
class _Staged:
    root: Path  # the temporary directory: the package under code/, the script, the artifacts
    code: Path
    script: Path


@contextmanager
def _staged_package() -> Iterator[_Staged]:
    """The package staged in a temporary directory (:func:`stage_model_code`) and importable under its shipped name
    meanwhile (MLflow runs the script while logging, for the input example). Afterwards its modules are forgotten,
    so a later load of the version imports them from the logged model's files, not from the deleted copy."""
    with tempfile.TemporaryDirectory(prefix="fare-model-code-") as tmp:
        code, script = stage_model_code(Path(tmp))
        sys.path.insert(0, str(code.parent))
        try:
            yield _Staged(Path(tmp), code, script)
        finally:
            sys.path.remove(str(code.parent))
            for module in [m for m in sys.modules if m == code.name or m.startswith(code.name + ".")]:
                if (getattr(sys.modules[module], "__file__", None) or "").startswith(str(code)):
                    del sys.modules[module]


def _log_staged(
    model: Any,
    staged: _Staged,
    versions: Mapping[str, str],
    name: str,
    registered_model_name: str | None,
    tags: Mapping[str, str] | None,
    await_registration_for: int,
):
    """Write the state and probe artifacts of ``model`` beside the staged code and log the models-from-code
    pyfunc."""
    import joblib

    state = staged.root / f"{STATE_ARTIFACT}.joblib"
    joblib.dump(model.fitted_state(versions), state, compress=3)
    probes = staged.root / f"{PROBE_ARTIFACT}.json"
    probes.write_text(json.dumps(probe_record(model)))
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(staged.script),
        artifacts={STATE_ARTIFACT: str(state), PROBE_ARTIFACT: str(probes)},
        code_paths=[str(staged.code)],
        signature=_signature(),
        input_example=input_example(),
        pip_requirements=_pip_requirements(),
        metadata=dict(versions),
        registered_model_name=registered_model_name,
        await_registration_for=await_registration_for,
        tags=dict(tags or {}),
    )
