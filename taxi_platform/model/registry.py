"""The champion/challenger gate of the ``taxi_fare_model`` registry (MLflow aliases; stages are not used).

The rule
--------
Every registered version carries the tags ``train_months`` (comma list ``YYYY-MM``) and ``validation_month``.
A month's model is the *latest* version registered for that validation month: a re-run or a republished month
supersedes the month's earlier version. A version tagged ``checks_failed`` (its asset checks failed) is never
champion and supersedes nothing: a failed re-run leaves the month's earlier model in place.

The champion is *defined* as the result of a chronological replay over the months' models:

1. the first month's model (by validation month) is champion;
2. for each next month's model C, it and the current champion H are scored on C's validation month, a month
   neither trained on (H's training ends before H's validation month, which is before C's; C validates on it);
3. C replaces H unless ``MAE(C) > MAE(H) * (1 + tolerance)`` (default tolerance 1 %): a fresher model that is
   as good, within the tolerance, wins; a challenger whose training data ends before H's is never promoted.

Because the gate replays the whole history every time, the run order (a reversed backfill, two partitions in
parallel, a republished old month) cannot change the result: the alias ends on the model a chronological run
would have chosen. Scoring is cheap to repeat: each (version, evaluation month, data fingerprint) MAE is cached
as the model-version tag ``mae.YYYY-MM`` = ``"<mae>|<fingerprint>"`` (MLflow tag keys may not contain ``@``),
so every pair is scored at most once; when the month's ``trip_features`` files change, the fingerprint no
longer matches and the pair is scored again. Evaluation samples are deterministic (hashed rows, fixed seed).

Before touching the registry the gate checks that it is reachable; if not it raises
:class:`RegistryUnavailableError` naming ``MLFLOW_TRACKING_URI`` and moves no alias.

This module is also where the champion is looked up: :func:`champion_version` (the version behind the alias, for
serving) and :func:`load_champion` (the version that served a given month, for monitoring), plus loading a
registered version as a predictor.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from taxi_platform.core.months import month_label, months_between, parse_month_labels
from taxi_platform.core.settings import MODEL_NAME
from taxi_platform.model.gate_slices import (
    DEFAULT_MIN_SUPPORT,
    DEFAULT_SLICE_TOLERANCE,
    SliceComparison,
    SliceMaes,
    compare,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from taxi_platform.lake.lake import Lake

CHAMPION = "champion"
CHALLENGER = "challenger"
DEFAULT_TOLERANCE = 0.01
MAE_TAG_PREFIX = "mae."
SLICES_TAG_PREFIX = "slices."
MAX_TAG_VALUE = 5000  # MLflow's limit on a model version tag's value
SHADOW_VERDICT_TAG = "shadow_verdict"  # pass | fail: the challenger's shadow quotes against the champion's
SHADOW_EVIDENCE_TAG = "shadow_evidence"  # month, quotes compared and both MAEs behind the verdict
MAX_REPLAYS = 5

# outcomes of one replay step
FIRST = "first"
PROMOTED = "promoted"
KEPT = "kept"
OLDER_TRAINING = "older_training"
NO_DATA = "no_evaluation_data"


class RegistryUnavailableError(RuntimeError):
    """The MLflow tracking/registry server cannot be reached."""


class NoChampionError(LookupError):
    """No version holds the champion alias (or the model is not registered yet)."""


class ChampionTagsError(ValueError):
    """A version lacks (or garbles) the tags fare_model sets, so it cannot be scored like a month's model."""


# -- the registry's month models -------------------------------------------------------------------------
@dataclass(frozen=True)
class MonthModel:
    """One registered version, as the gate sees it (from its tags)."""

    version: str
    validation_month: str
    train_months: tuple[str, ...]
    checks_failed: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def train_end(self) -> str:
        """The last month the version trained on ('' if the tag is empty)."""
        return max(self.train_months) if self.train_months else ""

    @property
    def eligible(self) -> bool:
        return not self.checks_failed

    @classmethod
    def from_version(cls, mv) -> MonthModel | None:
        """From an MLflow ``ModelVersion``; None without a ``validation_month`` tag (not a fare_model version)."""
        tags = dict(mv.tags or {})
        month = tags.get("validation_month", "")[:7]
        if not month:
            return None
        train = tuple(sorted(m.strip()[:7] for m in tags.get("train_months", "").split(",") if m.strip()))
        failed = tuple(c for c in tags.get("checks_failed", "").split(",") if c)
        return cls(str(mv.version), month, train, failed, tags)


def _list_versions(client, model_name: str) -> list:
    out, token = [], None
    while True:
        page = client.search_model_versions(f"name = '{model_name}'", page_token=token)
        out.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return out


def registered_models(client, model_name: str) -> list[MonthModel]:
    """Every version of ``model_name`` that has a ``validation_month`` tag (fare_model versions)."""
    out = [MonthModel.from_version(mv) for mv in _list_versions(client, model_name)]
    return [m for m in out if m is not None]


def month_models(versions: Iterable[MonthModel]) -> dict[str, MonthModel]:
    """Validation month -> that month's model: its latest registered version that passed its checks.

    A re-run or republished month supersedes the month's earlier version; a version that failed its checks
    supersedes nothing (a failed re-run leaves the month's earlier model in place).
    """
    latest: dict[str, MonthModel] = {}
    for model in versions:
        if not model.eligible:
            continue
        held = latest.get(model.validation_month)
        if held is None or int(model.version) > int(held.version):
            latest[model.validation_month] = model
    return latest


def _snapshot(models: Mapping[str, MonthModel]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((m, v.version) for m, v in models.items()))


# -- the replay ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReplayStep:
    """What the replay decided when it reached one month's model."""

    version: str
    validation_month: str
    outcome: str  # first | promoted | kept | older_training | no_evaluation_data
    champion_before: str | None
    champion_before_month: str | None
    challenger_mae: float | None
    champion_mae: float | None
    reason: str
    worse_slices: tuple[str, ...] = ()  # material slices where the challenger lost by more than the tolerance

    @property
    def champion_after(self) -> str | None:
        return self.version if self.outcome in (FIRST, PROMOTED) else self.champion_before


@dataclass
class SliceRule:
    """The slice part of the gate: ``scores(model, month)`` gives a version's slice MAEs on the month."""

    scores: Callable[[MonthModel, str], SliceMaes | None]
    tolerance: float = DEFAULT_SLICE_TOLERANCE
    min_support: int = DEFAULT_MIN_SUPPORT

    def table(self, c: MonthModel, h: MonthModel, month: str) -> list[SliceComparison]:
        cs, hs = self.scores(c, month), self.scores(h, month)
        if cs is None or hs is None:
            return []
        return compare(cs, hs, self.tolerance, self.min_support)

    def worse(self, c: MonthModel, h: MonthModel, month: str) -> list[SliceComparison]:
        return [row for row in self.table(c, h, month) if row.worse]


def replay(
    models: Iterable[MonthModel],
    mae: Callable[[MonthModel, str], float | None],
    tolerance: float = DEFAULT_TOLERANCE,
    slices: SliceRule | None = None,
    require_shadow: bool = False,
) -> tuple[MonthModel | None, list[ReplayStep]]:
    """Replay the months' eligible models in validation-month order; the champion and one step per model.

    ``mae(model, month)`` scores ``model`` on ``month``'s evaluation sample (None: the month has no data).
    With ``slices``, a challenger within the overall tolerance is still kept out when it is worse than the champion
    on a material slice (:mod:`taxi_platform.model.gate_slices`). With ``require_shadow``, a challenger that passes
    is still kept out until its shadow quotes passed (version tag ``shadow_verdict`` = ``pass``).
    """
    champion: MonthModel | None = None
    steps: list[ReplayStep] = []
    for c in sorted((m for m in models if m.eligible), key=lambda m: (m.validation_month, int(m.version))):
        h = champion
        tag = f"v{c.version} ({c.validation_month})"
        if h is None:
            steps.append(ReplayStep(c.version, c.validation_month, FIRST, None, None, None, None,
                                    f"{tag} is the first month's model: champion"))  # fmt: skip
            champion = c
            continue
        htag = f"v{h.version} ({h.validation_month})"
        if c.train_end < h.train_end:
            steps.append(ReplayStep(
                c.version, c.validation_month, OLDER_TRAINING, h.version, h.validation_month, None, None,
                f"{tag} trained on data ending {c.train_end or 'nowhere'}, before champion {htag}'s "
                f"({h.train_end}): registered, never promoted",
            ))  # fmt: skip
            continue
        month = c.validation_month
        c_mae = mae(c, month)
        h_mae = mae(h, month) if c_mae is not None else None
        if c_mae is None or h_mae is None:
            steps.append(ReplayStep(
                c.version, month, NO_DATA, h.version, h.validation_month, None, None,
                f"{tag}: trip_features has no data for {month} to score it on; champion {htag} kept",
            ))  # fmt: skip
            continue
        limit = h_mae * (1.0 + tolerance)
        worse = slices.worse(c, h, month) if slices is not None and c_mae <= limit else []
        verdict = c.tags.get(SHADOW_VERDICT_TAG)
        if require_shadow and c_mae <= limit and not worse and verdict != "pass":
            steps.append(ReplayStep(
                c.version, month, KEPT, h.version, h.validation_month, c_mae, h_mae,
                f"{tag} MAE {c_mae:.4f} on {month} passes the offline gate against champion {htag}'s {h_mae:.4f}, "
                f"but its shadow verdict is {verdict or 'not in yet'} (require_shadow): champion {htag} kept",
            ))  # fmt: skip
        elif worse:
            shown = "; ".join(f"{w.slice} {w.challenger_mae:.4f} vs {w.champion_mae:.4f} ({w.trips} trips)"
                              for w in worse[:5])  # fmt: skip
            steps.append(ReplayStep(
                c.version, month, KEPT, h.version, h.validation_month, c_mae, h_mae,
                f"{tag} MAE {c_mae:.4f} on {month} is within {tolerance:.2%} of champion {htag}'s {h_mae:.4f}, "
                f"but worse by more than {slices.tolerance:.2%} on {len(worse)} slice(s): {shown}; "
                f"champion {htag} kept",
                tuple(w.slice for w in worse),
            ))  # fmt: skip
        elif c_mae > limit:
            steps.append(ReplayStep(
                c.version, month, KEPT, h.version, h.validation_month, c_mae, h_mae,
                f"{tag} MAE {c_mae:.4f} on {month} is worse than champion {htag}'s {h_mae:.4f} by more than "
                f"{tolerance:.2%} (limit {limit:.4f}); champion {htag} kept",
            ))  # fmt: skip
        else:
            steps.append(ReplayStep(
                c.version, month, PROMOTED, h.version, h.validation_month, c_mae, h_mae,
                f"{tag} MAE {c_mae:.4f} on {month} is within {tolerance:.2%} of (or better than) champion "
                f"{htag}'s {h_mae:.4f} (limit {limit:.4f}): the fresher model replaces it",
            ))  # fmt: skip
            champion = c
    return champion, steps


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

    def sample(self, month: str) -> tuple[pd.DataFrame, np.ndarray]:
        from taxi_platform.model.training_sample import TARGET, load_window, quotes_frame

        table = load_window(self.lake, [month], self.rows, self.seed)
        if table.num_rows == 0:
            raise ValueError(f"trip_features has no rows for {month}")
        return quotes_frame(table), np.asarray(table.column(TARGET).to_numpy(), dtype=np.float64)


def mae_tag(month: str) -> str:
    return f"{MAE_TAG_PREFIX}{month[:7]}"


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


def slices_tag(month: str) -> str:
    return f"{SLICES_TAG_PREFIX}{month[:7]}"


class PyfuncScorer:
    """The default scorer: :func:`mae_of`, and the predictions the slice rule needs."""

    def __call__(self, model_uri: str, quotes: Any, y_true: Any) -> float:
        return mae_of(model_uri, quotes, y_true)

    def predictions(self, model_uri: str, quotes: Any) -> np.ndarray:
        from taxi_platform.model.model_loading import predict_frame

        return predict_frame(model_uri, quotes)


class _CachedMae:
    """``mae(model, month)`` for :func:`replay`: the version's ``mae.<month>`` tag if its fingerprint matches,
    else the registered artifact scored on the month's sample (and the tag written). :meth:`slices` does the
    same for the slice MAEs (tag ``slices.<month>`` = ``"<fingerprint>|<json>"``) when the scorer can return
    predictions (``scorer.predictions(uri, quotes)``); one prediction pass fills both."""

    def __init__(self, client, model_name: str, evaluation: MonthEvaluation, scorer) -> None:
        self.client, self.model_name, self.evaluation, self.scorer = client, model_name, evaluation, scorer
        self.predictions = getattr(scorer, "predictions", None)
        self.fingerprints: dict[str, str | None] = {}
        self.samples: dict[str, tuple[Any, np.ndarray]] = {}
        self.known: dict[tuple[str, str], tuple[float, str]] = {}
        self.known_slices: dict[tuple[str, str], tuple[SliceMaes, str]] = {}
        self._zones = None
        self.scored = 0
        self.cached = 0

    def fingerprint(self, month: str) -> str | None:
        if month not in self.fingerprints:
            self.fingerprints[month] = self.evaluation.fingerprint(month)
        return self.fingerprints[month]

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
        hit = self.known.get((model.version, month)) or parse_mae_tag(model.tags.get(mae_tag(month)))
        if hit is not None and hit[1] == fp:
            self.cached += 1
            return hit[0]
        return self._score(model, month, fp)

    def slices(self, model: MonthModel, month: str) -> SliceMaes | None:
        fp = self.fingerprint(month)
        if fp is None or self.predictions is None:
            return None
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


# -- the gate --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GateDecision:
    promoted: bool  # the challenger holds the champion alias after the gate
    reason: str
    model_name: str
    challenger_version: str
    challenger_validation_month: str
    champion_version: str | None  # holder of the champion alias after the decision
    champion_validation_month: str | None
    previous_champion_version: str | None  # holder before this gate ran
    evaluation_month: str | None  # the month the challenger's own comparison was scored on
    challenger_mae: float | None
    champion_mae: float | None  # the champion it was compared with, on evaluation_month
    compared_with_version: str | None
    tolerance: float
    newest_validation_month: str | None
    champion_age_months: int | None  # newest registered validation month - champion's validation month
    champion_age_vs_partition_months: int | None  # challenger's validation month - champion's
    replays: int
    scored_pairs: int
    cached_pairs: int
    steps: list[dict[str, Any]]
    slice_table: list[dict[str, Any]] = field(
        default_factory=list
    )  # challenger vs compared champion, per slice
    slice_tolerance: float | None = None
    slice_min_support: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _unavailable(uri: str, detail: object) -> RegistryUnavailableError:
    return RegistryUnavailableError(
        f"MLflow registry at MLFLOW_TRACKING_URI={uri} is unreachable ({detail}). Start the tracking server or "
        "set MLFLOW_TRACKING_URI to a reachable server (or unset it to use the local sqlite store); "
        "no model alias was changed."
    )


def ensure_reachable(tracking_uri: str, timeout: float = 5.0) -> None:
    """Raise :class:`RegistryUnavailableError` unless an ``http(s)`` tracking server answers within ``timeout``.

    Any HTTP answer (even 401/403) counts as reachable: this checks the network path, not credentials.
    Local stores (``sqlite:``, ``file:``, paths) are always reachable.
    """
    if not _is_http(tracking_uri):
        return
    import requests

    url = tracking_uri.rstrip("/") + "/api/2.0/mlflow/registered-models/search"
    try:
        requests.get(url, params={"max_results": 1}, timeout=timeout)
    except requests.RequestException as exc:
        raise _unavailable(tracking_uri, f"{type(exc).__name__}: {str(exc)[:200]}") from exc


def current_champion(client, model_name: str):
    """The ``ModelVersion`` holding the champion alias, or None if there is none (or no model yet)."""
    return version_by_alias(client, model_name, CHAMPION)


def version_by_alias(client, model_name: str, alias: str):
    """The ``ModelVersion`` holding ``alias``, or None if there is none (or no model yet)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") in (
            "RESOURCE_DOES_NOT_EXIST",
            "INVALID_PARAMETER_VALUE",
            "NOT_FOUND",
        ):
            return None
        raise


def _set_alias(client, model_name: str, alias: str, version: str | int, attempts: int = 5) -> None:
    """``set_registered_model_alias``, retried when a concurrent gate created the same alias first.

    MLflow's SQL store sets an alias with a look-up then an INSERT; on PostgreSQL two gates doing it at once make
    one of them fail with a unique-key violation (SQLite serialises the writers instead). The retry finds the
    row and updates it, so this write still lands after the other one, which keeps the last-writer argument of
    :func:`_settle`.
    """
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            client.set_registered_model_alias(model_name, alias, version)
            return
        except MlflowException as exc:
            text = str(exc)
            if attempt + 1 == attempts or not ("UniqueViolation" in text or "duplicate key" in text
                                               or "UNIQUE constraint" in text):  # fmt: skip
                raise
            time.sleep(0.05 * (attempt + 1))


def _settle(
    client,
    model_name: str,
    mae,
    tolerance: float,
    max_replays: int,
    slices: SliceRule | None = None,
    require_shadow: bool = False,
):
    """Replay and set the alias until the registry's month models stop changing under us (bounded).

    Why the last writer is right: every gate registers its version (with its tags) *before* it lists the
    registry; it then replays, sets the alias, lists again and stops only if that second listing equals the one
    it replayed. Take the gate whose alias write is the last one. Suppose its replay missed a month model v. Its
    second listing equalled its first, so v (or v's tags) appeared after that second listing, hence after this
    gate's alias write. v's own gate lists the registry after that and writes the alias later still, i.e. after
    the "last" write: a contradiction. So the last alias write comes from a replay over the full set of month
    models, and the replay is a function of that set alone (same tags, same cached MAEs, same rule), so the alias
    ends where a chronological run would put it. This needs a registry whose writes are seen by every later
    read (one database: sqlite or the tracking server's). ``max_replays`` only bounds a gate racing a stream of
    new versions; the gate of the newest version settles it.
    """
    rounds = 0
    while True:
        rounds += 1
        versions = registered_models(client, model_name)
        models = month_models(versions)
        champion, steps = replay(models.values(), mae, tolerance, slices, require_shadow)
        if champion is not None:
            _set_alias(client, model_name, CHAMPION, champion.version)
        after = month_models(registered_models(client, model_name))
        if _snapshot(after) == _snapshot(models) or rounds >= max_replays:
            return versions, models, champion, steps, rounds


def gate_challenger(
    client,
    model_name: str,
    challenger_version: str | int,
    evaluation: MonthEvaluation,
    tolerance: float = DEFAULT_TOLERANCE,
    tracking_uri: str | None = None,
    scorer: Callable[[str, Any, Any], float] | None = None,
    max_replays: int = MAX_REPLAYS,
    slice_tolerance: float | None = DEFAULT_SLICE_TOLERANCE,
    slice_min_support: int = DEFAULT_MIN_SUPPORT,
    require_shadow: bool = False,
) -> GateDecision:
    """Alias ``challenger_version`` as challenger, replay the months' models, and point champion at the winner.

    ``client`` is an ``MlflowClient``; the version must carry ``validation_month`` and ``train_months`` tags (and
    ``checks_failed`` if any check failed). Models are scored from ``models:/<name>/<version>``, the registered
    artifacts, exactly what will be served. The decision describes the challenger's fate in the replay.

    Slices: with ``slice_tolerance`` set (``None`` turns the rule off) and a scorer that can return predictions
    (the default :class:`PyfuncScorer` and ``model_run.GateScorer`` can), a challenger within the overall
    tolerance is refused when it is worse than the champion by more than ``slice_tolerance`` on any slice with at
    least ``slice_min_support`` evaluation trips.
    """
    from mlflow.exceptions import MlflowException

    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    uri = tracking_uri or client.tracking_uri
    ensure_reachable(uri)
    version = str(challenger_version)
    try:
        me = MonthModel.from_version(client.get_model_version(model_name, version))
        if me is None:
            raise ValueError(
                f"{model_name} v{version} has no validation_month tag: the gate cannot place it in the replay"
            )
        _set_alias(client, model_name, CHALLENGER, version)
        before = current_champion(client, model_name)
        mae = _CachedMae(client, model_name, evaluation, scorer if scorer is not None else PyfuncScorer())
        rule = None
        if slice_tolerance is not None and mae.predictions is not None:
            rule = SliceRule(mae.slices, slice_tolerance, slice_min_support)
        versions, models, champion, steps, rounds = _settle(
            client, model_name, mae, tolerance, max_replays, rule, require_shadow
        )
    except MlflowException as exc:
        text = str(exc)
        if "Max retries exceeded" in text or "Connection" in text or "timed out" in text.lower():
            raise _unavailable(uri, text[:200]) from exc
        raise
    newest = max((v.validation_month for v in versions), default=None)
    decision = _decision(
        model_name, me, models, newest, champion, steps, before, tolerance, rounds, mae.scored, mae.cached
    )
    mine = next((m for m in models.values() if m.version == version), None)
    compared = models.get(next((s.champion_before_month for s in steps if s.version == version), None) or "")
    if rule is not None and mine is not None and compared is not None:
        table = [row.as_row() for row in rule.table(mine, compared, mine.validation_month)]
        decision = replace(decision, slice_table=table, slice_tolerance=rule.tolerance,
                           slice_min_support=rule.min_support)  # fmt: skip
    return decision


def _decision(
    model_name, me: MonthModel, models, newest, champion, steps, before, tolerance, rounds, scored, cached
):
    version = me.version
    mine = next((s for s in steps if s.version == version), None)
    holder = models.get(me.validation_month)
    promoted = champion is not None and champion.version == version
    ctag = f"v{champion.version} ({champion.validation_month})" if champion is not None else "none"
    if me.checks_failed:
        reason = (f"v{version} failed {', '.join(me.checks_failed)}: registered, never champion; "
                  f"champion {ctag}")  # fmt: skip
    elif holder is not None and holder.version != version:
        reason = (f"v{version} was superseded by v{holder.version}, registered later for the same month "
                  f"{me.validation_month}; champion {ctag}")  # fmt: skip
    elif champion is not None and not promoted and me.train_end < champion.train_end:
        reason = (f"v{version} trained on data ending {me.train_end or 'nowhere'}, before champion {ctag}'s "
                  f"({champion.train_end}): registered, never promoted")  # fmt: skip
    elif mine is None:
        reason = f"v{version} took no part in the replay; champion {ctag}"
    elif promoted:
        reason = f"{mine.reason}; v{version} is champion"
    elif mine.outcome in (FIRST, PROMOTED):
        reason = f"{mine.reason}; a later month's model then took over: champion {ctag}"
    else:
        reason = mine.reason if champion is None or mine.champion_after == champion.version else (
            f"{mine.reason}; champion now {ctag}")  # fmt: skip
    return GateDecision(
        promoted=promoted,
        reason=reason,
        model_name=model_name,
        challenger_version=version,
        challenger_validation_month=me.validation_month,
        champion_version=champion.version if champion is not None else None,
        champion_validation_month=champion.validation_month if champion is not None else None,
        previous_champion_version=str(before.version) if before is not None else None,
        evaluation_month=mine.validation_month
        if mine is not None and mine.challenger_mae is not None
        else None,
        challenger_mae=mine.challenger_mae if mine is not None else None,
        champion_mae=mine.champion_mae if mine is not None else None,
        compared_with_version=mine.champion_before if mine is not None else None,
        tolerance=float(tolerance),
        newest_validation_month=newest,
        champion_age_months=months_between(champion.validation_month, newest)
        if champion and newest
        else None,
        champion_age_vs_partition_months=(
            months_between(champion.validation_month, me.validation_month) if champion is not None else None
        ),
        replays=rounds,
        scored_pairs=scored,
        cached_pairs=cached,
        steps=[asdict(s) for s in steps],
    )


# -- champion lookup -------------------------------------------------------------------------------------
# The version tags fare_model sets on every version it registers (defs/model/); monitoring reads exactly these.
TRAIN_MONTHS_TAG = "train_months"
VALIDATION_MONTH_TAG = "validation_month"
VALIDATION_MAE_TAG = "validation_mae"
FAMILY_TAG = "family"
INTERVAL_COVERAGE_TAG = "interval_coverage"
PROMOTED_TAG = "promoted"
DATA_SOURCE_TAG = "data_source"


def _client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


@dataclass(frozen=True)
class RegisteredVersion:
    """A registered version as serving and monitoring load it: its pinned URI, training run and tags."""

    name: str
    version: str
    run_id: str  # '' when the version was registered without a run
    source: str  # the artifact location MLflow recorded
    tags: Mapping[str, str]

    @property
    def pinned_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def _registered(client, mv) -> RegisteredVersion:
    tags = dict(mv.tags or {})
    if mv.run_id and DATA_SOURCE_TAG not in tags:
        # A version registered outside fare_model (a sample champion) records its data source on its run only.
        from mlflow.exceptions import MlflowException

        try:
            run_tags = client.get_run(mv.run_id).data.tags
        except MlflowException:
            run_tags = {}
        if DATA_SOURCE_TAG in run_tags:
            tags[DATA_SOURCE_TAG] = run_tags[DATA_SOURCE_TAG]
    return RegisteredVersion(
        name=str(mv.name),
        version=str(mv.version),
        run_id=str(mv.run_id or ""),
        source=str(mv.source),
        tags=tags,
    )


def _no_champion(model_name: str, tracking_uri: str) -> NoChampionError:
    return NoChampionError(
        f"no champion registered yet ({model_name}@{CHAMPION} is not in the MLflow registry at {tracking_uri}): "
        "materialise fare_model first (or run `taxi-platform demo`) so a version is registered and promoted"
    )


def aliased_version(tracking_uri: str, alias: str, model_name: str = MODEL_NAME) -> RegisteredVersion | None:
    """The version holding ``alias`` (e.g. ``challenger``), or None when no version holds it."""
    client = _client(tracking_uri)
    mv = version_by_alias(client, model_name, alias)
    return None if mv is None else _registered(client, mv)


def champion_version(tracking_uri: str, model_name: str = MODEL_NAME) -> RegisteredVersion:
    """The version holding the ``champion`` alias; :class:`NoChampionError` when there is none yet."""
    client = _client(tracking_uri)
    mv = current_champion(client, model_name)
    if mv is None:
        raise _no_champion(model_name, tracking_uri)
    return _registered(client, mv)


@dataclass(frozen=True)
class ChampionInfo:
    """The version a month is scored with, and what fare_model recorded about it."""

    name: str
    version: str
    run_id: str
    train_months: tuple[str, ...]
    validation_mae: float | None
    validation_month: str | None
    family: str | None
    alias_version: str  # the version holding the champion alias at lookup time
    note: str = ""  # why a version other than the alias holder was chosen
    interval_coverage: float | None = None  # nominal coverage of its fare ranges (None: no ranges)

    @property
    def pinned_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "run_id": self.run_id,
            "uri": self.pinned_uri,
            "champion_alias_version": self.alias_version,
            "train_months": list(self.train_months),
            "validation_mae": self.validation_mae,
            "validation_month": self.validation_month,
            "family": self.family,
            "note": self.note,
            "interval_coverage": self.interval_coverage,
        }


def _tag(tags: Mapping[str, str], key: str) -> str | None:
    value = tags.get(key)
    return None if value in (None, "") else str(value)


def _number(registered: RegisteredVersion, key: str) -> float | None:
    value = _tag(registered.tags, key)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise ChampionTagsError(
            f"{registered.name} version {registered.version}: tag {key}={value!r} is not a number"
        ) from None


def _validation_month(tags: Mapping[str, str]) -> str | None:
    value = _tag(tags, VALIDATION_MONTH_TAG)
    return month_label(value) if value else None


def describe_version(registered: RegisteredVersion, alias_version: str, note: str = "") -> ChampionInfo:
    """What fare_model's version tags say about ``registered``; :class:`ChampionTagsError` without a window."""
    raw_months = _tag(registered.tags, TRAIN_MONTHS_TAG)
    if raw_months is None:
        raise ChampionTagsError(
            f"{registered.name} version {registered.version} records no training window: expected the version tag "
            f"{TRAIN_MONTHS_TAG!r} (e.g. '2024-01,2024-02'), which fare_model sets. Re-register it by materialising "
            "fare_model."
        )
    try:
        months = parse_month_labels(raw_months, TRAIN_MONTHS_TAG)
        validation_month = _validation_month(registered.tags)
    except ValueError as exc:
        raise ChampionTagsError(f"{registered.name} version {registered.version}: {exc}") from None
    return ChampionInfo(
        name=registered.name,
        version=registered.version,
        run_id=registered.run_id,
        train_months=months,
        validation_mae=_number(registered, VALIDATION_MAE_TAG),
        validation_month=validation_month,
        family=_tag(registered.tags, FAMILY_TAG),
        alias_version=alias_version,
        note=note,
        interval_coverage=_number(registered, INTERVAL_COVERAGE_TAG),
    )


def load_champion(tracking_uri: str, month: str | None = None, model_name: str = MODEL_NAME) -> ChampionInfo:
    """The version to score ``month`` with: the one that was serving during that month.

    That is the champion when it was validated on an earlier month (the usual case). fare_model for month M
    validates on M itself, so once it has run the champion may have been chosen *on* M, and scoring it on M would
    compare M's MAE with itself. Then the newest version the gate promoted with a validation month before M (the
    champion before it) is scored, and :attr:`ChampionInfo.note` says so; without one, the champion is scored
    anyway and the note says its MAE is not out of time.

    Raises :class:`NoChampionError` before the first champion and :class:`ChampionTagsError` when the chosen
    version does not record its training window.
    """
    client = _client(tracking_uri)
    champion = current_champion(client, model_name)
    if champion is None:
        raise _no_champion(model_name, tracking_uri)
    alias_version = str(champion.version)
    validated = _validation_month(dict(champion.tags or {}))
    wanted = month_label(month) if month else None
    if wanted is None or validated is None or validated < wanted:
        return describe_version(_registered(client, champion), alias_version)
    earlier = [
        (served, mv)
        for mv in _list_versions(client, model_name)
        if str((mv.tags or {}).get(PROMOTED_TAG, "")).lower() == "true"
        and (served := _validation_month(dict(mv.tags or {}))) is not None
        and served < wanted
    ]
    if earlier:
        _, chosen = max(earlier, key=lambda pair: (pair[0], int(pair[1].version)))
        note = (
            f"champion v{alias_version} was validated on {validated}, not before {wanted}; scored v{chosen.version}, "
            f"the newest version promoted with a validation month before {wanted} (the one serving during {wanted})"
        )
        return describe_version(_registered(client, chosen), alias_version, note)
    note = (
        f"champion v{alias_version} was validated on {validated} and no earlier promoted version exists: "
        f"its MAE on {wanted} is not an out-of-time figure"
    )
    return describe_version(_registered(client, champion), alias_version, note)


# -- registered versions as predictors -------------------------------------------------------------------
def _use_registry(tracking_uri: str) -> None:
    # mlflow.pyfunc.load_model resolves models:/ URIs through MLflow's global URIs, hence both setters.
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)


def load_predictor(
    tracking_uri: str, model_uri: str
) -> tuple[Callable[[pd.DataFrame], pd.DataFrame], dict[str, str]]:
    """``(predict, quote column types)`` of the registered model at ``model_uri``, loaded with its own code.

    The types come from the model's signature, so quotes are typed the way that version expects. MLflow's
    check of the model's pip requirements against this environment is skipped: it only warns, and reading
    every installed distribution's metadata for it took a third of the load.
    """
    from taxi_platform.model.model_loading import load_version

    _use_registry(tracking_uri)
    model = load_version(model_uri)
    schema = model.metadata.get_input_schema()
    types: dict[str, str] = {}
    if schema is not None and schema.has_input_names():
        types = {spec.name: getattr(spec.type, "name", str(spec.type)) for spec in schema.inputs}
    return model.predict, types


def version_pricer(
    tracking_uri: str, warn: Callable[[str], None], model_name: str = MODEL_NAME
) -> Callable[[str, pd.DataFrame], pd.DataFrame | None]:
    """``price(version, quotes)``: the pyfunc output of ``model_name`` version ``version``, None if it won't load.

    A logged quote may name a version from another registry or one since deleted; its quote then keeps no
    range (``warn`` says why) instead of failing the month.
    """
    from taxi_platform.model.model_loading import load_version

    _use_registry(tracking_uri)

    def price(version: str, quotes: pd.DataFrame) -> pd.DataFrame | None:
        try:
            model = load_version(f"models:/{model_name}/{version}")
        except Exception as exc:
            warn(f"cannot load {model_name} v{version} to re-price its quotes' ranges: {exc}")
            return None
        return model.predict(quotes)

    return price


def record_shadow_verdict(
    tracking_uri: str, version: str, verdict: str, evidence: Mapping[str, Any], model_name: str = MODEL_NAME
) -> None:
    """Tag ``version`` with its shadow verdict (``pass``/``fail``) and the figures behind it; the gate reads it
    when ``require_shadow`` is on (the next ``fare_model`` run's replay promotes a passing challenger)."""
    import json

    client = _client(tracking_uri)
    client.set_model_version_tag(
        model_name, version, SHADOW_EVIDENCE_TAG, json.dumps(dict(evidence))[:MAX_TAG_VALUE]
    )
    client.set_model_version_tag(model_name, version, SHADOW_VERDICT_TAG, verdict)
