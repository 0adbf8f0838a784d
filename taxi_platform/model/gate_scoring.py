"""How the gate scores a version on a month: evaluation samples, scorers and the MAE cache in version tags.

Scoring is cheap to repeat: each (version, evaluation month, data fingerprint) MAE is cached as the model-version
tag ``mae.YYYY-MM`` = ``"<mae>|<fingerprint>"`` (MLflow tag keys may not contain ``@``), so every pair is scored
at most once; when the month's ``trip_features`` files change, the fingerprint no longer matches and the pair is
scored again. Evaluation samples are deterministic (hashed rows, fixed seed). The rule the scores feed is in
:mod:`taxi_platform.model.gate_rule`.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from taxi_platform.model.gate_slices import SliceMaes
from taxi_platform.model.registry_records import MonthModel
from taxi_platform.model.thread_limits import openmp_threads
from taxi_platform.model.version_tags import CONTRACT_TAG, MAX_TAG_VALUE, mae_tag, slices_tag

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from taxi_platform.lake.lake import Lake


# -- evaluation data and the MAE cache -------------------------------------------------------------------
class MonthEvaluation(Protocol):
    """A deterministic evaluation sample per month and a fingerprint of the data it comes from."""

    def fingerprint(self, month: str) -> str | None:
        """Changes whenever the sample would; None when the month has no data."""
        ...

    def sample(self, month: str) -> tuple[pd.DataFrame, np.ndarray]:
        """(raw quotes, true fares) of the month's evaluation sample."""
        ...


@dataclass
class LakeEvaluation:
    """Evaluation samples from the lake's ``trip_features``: the same hashed rows of a month on every call."""

    lake: Lake
    rows: int = 100_000
    seed: int = 0

    def fingerprint(self, month: str) -> str | None:
        from taxi_platform.model.training_sample import partition_fingerprint

        try:
            files = partition_fingerprint(self.lake, [month])
        except FileNotFoundError:
            return None
        return hashlib.sha256(f"{files}|rows={self.rows}|seed={self.seed}".encode()).hexdigest()[:16]

    def contract_stamps(self, month: str) -> dict[str, str | None]:
        """The ``contract`` stamp of each of the month's ``trip_features`` files (None: written before contracts)."""
        from taxi_platform.model.training_sample import feature_paths
        from taxi_platform.transform.contracts import stamped_versions

        return stamped_versions(self.lake, feature_paths(self.lake, [month]))

    def sample(self, month: str) -> tuple[pd.DataFrame, np.ndarray]:
        from taxi_platform.model.training_sample import TARGET, load_window, quotes_frame

        table = load_window(self.lake, [month], self.rows, self.seed)
        if table.num_rows == 0:
            raise ValueError(f"trip_features has no rows for {month}")
        return quotes_frame(table), np.asarray(table.column(TARGET).to_numpy(), dtype=np.float64)


def parse_mae_tag(value: str | None) -> tuple[float, str] | None:
    """``"<mae>|<fingerprint>"`` -> (mae, fingerprint); None if absent or malformed."""
    if not value or "|" not in value:
        return None
    number, fp = value.split("|", 1)
    try:
        return float(number), fp
    except ValueError:
        return None


def mae_of(model_uri: str, quotes, y_true: Sequence[float] | np.ndarray) -> float:
    """MAE of the registered model at ``model_uri`` (loaded with its own code) on raw ``quotes`` (a DataFrame)."""
    from taxi_platform.model.model_loading import predict_frame

    pred = predict_frame(model_uri, quotes)
    return float(np.mean(np.abs(pred - np.asarray(y_true, dtype=np.float64))))


class PyfuncScorer:
    """The default scorer: :func:`mae_of`, and the predictions the slice rule needs."""

    def __call__(self, model_uri: str, quotes: Any, y_true: Any) -> float:
        return mae_of(model_uri, quotes, y_true)

    def predictions(self, model_uri: str, quotes: Any) -> np.ndarray:
        from taxi_platform.model.model_loading import predict_frame

        return predict_frame(model_uri, quotes)


_LOADED_MODELS: OrderedDict[tuple[str, str], Any] = OrderedDict()
LOADED_MODELS_KEPT = 8
"""Registered versions kept loaded per process: a ranged fare_model run gates month after month against the same
champion and recent challengers; a registered version's model never changes."""


class GateScorer:
    """The gate's scorer: MAE of the registered model at a ``models:/`` URI on raw quotes, as
    :func:`mae_of` computes it, with predictions on ``threads`` OpenMP threads.

    Each (registry, URI) is loaded once per process and kept (the last :data:`LOADED_MODELS_KEPT`): a replay scores a
    champion on several months, and the months of a ranged run meet the same versions again.
    """

    def __init__(self, threads: int | None = None, registry_uri: str = "") -> None:
        self.threads = threads
        self.registry_uri = registry_uri

    def model(self, model_uri: str) -> Any:
        from taxi_platform.model.model_loading import load_version

        key = (self.registry_uri, model_uri)
        model = _LOADED_MODELS.get(key)
        if model is None:
            model = _LOADED_MODELS[key] = load_version(model_uri)
            while len(_LOADED_MODELS) > LOADED_MODELS_KEPT:
                _LOADED_MODELS.popitem(last=False)
        else:
            _LOADED_MODELS.move_to_end(key)
        return model

    def predictions(self, model_uri: str, quotes: Any) -> Any:
        import numpy as np

        model = self.model(model_uri)
        with openmp_threads(self.threads):
            return np.asarray(model.predict(quotes)["fare_amount"], dtype=np.float64)

    def __call__(self, model_uri: str, quotes: Any, y_true: Any) -> float:
        import numpy as np

        pred = self.predictions(model_uri, quotes)
        return float(np.mean(np.abs(pred - np.asarray(y_true, dtype=np.float64))))


class CachedMae:
    """``mae(model, month)`` for :func:`replay`: the version's ``mae.<month>`` tag if its fingerprint matches,
    else the registered artifact scored on the month's sample (and the tag written). :meth:`slices` does the
    same for the slice MAEs (tag ``slices.<month>`` = ``"<fingerprint>|<json>"``) when the scorer can return
    predictions (``scorer.predictions(uri, quotes)``); one prediction pass fills both.

    Before either, a version is checked against the month's data contract when the evaluation can tell it
    (``evaluation.contract_stamps(month)``, as :class:`LakeEvaluation` can): files stamped with another contract
    than the version's ``contract`` tag raise :class:`~taxi_platform.transform.contracts.ContractMismatchError`."""

    def __init__(self, client, model_name: str, evaluation: MonthEvaluation, scorer) -> None:
        self.client, self.model_name, self.evaluation, self.scorer = client, model_name, evaluation, scorer
        self.predictions = getattr(scorer, "predictions", None)
        self.fingerprints: dict[str, str | None] = {}
        self.samples: dict[str, tuple[Any, np.ndarray]] = {}
        self.known: dict[tuple[str, str], tuple[float, str]] = {}
        self.known_slices: dict[tuple[str, str], tuple[SliceMaes, str]] = {}
        self._zones = None
        self.stamps: dict[str, dict[str, str | None]] = {}
        self.scored = 0
        self.cached = 0

    def fingerprint(self, month: str) -> str | None:
        if month not in self.fingerprints:
            self.fingerprints[month] = self.evaluation.fingerprint(month)
        return self.fingerprints[month]

    def check_contract(self, model: MonthModel, month: str) -> None:
        """Refuse ``model`` on ``month`` when the month's files are stamped with another contract than its own."""
        stamps_of = getattr(self.evaluation, "contract_stamps", None)
        if stamps_of is None:
            return
        from taxi_platform.transform.contracts import require_model_contract

        if month not in self.stamps:
            self.stamps[month] = stamps_of(month)
        trained_on = model.tags.get(CONTRACT_TAG)
        require_model_contract(f"{self.model_name} v{model.version}", trained_on, {month: self.stamps[month]})

    def _cache(self, version: str, key: str, value: str, attempts: int = 3) -> None:
        """Write a cached MAE tag. Two gates running in parallel may score the same (version, month) and
        write the same tag at the same moment; a store that then reports a clash (SQLite's unique key on a
        concurrent insert) is asked again. The cache only saves work: if it still fails, scoring goes on."""
        from mlflow.exceptions import MlflowException

        if len(value) > MAX_TAG_VALUE:
            return  # too many slices for one tag: scored again next time, with the same result
        for attempt in range(attempts):
            try:
                self.client.set_model_version_tag(self.model_name, version, key, value)
                return
            except MlflowException as exc:
                if "UNIQUE constraint" not in str(exc) and "IntegrityError" not in str(exc):
                    raise
                time.sleep(0.05 * (attempt + 1))

    def _sample(self, month: str) -> tuple[Any, np.ndarray]:
        if month not in self.samples:
            self.samples[month] = self.evaluation.sample(month)
        return self.samples[month]

    def _score(self, model: MonthModel, month: str, fp: str) -> float:
        quotes, y = self._sample(month)
        uri = f"models:/{self.model_name}/{model.version}"
        if self.predictions is None:
            value = float(self.scorer(uri, quotes, y))
        else:
            from taxi_platform.model.gate_slices import encode, slice_maes

            pred = np.asarray(self.predictions(uri, quotes), dtype=np.float64)
            value = float(np.mean(np.abs(pred - np.asarray(y, dtype=np.float64))))
            if self._zones is None:
                from taxi_platform.ingest.zones import load_zone_table

                self._zones = load_zone_table()
            slices = slice_maes(quotes, y, pred, self._zones)
            self._cache(model.version, slices_tag(month), f"{fp}|{encode(slices)}")
            self.known_slices[(model.version, month)] = (slices, fp)
        # repr() round-trips the float exactly: a cached comparison decides exactly as a fresh one.
        self._cache(model.version, mae_tag(month), f"{value!r}|{fp}")
        self.known[(model.version, month)] = (value, fp)
        self.scored += 1
        return value

    def __call__(self, model: MonthModel, month: str) -> float | None:
        fp = self.fingerprint(month)
        if fp is None:
            return None
        self.check_contract(model, month)
        hit = self.known.get((model.version, month)) or parse_mae_tag(model.tags.get(mae_tag(month)))
        if hit is not None and hit[1] == fp:
            self.cached += 1
            return hit[0]
        return self._score(model, month, fp)

    def slices(self, model: MonthModel, month: str) -> SliceMaes | None:
        fp = self.fingerprint(month)
        if fp is None or self.predictions is None:
            return None
        self.check_contract(model, month)
        hit = self.known_slices.get((model.version, month)) or _parse_slices_tag(
            model.tags.get(slices_tag(month))
        )
        if hit is None or hit[1] != fp:
            self._score(model, month, fp)
            hit = self.known_slices[(model.version, month)]
        return hit[0]


def _parse_slices_tag(value: str | None) -> tuple[SliceMaes, str] | None:
    if not value or "|" not in value:
        return None
    from taxi_platform.model.gate_slices import decode

    fp, text = value.split("|", 1)
    try:
        return decode(text), fp
    except (ValueError, TypeError):
        return None
