"""The champion/challenger gate of the ``taxi_fare_model`` registry (MLflow aliases; stages are not used).

Every new version gets the ``challenger`` alias. It takes ``champion`` only if, scored on the same
validation quotes, its MAE beats the current champion's by more than ``min_improvement`` dollars (the
champion is re-scored by loading ``models:/taxi_fare_model@champion``, so an older model is judged on the
new month, not on the month it was trained for). With no champion yet, a challenger that passed its checks
is promoted. The decision comes back as a :class:`GateDecision`.

Before touching the registry the gate checks that it is reachable; if not it raises
:class:`RegistryUnavailableError` naming ``MLFLOW_TRACKING_URI`` and moves no alias.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

CHAMPION = "champion"
CHALLENGER = "challenger"


class RegistryUnavailableError(RuntimeError):
    """The MLflow tracking/registry server cannot be reached."""


@dataclass(frozen=True)
class GateDecision:
    promoted: bool
    reason: str
    model_name: str
    challenger_version: str
    champion_version: str | None  # holder of the champion alias after the decision
    previous_champion_version: str | None
    challenger_mae: float | None
    champion_mae: float | None  # previous champion on the same quotes
    min_improvement: float
    scored_rows: int

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
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") in (
            "RESOURCE_DOES_NOT_EXIST",
            "INVALID_PARAMETER_VALUE",
            "NOT_FOUND",
        ):
            return None
        raise


def mae_of(model_uri: str, quotes, y_true: Sequence[float] | np.ndarray) -> float:
    """MAE of the pyfunc model at ``model_uri`` on raw ``quotes`` (a DataFrame)."""
    import mlflow.pyfunc

    pred = np.asarray(mlflow.pyfunc.load_model(model_uri).predict(quotes)["fare_amount"], dtype=np.float64)
    return float(np.mean(np.abs(pred - np.asarray(y_true, dtype=np.float64))))


def gate_challenger(
    client,
    model_name: str,
    challenger_version: str | int,
    quotes,
    y_true: Sequence[float] | np.ndarray,
    min_improvement: float = 0.0,
    checks_passed: bool = True,
    failed_checks: Sequence[str] = (),
    tracking_uri: str | None = None,
    scorer: Callable[[str, Any, Any], float] = mae_of,
    attempts: int = 3,
) -> GateDecision:
    """Alias ``challenger_version`` as challenger, score it and the champion on ``quotes``, promote if better.

    ``client`` is an ``MlflowClient``. The champion is re-scored from ``models:/<name>@champion``; the
    challenger from ``models:/<name>/<version>`` (the registered artifact, exactly what will be served).
    A challenger that failed its checks (``checks_passed=False``) is never promoted. If another run moves
    the champion alias while this one is scoring, the comparison is repeated against the new champion.
    """
    from mlflow.exceptions import MlflowException

    uri = tracking_uri or client.tracking_uri
    ensure_reachable(uri)
    version = str(challenger_version)
    y = np.asarray(y_true, dtype=np.float64)
    if len(y) == 0 or len(y) != len(quotes):
        raise ValueError(
            f"gate needs quotes and fares of equal, non-zero length; got {len(quotes)} and {len(y)}"
        )
    try:
        client.get_model_version(model_name, version)  # fails early if the version does not exist
        client.set_registered_model_alias(model_name, CHALLENGER, version)
        challenger_mae = scorer(f"models:/{model_name}/{version}", quotes, y)

        def decide(champion) -> tuple[bool, str, float | None]:
            if not checks_passed:
                failed = ", ".join(failed_checks) or "asset checks"
                return False, f"challenger v{version} failed {failed}; champion unchanged", None
            if champion is None:
                return True, f"no champion yet: v{version} (MAE {challenger_mae:.4f}) becomes champion", None
            if str(champion.version) == version:
                return False, f"v{version} is already champion", challenger_mae
            champion_mae = scorer(f"models:/{model_name}@{CHAMPION}", quotes, y)
            gain = champion_mae - challenger_mae
            if gain > min_improvement:
                return (
                    True,
                    f"v{version} MAE {challenger_mae:.4f} beats champion v{champion.version} MAE "
                    f"{champion_mae:.4f} by {gain:.4f} > {min_improvement:.4f}",
                    champion_mae,
                )
            return (
                False,
                f"v{version} MAE {challenger_mae:.4f} does not beat champion v{champion.version} MAE "
                f"{champion_mae:.4f} by more than {min_improvement:.4f}; champion unchanged",
                champion_mae,
            )

        for attempt in range(max(1, attempts)):
            champion = current_champion(client, model_name)
            promoted, reason, champion_mae = decide(champion)
            latest = current_champion(client, model_name)
            if (latest and latest.version) == (champion and champion.version) or attempt == attempts - 1:
                break  # nobody moved the alias while we were scoring
            time.sleep(0.1)
        previous = champion.version if champion is not None else None
        if promoted:
            client.set_registered_model_alias(model_name, CHAMPION, version)
        holder = current_champion(client, model_name)
    except MlflowException as exc:
        text = str(exc)
        if "Max retries exceeded" in text or "Connection" in text or "timed out" in text.lower():
            raise _unavailable(uri, text[:200]) from exc
        raise
    return GateDecision(
        promoted=promoted,
        reason=reason,
        model_name=model_name,
        challenger_version=version,
        champion_version=str(holder.version) if holder is not None else None,
        previous_champion_version=str(previous) if previous is not None else None,
        challenger_mae=challenger_mae,
        champion_mae=champion_mae,
        min_improvement=float(min_improvement),
        scored_rows=int(len(y)),
    )
