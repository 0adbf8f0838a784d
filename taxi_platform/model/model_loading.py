"""Load a registered fare model version with its own code, and check that it prices as it did when validated.

A version logged by :mod:`taxi_platform.model.model_package` ships its code as ``taxi_fare_model_<digest>``: MLflow's
own loader already runs that code, whatever is installed. Versions logged before (their code shipped as a copy of
``taxi_platform/lib/*``, their state pickled with ``taxi_platform.lib.*`` classes) would run the installed
``taxi_platform`` in any process that imported it first. :func:`load_version` loads those from their own files
too: their shipped package is copied under a private name (``taxi_fare_model_legacy_<digest>``, imports
rewritten to it) and their state unpickled against it. Every platform path that prices with a registered version
(the gate, drift, served-quote ranges, the Bento) goes through :func:`load_version`.

:func:`verify_version` re-prices the probe quotes a version recorded when it was logged and refuses the version,
naming what it was built with, when any fare differs by more than 1e-9.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from taxi_platform.model.model_package import PROBE_ARTIFACT
from taxi_platform.model.version_tags import CODE_TAG, FEATURES_TAG, STATE_TAG, TRAINING_TAG

LEGACY_PACKAGE = "taxi_platform"
LEGACY_PREFIX = "taxi_fare_model_legacy_"
TOLERANCE = 1e-9
_LOCK = threading.Lock()
_LEGACY_ROOT: Path | None = None


class VersionMismatchError(RuntimeError):
    """A registered version does not price its probe quotes as it did when it was logged."""


class OwnCodeModel:
    """A legacy version loaded from its own files: ``predict(df)`` and ``unwrap_python_model()`` as a pyfunc."""

    def __init__(self, python_model: Any, path: Path) -> None:
        from mlflow.models import Model

        self._python_model = python_model
        self.path = path
        self.metadata = Model.load(str(path / "MLmodel"))  # as a pyfunc's: signature, metadata

    def unwrap_python_model(self) -> Any:
        return self._python_model

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return self._python_model.predict(None, data)


def local_model_dir(model_uri: str) -> Path:
    """The model's files on local disk (downloaded from the tracking server when needed)."""
    path = Path(model_uri)
    if path.is_dir():
        return path
    from mlflow.artifacts import download_artifacts

    return Path(download_artifacts(artifact_uri=model_uri))


def _flavor(path: Path) -> dict[str, Any]:
    import yaml

    meta = yaml.safe_load((path / "MLmodel").read_text())
    return {**meta.get("flavors", {}).get("python_function", {}), "metadata": meta.get("metadata") or {}}


def artifact_path(path: Path, name: str) -> Path:
    """The file of the pyfunc artifact ``name`` in the local model directory ``path`` (``KeyError`` without it)."""
    artifacts = _flavor(path).get("artifacts") or {}
    if name not in artifacts:
        raise KeyError(f"{path} has no {name!r} artifact")
    return path / artifacts[name]["path"]


def is_legacy(path: Path) -> bool:
    """True for a version whose shipped code is a copy of ``taxi_platform`` (logged before the package)."""
    code = _flavor(path).get("code")
    return bool(code) and (path / code / LEGACY_PACKAGE).is_dir()


def load_version(model_uri: str) -> Any:
    """Load a fare model version (``models:/…``, ``runs:/…`` or a local model directory) with its own code."""
    path = local_model_dir(model_uri)
    if not is_legacy(path):
        with _LOCK:  # two loads of one digest must not race on importing the shipped package
            return mlflow.pyfunc.load_model(str(path), suppress_warnings=True)
    with _LOCK:
        return _load_legacy(path)


# -- versions logged before the fare_model package -------------------------------------------------------
def _legacy_package(code_dir: Path) -> str:
    """Copy ``code_dir/taxi_platform`` under a private name with its imports rewritten; returns that name."""
    global _LEGACY_ROOT
    src = code_dir / LEGACY_PACKAGE
    files = sorted(p for p in src.rglob("*.py"))
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(src).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    name = f"{LEGACY_PREFIX}{h.hexdigest()[:16]}"
    if name in sys.modules:
        return name
    if _LEGACY_ROOT is None:
        _LEGACY_ROOT = Path(tempfile.mkdtemp(prefix="fare-model-legacy-"))
        sys.path.append(str(_LEGACY_ROOT))  # appended: the private names exist nowhere else
    dest = _LEGACY_ROOT / name
    if not dest.exists():
        pattern = re.compile(rf"\b{LEGACY_PACKAGE}\b")
        for p in files:
            out = dest / p.relative_to(src)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(pattern.sub(name, p.read_text(encoding="utf-8")), encoding="utf-8")
    return name


def _renamed(module: str, package: str) -> str:
    """``taxi_platform.lib.x`` -> ``<package>.lib.x`` (a legacy pickle's classes, in the version's own copy)."""
    if module == LEGACY_PACKAGE or module.startswith(LEGACY_PACKAGE + "."):
        return package + module[len(LEGACY_PACKAGE) :]
    return module


class _Renamed(pickle.Unpickler):
    def __init__(self, file: Any, package: str) -> None:
        super().__init__(file)
        self._package = package

    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(_renamed(module, self._package), name)


def _joblib_load(path: Path, package: str) -> Any:
    """``joblib.load`` with :class:`_Renamed` class resolution (the state of a models-from-code version)."""
    from joblib import numpy_pickle

    class Renamed(numpy_pickle.NumpyUnpickler):
        def find_class(self, module: str, name: str) -> Any:
            return super().find_class(_renamed(module, package), name)

    original = numpy_pickle.NumpyUnpickler
    numpy_pickle.NumpyUnpickler = Renamed  # joblib looks the class up per call; restored below (under _LOCK)
    try:
        return numpy_pickle.load(str(path))
    finally:
        numpy_pickle.NumpyUnpickler = original


def _load_legacy(path: Path) -> OwnCodeModel:
    import importlib

    flavor = _flavor(path)
    package = _legacy_package(path / flavor["code"])
    if "model_code_path" in flavor:  # models-from-code: an empty model filled from its fare_state artifact
        module = importlib.import_module(f"{package}.lib.fare_pyfunc")
        model = module.FareQuoteModel.from_code()
        state = _joblib_load(artifact_path(path, "fare_state"), package)
        if state.get("format") != 1:
            raise ValueError(f"legacy fare model state format {state.get('format')!r} is not 1")
        model.__setstate__({k: v for k, v in state.items() if k != "format"})
    else:  # a pickled python_model (cloudpickle by reference)
        with open(path / flavor["python_model"], "rb") as fh:
            model = _Renamed(fh, package).load()
    return OwnCodeModel(model, path)


# -- verification ----------------------------------------------------------------------------------------
def built_with(path: Path) -> dict[str, str]:
    """What a version records of the code it was built with (empty for versions logged before it was kept)."""
    meta = _flavor(path)["metadata"]
    return {k: str(meta[k]) for k in (CODE_TAG, FEATURES_TAG, TRAINING_TAG, STATE_TAG) if k in meta}


def verify_version(loaded: Any, model_uri: str, label: str = "") -> dict[str, Any]:
    """Re-price the version's probe quotes; raise :class:`VersionMismatchError` when a fare moved by > 1e-9.

    Returns what was checked (``probes``, ``max_abs_diff``, ``built_with``); a version logged before probes were
    recorded returns ``probes: 0``.
    """
    path = local_model_dir(model_uri)
    record_path = path / "artifacts" / f"{PROBE_ARTIFACT}.json"
    built = built_with(path)
    if not record_path.exists():
        return {"probes": 0, "max_abs_diff": None, "built_with": built}
    record = json.loads(record_path.read_text())
    quotes = pd.DataFrame(record["quotes"])
    expected = np.asarray(record["fares"], dtype=np.float64)
    inner = loaded.unwrap_python_model()
    got = np.asarray(
        inner.predict_quotes({c: quotes[c].to_numpy() for c in quotes.columns}), dtype=np.float64
    )
    diff = float(np.max(np.abs(got - expected))) if len(expected) else 0.0
    if len(got) != len(expected) or not diff <= TOLERANCE:
        shown = ", ".join(f"{k} {v}" for k, v in built.items()) or "no recorded code versions"
        raise VersionMismatchError(
            f"fare model {label or model_uri} ({shown}) prices its {len(expected)} probe quotes differently here "
            f"(max |Δ| ${diff:.6f}): the code or libraries loading it are not what it was validated with; "
            f"retrain its validation month with the installed code instead of serving it"
        )
    return {"probes": len(expected), "max_abs_diff": diff, "built_with": built}


def predict_frame(model_uri: str, quotes: pd.DataFrame) -> np.ndarray:
    """Load ``model_uri`` with its own code and price ``quotes`` (a DataFrame); returns a float array."""
    return np.asarray(load_version(model_uri).predict(quotes)["fare_amount"], dtype=np.float64)
