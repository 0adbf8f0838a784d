"""Canary comparison of two live fare services: the stable one and the candidate, on the same probe quotes.

:func:`probe_services` prices a fixed, seeded set of quotes on both (each quote alone on ``/predict``, timed, and all
of them in one ``/predict_batch``) and :func:`judge` compares what came back: error rates, p99 latency of single
quotes and the distribution of quoted fares (median relative change per quote and the two-sample
Kolmogorov-Smirnov statistic). The candidate is promoted only when every figure is within its limit; otherwise the
verdict lists each reason. ``taxi-platform compare-services`` and the deploy workflow's canary step run it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from taxi_platform.fare_model.features import SERVICES


@dataclass(frozen=True)
class Limits:
    max_error_rate_increase: float = 0.01  # absolute: candidate error rate - stable error rate
    max_p99_ratio: float = 1.5  # candidate p99 / stable p99 of single quotes ...
    min_p99_slack_ms: float = 25.0  # ... unless within this many ms of it (loopback latencies are tiny)
    max_median_fare_change: float = 0.10  # median over probes of |candidate - stable| / stable
    max_ks: float = 0.20  # two-sample KS statistic of the quoted fares


@dataclass
class ServiceProbe:
    url: str
    statuses: list[int] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    fares: list[float | None] = field(default_factory=list)  # per probe (singles); None where it failed
    batch_status: int = 0
    batch_fares: list[float] = field(default_factory=list)

    @property
    def error_rate(self) -> float:
        calls = [*self.statuses, self.batch_status]
        return sum(1 for s in calls if not 200 <= s < 300) / max(len(calls), 1)

    def p99_ms(self) -> float:
        return float(np.percentile(self.latencies_ms, 99)) if self.latencies_ms else float("nan")


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reasons: list[str]
    figures: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def probe_quotes(n: int = 200, seed: int = 20240305, services: Sequence[str] = SERVICES) -> list[dict]:
    """A fixed, varied set of quotes: Manhattan, airports, outer boroughs, every hour, weekdays and weekends."""
    rng = np.random.default_rng(seed)
    zones = [1, 4, 7, 13, 43, 48, 61, 74, 79, 100, 132, 138, 142, 161, 162, 186, 230, 236, 237, 244]
    out = []
    for i in range(n):
        minute = int(rng.integers(0, 7 * 24 * 60))
        day, rest = divmod(minute, 24 * 60)
        out.append(
            {
                "pickup_datetime": f"2024-03-{4 + day:02d}T{rest // 60:02d}:{rest % 60:02d}:00",
                "pickup_zone": int(rng.choice(zones)),
                "dropoff_zone": int(rng.choice(zones)),
                "passenger_count": int(rng.integers(1, 5)),
                "service": services[i % len(services)],
            }
        )
    return out


def probe_service(
    url: str, quotes: Sequence[Mapping[str, Any]], headers: Mapping[str, str], timeout: float
) -> ServiceProbe:
    """Price every quote alone (timed) and all of them in one batch."""
    import requests

    probe = ServiceProbe(url=url.rstrip("/"))
    with requests.Session() as session:
        session.headers.update(headers)
        for quote in quotes:
            started = time.perf_counter()
            try:
                response = session.post(f"{probe.url}/predict", json=quote, timeout=timeout)
                status = response.status_code
                fare = response.json().get("fare_amount") if status == 200 else None
            except (requests.RequestException, ValueError):
                status, fare = 599, None
            probe.latencies_ms.append((time.perf_counter() - started) * 1000.0)
            probe.statuses.append(status)
            probe.fares.append(float(fare) if fare is not None else None)
        try:
            response = session.post(
                f"{probe.url}/predict_batch", json={"quotes": list(quotes)}, timeout=timeout
            )
            probe.batch_status = response.status_code
            if response.status_code == 200:
                probe.batch_fares = [float(f) for f in response.json()["predictions"]]
        except (requests.RequestException, ValueError, KeyError):
            probe.batch_status = 599
    return probe


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs."""
    a, b = np.sort(a), np.sort(b)
    if not len(a) or not len(b):
        return float("nan")
    grid = np.concatenate([a, b])
    return float(
        np.max(
            np.abs(np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(b, grid, "right") / len(b))
        )
    )


def judge(stable: ServiceProbe, candidate: ServiceProbe, limits: Limits = Limits()) -> Verdict:
    """Compare the candidate with the stable service; promote only when every figure is within ``limits``."""
    pairs = [
        (s, c) for s, c in zip(stable.fares, candidate.fares, strict=True) if s is not None and c is not None
    ]
    s_fares = np.asarray([s for s, _ in pairs], dtype=np.float64)
    c_fares = np.asarray([c for _, c in pairs], dtype=np.float64)
    change = (
        float(np.median(np.abs(c_fares - s_fares) / np.maximum(s_fares, 0.01))) if pairs else float("nan")
    )
    ks = ks_statistic(s_fares, c_fares)
    batch_matches = (
        candidate.batch_fares == [f for f in candidate.fares if f is not None]
        if candidate.batch_fares
        else False
    )
    figures = {
        "probes": len(stable.statuses),
        "priced_by_both": len(pairs),
        "stable_error_rate": round(stable.error_rate, 4),
        "candidate_error_rate": round(candidate.error_rate, 4),
        "stable_p99_ms": round(stable.p99_ms(), 2),
        "candidate_p99_ms": round(candidate.p99_ms(), 2),
        "median_fare_change": round(change, 4),
        "fare_ks": round(ks, 4),
        "stable_mean_fare": round(float(s_fares.mean()), 2) if pairs else None,
        "candidate_mean_fare": round(float(c_fares.mean()), 2) if pairs else None,
        "candidate_batch_matches_singles": batch_matches,
    }
    reasons = []
    if candidate.error_rate - stable.error_rate > limits.max_error_rate_increase:
        reasons.append(f"error rate {candidate.error_rate:.2%} against the stable service's {stable.error_rate:.2%} "
                       f"(limit +{limits.max_error_rate_increase:.2%})")  # fmt: skip
    sp99, cp99 = stable.p99_ms(), candidate.p99_ms()
    if not cp99 <= max(sp99 * limits.max_p99_ratio, sp99 + limits.min_p99_slack_ms):
        reasons.append(f"p99 of single quotes {cp99:.1f} ms against {sp99:.1f} ms (limit x{limits.max_p99_ratio:g} "
                       f"or +{limits.min_p99_slack_ms:g} ms)")  # fmt: skip
    if not pairs:
        reasons.append("no probe was priced by both services")
    elif not change <= limits.max_median_fare_change:
        reasons.append(f"quoted fares moved by a median {change:.1%} per quote (limit {limits.max_median_fare_change:.0%}); "
                       f"mean fare ${figures['candidate_mean_fare']} against ${figures['stable_mean_fare']}")  # fmt: skip
    if pairs and not ks <= limits.max_ks:
        reasons.append(f"fare distribution differs: KS {ks:.3f} (limit {limits.max_ks:g})")
    if candidate.batch_fares and not batch_matches:
        reasons.append("the candidate's /predict_batch fares differ from its single-quote fares")
    return Verdict(promote=not reasons, reasons=reasons, figures=figures)
