"""fare_model and drift_report wait for an unreachable MLflow tracking server at their start, by Dagster retries,
then fail clearly.

Once a step's MLflow run exists, MLflow's own HTTP retries carry every request over a short outage (by default 7
retries, waits of 0, 4, 8, 16, 32, 64 and 120 s: about four minutes per request; ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``
and ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`` change them). The step's first contact is different: the platform
checks that the server answers (:func:`taxi_platform.model.gate.ensure_reachable`, one request, no retry) so that a
wrong ``MLFLOW_TRACKING_URI`` fails before any training. A server that is down for a moment (restarted, rescheduled,
upgraded) when a step starts used to fail the month at once. Here the step asks Dagster to run it again after 5,
10, 20, 40 ... s while the total stays within ``TAXI_MLFLOW_WAIT_SECONDS`` (default 120), then fails with a
:class:`dagster.Failure` saying so. Nothing has been trained, logged, registered or reported at that point, so
running the step again is safe.
"""

from __future__ import annotations

import dagster as dg

from taxi_platform.core.settings import load_settings
from taxi_platform.model.tracking import server_max_retries, server_wait_before_retry, server_waited_before

NOTHING_TRAINED = "nothing was trained or registered and the champion is unchanged"


def await_tracking_server(
    context: dg.AssetExecutionContext, tracking_uri: str, nothing_done: str = NOTHING_TRAINED
) -> None:
    """Return when the tracking server at ``tracking_uri`` answers (local stores always do); else raise
    :class:`dagster.RetryRequested` while the wait budget lasts, then a clear :class:`dagster.Failure` that says
    ``nothing_done`` (what the step left as it was)."""
    from taxi_platform.model.gate import RegistryUnavailableError, ensure_reachable

    try:
        ensure_reachable(tracking_uri)
        return
    except RegistryUnavailableError as exc:
        budget = load_settings().mlflow_wait_seconds
        retries = server_max_retries(budget)
        attempt = context.retry_number
        if attempt >= retries:
            raise dg.Failure(
                description=f"{exc} Gave up after {attempt + 1} attempt(s) over {server_waited_before(attempt):.0f} s "
                f"(TAXI_MLFLOW_WAIT_SECONDS={budget:g}); {nothing_done}: materialise this partition again once the "
                "server answers.",
                allow_retries=False,
            ) from exc
        wait = server_wait_before_retry(attempt)
        context.log.warning(f"{exc} Retrying in {wait:.0f} s (retry {attempt + 1} of {retries}).")
        raise dg.RetryRequested(max_retries=retries, seconds_to_wait=wait) from exc
