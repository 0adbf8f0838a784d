"""BentoML fare-quote service: the registered ``champion`` of ``taxi_fare_model`` over HTTP.

Endpoints:

- ``POST /predict`` — one flat JSON quote → ``{"fare_amount", "fare_low", "fare_high", "items",
  "total_before_tip", "total_low", "total_high", "currency", "model_version"}``; ``fare_low``..``fare_high`` is the
  model's calibrated fare range (null for a model version without one); ``items`` what a rider pays before the tip
  besides the fare (the rate card's charges at the pickup and the expected tolls), adding up with the fare to
  ``total_before_tip`` to the cent (null for a version that does not itemise).
- ``POST /predict_batch`` — ``{"quotes": [...]}`` (≤ 10,000) → ``{"predictions": [...], "fare_low": [...],
  "fare_high": [...], "items": {item: [...]}, "total_before_tip": [...], "total_low", "total_high", "currency",
  "model_version"}``, in request order, priced in one vectorised call.
- ``/livez``, ``/readyz``, ``/healthz``, ``/metrics`` (Prometheus), ``/docs.json`` (the OpenAPI spec) and ``/``
  (Swagger UI over that spec) — BentoML's own.

Bad input is a 400 whose JSON body names each bad field and says what a good value looks like (validation
lives in :mod:`taxi_platform.serving.quotes` and :mod:`taxi_platform.serving.quote_batches`; a batch lists at most
20 errors and a count). Bodies over :data:`taxi_platform.serving.request_guard.MAX_BODY_BYTES` (sized to the
largest batch: 10,000 quotes of up to 256 bytes) get 413, non-JSON content types 415, bodies without a
``Content-Length`` (chunked uploads) 411 (:mod:`taxi_platform.serving.request_guard`); a batch's length is checked
before any quote is validated.

The edge (:mod:`taxi_platform.serving.http_edge`): a path the service does not route is answered 404 before BentoML's
metrics middleware (which would label a series with the raw path) and counted under one series; JSON nested too
deep to parse is a 400; a connection must send its request head within 5 s of connecting (or of the head's first
byte), its body within 20 s of the head, and may idle 5 s between requests, else it is closed; a client that
disconnects mid-request is one INFO line. Beyond :data:`MAX_IN_FLIGHT` API requests in progress, a worker answers
503 with ``Retry-After: 1`` at once (``taxi_fare_overload_shed_total``), never BentoML's 429.

Access (off by default, for local use): ``TAXI_API_KEYS_FILE`` names a file of ``name:sha256-hex`` lines (in
the cloud a Secret Manager secret mounted as a file); then ``/predict`` and ``/predict_batch`` need
``Authorization: Bearer <key>`` (or ``X-API-Key``) whose SHA-256 is listed (401 otherwise), and each key gets
``TAXI_RATE_LIMIT`` requests per second (burst ``TAXI_RATE_BURST``) per worker, 429 with ``Retry-After`` past
it (:mod:`taxi_platform.serving.api_access`). Health, readiness and metrics routes never need a key. The service's
variables are read once, by :func:`taxi_platform.core.settings.load_service_settings`, when a worker starts.

Built for speed on small machines:

- ``async`` endpoints that price in the event loop (no thread hop), through the model's numpy fast path
  ``FareQuoteModel.predict_quotes`` on arrays — no pandas DataFrame per request;
- a batch of plain quotes is validated a column at a time and never becomes ``Quote`` objects
  (:func:`taxi_platform.serving.quote_batches.check_batch`): its columns go straight to the model and the
  prediction log;
- concurrent single quotes that arrive in the same event-loop turn are priced together in one model call
  (:class:`~taxi_platform.serving.quote_batcher.QuoteBatcher`; an idle server adds no wait, a busy one amortises
  the per-call model overhead);
- prediction logging appends the request's JSON line to this worker's day file (one ``write``) before the answer
  is sent, so a killed worker loses no answered quote; the stdout sink is a queue put written by a background
  thread (:mod:`taxi_platform.serving.prediction_log`, Durability);
- OpenMP is limited to one thread per worker (scale with workers, not threads); access logs and trace spans
  of the prediction routes are off;
- after loading, the worker's objects are frozen out of the garbage collector (``gc.freeze``): full
  collections over them were 200-300 ms pauses, the whole p99 tail; and the collector runs far less often
  (requests make almost no cyclic garbage), which took p99 at 16 connections from 35-88 ms to 11-14 ms.

The model comes from the BentoML model store: ``taxi_fare_model:<model_version>``, where ``model_version`` is a
Bento argument (``bentoml build|serve --arg model_version=v3-…``, set by the ``fare_service`` asset to the
champion it imported; default ``latest``). A Bento records its arguments and packages exactly that model.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import secrets
from itertools import count
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from pydantic import ValidationError

from taxi_platform.core.settings import MODEL_NAME, load_service_settings, load_settings
from taxi_platform.fare_model.features import SERVICES
from taxi_platform.model.model_loading import load_version

# The model runs its own code (shipped as taxi_fare_model_<digest>, see taxi_platform.model.model_loading), never
# these modules: they only validate requests and log quotes.
from taxi_platform.serving.client_error_log import ClientErrorLogFilter
from taxi_platform.serving.http_edge import guard_routes, install_connection_timeouts, loads_bounded
from taxi_platform.serving.prediction_log import PredictionLog, file_sink_directory
from taxi_platform.serving.quote_batcher import QuoteBatcher
from taxi_platform.serving.quote_batches import check_batch, check_services, quotes_to_columns
from taxi_platform.serving.quotes import (
    CURRENCY,
    EXAMPLE_QUOTE,
    ITEM_NAMES,
    BatchFareItems,
    BatchPrediction,
    FareItems,
    FarePrediction,
    Quote,
    QuoteBatch,
    round_fares,
)
from taxi_platform.serving.request_guard import API_ROUTES, GuardMiddleware
from taxi_platform.serving.request_ids import request_ids
from taxi_platform.serving.shadow import ShadowPricer

ARGS = bentoml.use_arguments()
MODEL_STORE_VERSION = str(getattr(ARGS, "model_version", "") or "latest")
SHADOW_STORE_VERSION = str(getattr(ARGS, "shadow_version", "") or "")  # the challenger priced in the shadow
# API requests in progress per worker beyond which a new one is shed at once with 503 + Retry-After
# (taxi_platform.serving.http_edge.LoadShedder): about 0.1-0.4 s of queue at a worker's 700-2,000 quotes/s.
# BentoML's own traffic.max_concurrency is not set: it is per service, split between the workers, and answers
# 429 "Too many requests" (the client's fault, no Retry-After) — with 512 and 2 workers, 429 past 256 a worker.
MAX_IN_FLIGHT = 256
LARGE_BATCH = 2_048  # batches at least this big are priced in a worker thread so the event loop stays free
# The service's TAXI_* variables (API keys, rate limit, tracing, prediction-log sinks), read once as the worker
# imports this module.
SETTINGS = load_service_settings()

log = logging.getLogger("taxi_platform.serving")

QUOTES_PRICED = bentoml.metrics.Counter(
    name="taxi_fare_quotes_priced",
    documentation="Fare quotes priced, by endpoint.",
    labelnames=["endpoint"],
)
UNKNOWN_ROUTES = bentoml.metrics.Counter(
    name="taxi_fare_unknown_route_requests",
    documentation="Requests for a path the service does not route, answered 404 before any other middleware.",
)
SHADOW_DROPPED = bentoml.metrics.Counter(
    name="taxi_fare_shadow_dropped",
    documentation="Requests the shadow challenger did not price because it fell behind (never the served fares).",
)
OVERLOAD_SHED = bentoml.metrics.Counter(
    name="taxi_fare_overload_shed",
    documentation="API requests answered 503 because the worker already had its maximum in progress.",
)
PREDICTION_LOG_DROPPED = bentoml.metrics.Counter(
    name="taxi_fare_prediction_log_dropped",
    documentation="Prediction-log records dropped because the log writer fell behind.",
)


logging.getLogger("bentoml._internal.server.http_app").addFilter(ClientErrorLogFilter())


def _model_version(model: bentoml.Model) -> str:
    """The registry version: the import's label, else MLflow's ``registered_model_meta``, else the store tag."""
    version = model.info.labels.get("model_version")
    if version:
        return str(version)
    meta = Path(model.path_of("mlflow_model")) / "registered_model_meta"
    if meta.is_file():
        for line in meta.read_text().splitlines():
            if line.startswith("model_version:"):
                return line.split(":", 1)[1].strip()
    return str(model.tag.version)


@bentoml.service(
    name="taxi_fare_service",
    description="Prices NYC taxi trips before they start: the champion taxi_fare_model over HTTP.",
    traffic={"timeout": 30},  # in-flight limit: MAX_IN_FLIGHT (a 503, not BentoML's 429)
    logging={"access": {"enabled": False}},
    # No trace spans for the prediction routes unless asked for (TAXI_TRACE_PREDICTIONS=1, with an exporter
    # configured): BentoML opens several OpenTelemetry spans per request, ~15 % of a quote's CPU time.
    tracing={"excluded_urls": [] if SETTINGS.trace_predictions else ["/predict"]},
    metrics={"enabled": True, "namespace": "bentoml_service"},
    labels={"project": "taxi_platform"},
)
class FareService:
    model_ref = bentoml.models.BentoModel(f"{MODEL_NAME}:{MODEL_STORE_VERSION}")
    if SHADOW_STORE_VERSION:  # packaged with the Bento only when it was built with a shadow challenger
        shadow_ref = bentoml.models.BentoModel(f"{MODEL_NAME}:{SHADOW_STORE_VERSION}")

    def __init__(self) -> None:
        from threadpoolctl import threadpool_limits

        # One OpenMP thread per worker: HistGradientBoosting's predict would otherwise spawn a thread per core
        # in every worker, and several workers on a small machine then spend their time contending.
        self._thread_limits = threadpool_limits(limits=1, user_api="openmp")
        stored: bentoml.Model = self.model_ref
        self.model_tag = str(stored.tag)
        self.model_version = _model_version(stored)
        self.pyfunc = load_version(
            stored.path_of("mlflow_model")
        )  # the version's own code, whatever is installed
        self.model = self.pyfunc.unwrap_python_model()
        # A model may record the services it was trained on; quotes for others are refused (400), not guessed.
        self.services = tuple(getattr(self.model, "info", {}).get("services") or SERVICES)
        # A version that itemises its quotes (the rate card's charges and expected tolls) names its items; the
        # answer lists them in ITEM_NAMES order. Versions before itemised quotes answer without items.
        self.itemises = hasattr(self.model, "predict_itemised")
        if self.itemises:
            names = tuple(self.model.item_columns)
            if sorted(names) != sorted(ITEM_NAMES):
                raise RuntimeError(
                    f"model {self.model_tag} itemises {list(names)}; this service answers {list(ITEM_NAMES)}"
                )
            self._item_order = [names.index(n) for n in ITEM_NAMES]
        self.batcher = QuoteBatcher(self._price)
        self._ids = count(1)
        self._id_prefix = secrets.token_hex(8)  # 64 random bits per worker start: unique across pods
        self.prediction_log = PredictionLog(
            file_sink_directory(load_settings().prediction_log_path, __file__)
            if SETTINGS.log_to_file
            else None,
            stdout=SETTINGS.log_to_stdout,
            write_through=True,  # a quote's line is in its day file before it is answered (SIGKILL loses none)
        )
        self._dropped_reported = self._shadow_dropped_reported = 0
        self.shadow = self._shadow() if SHADOW_STORE_VERSION and self.prediction_log.enabled else None
        # Warm up both paths (compiled trees for small inputs, the estimator for large ones) before /readyz.
        warm = [Quote.model_validate(EXAMPLE_QUOTE)]
        self._price(warm)
        self._price(warm * 1000)
        # Move everything loaded so far (BentoML, MLflow, scikit-learn, the model: ~300k objects) out of the
        # garbage collector's reach. Otherwise every full collection walks them all — a 200-300 ms pause that
        # showed up as the p99 latency under load.
        gc.collect()
        gc.freeze()
        # Requests make almost no cyclic garbage (refcounting frees it), but at thousands of requests per second
        # the default thresholds (700, 10, 10) still ran a collection every few milliseconds, and the older
        # generations' passes were the p99 tail: 35-88 ms at 16 connections, 11-14 ms with these thresholds.
        gc.set_threshold(100_000, 50, 1000)
        self._ready = True
        log.info("serving %s (registry version %s) from %s", self.model_tag, self.model_version, stored.path)

    def __is_ready__(self) -> bool:
        return self._ready

    def _shadow(self) -> ShadowPricer:
        """The challenger, priced by this worker's shadow process (:mod:`taxi_platform.serving.shadow`)."""
        stored: bentoml.Model = self.shadow_ref
        version, plog = _model_version(stored), self.prediction_log
        log.info("shadow challenger: registry version %s prices every request in a shadow process", version)
        return ShadowPricer(stored.path_of("mlflow_model"), version, plog.directory, plog.stdout)

    @bentoml.on_shutdown
    def _close_log(self) -> None:
        if self.shadow is not None:
            self.shadow.close()
        self.prediction_log.close()

    def _price(self, quotes: list[Quote]) -> np.ndarray:
        return self._price_columns(quotes_to_columns(quotes))

    def _price_columns(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        """``(n, 3)``: fare, fare_low, fare_high per quote (NaN ranges for a model without calibrated ranges); for
        a model that itemises, ``(n, 3 + len(ITEM_NAMES))`` with the items (dollars, in cents) after them."""
        items = None
        if self.itemises:
            fares, low, high, items = self.model.predict_itemised(columns)
        elif hasattr(self.model, "predict_ranges"):
            fares, low, high, _ = self.model.predict_ranges(columns)
        else:  # a version logged before fare ranges ships its own, older model code
            fares, low, high = self.model.predict_quotes(columns), None, None
        if not np.isfinite(fares).all():
            raise bentoml.exceptions.InternalServerError("the model returned a non-finite fare")
        if low is None:
            low = high = np.full(len(fares), np.nan)
        if items is None:
            return np.stack([fares, low, high], axis=1)
        return np.column_stack([fares, low, high, items[:, self._item_order]])

    def _log(self, endpoint: str, ids: tuple[str, str | None], quotes: Any, fares: list[float]) -> None:
        if self.prediction_log.enabled:
            self.prediction_log.record(endpoint, ids[0], self.model_version, quotes, fares, ids[1])
            if self.shadow is not None:
                self.shadow.submit(endpoint, ids[0], quotes, ids[1])
                if self.shadow.dropped != self._shadow_dropped_reported:
                    SHADOW_DROPPED.inc(self.shadow.dropped - self._shadow_dropped_reported)
                    self._shadow_dropped_reported = self.shadow.dropped
            if self.prediction_log.dropped != self._dropped_reported:
                PREDICTION_LOG_DROPPED.inc(self.prediction_log.dropped - self._dropped_reported)
                self._dropped_reported = self.prediction_log.dropped

    @bentoml.api(route="/predict")
    async def predict(self, quote: Quote, /, ctx: bentoml.Context) -> FarePrediction:
        """Price one quote. The body is the quote itself (flat JSON)."""
        check_services([quote], self.services)
        fare, low, high, *items = (await self.batcher.submit(quote)).tolist()
        fare = round(fare, 2)
        ids = request_ids(ctx, self._ids, self._id_prefix)
        QUOTES_PRICED.labels(endpoint="predict").inc()
        self._log("predict", ids, [quote], [fare])
        ranged = low == low  # NaN: the model has no calibrated range
        low, high = (round(low, 2), round(high, 2)) if ranged else (None, None)
        if not items:
            return FarePrediction.model_construct(
                fare_amount=fare,
                fare_low=low,
                fare_high=high,
                currency=CURRENCY,
                model_version=self.model_version,
            )
        extra = sum(items)  # the items are in cents already: the totals add up to the cent
        return FarePrediction.model_construct(
            fare_amount=fare,
            fare_low=low,
            fare_high=high,
            items=FareItems.model_construct(**dict(zip(ITEM_NAMES, items, strict=True))),
            total_before_tip=round(fare + extra, 2),
            total_low=round(low + extra, 2) if ranged else None,
            total_high=round(high + extra, 2) if ranged else None,
            currency=CURRENCY,
            model_version=self.model_version,
        )

    @bentoml.api(route="/predict_batch")
    async def predict_batch(self, batch: QuoteBatch, /, ctx: bentoml.Context) -> BatchPrediction:
        """Price up to 10,000 quotes in one call; ``predictions[i]`` is the fare of ``quotes[i]``.

        The body is validated by :func:`taxi_platform.serving.quote_batches.check_batch` (see ``_CheckedBatchInput``):
        length first, at most 20 errors listed."""
        quotes = batch.quotes
        check_services(quotes, self.services, batch=True)
        columns = quotes_to_columns(quotes)
        if not quotes:
            priced = np.zeros((0, 3 + len(ITEM_NAMES) * self.itemises))
        elif len(quotes) >= LARGE_BATCH:
            priced = await asyncio.to_thread(self._price_columns, columns)
        else:
            priced = self._price_columns(columns)
        fares = round_fares(priced[:, 0])
        ranged = getattr(self.model, "intervals", None) is not None  # else the model has no ranges
        ids = request_ids(ctx, self._ids, self._id_prefix)
        QUOTES_PRICED.labels(endpoint="predict_batch").inc(len(quotes))
        if quotes:
            self._log("predict_batch", ids, columns, fares)
        answer = BatchPrediction.model_construct(
            predictions=fares,
            fare_low=round_fares(priced[:, 1]) if ranged else None,
            fare_high=round_fares(priced[:, 2]) if ranged else None,
            currency=CURRENCY,
            model_version=self.model_version,
        )
        if self.itemises:
            items = priced[:, 3:]
            extra = items.sum(axis=1)
            answer.items = BatchFareItems.model_construct(
                **{name: items[:, i].tolist() for i, name in enumerate(ITEM_NAMES)}
            )
            answer.total_before_tip = round_fares(np.round(priced[:, 0], 2) + extra)
            if ranged:
                answer.total_low = round_fares(np.round(priced[:, 1], 2) + extra)
                answer.total_high = round_fares(np.round(priced[:, 2], 2) + extra)
        return answer


class _CheckedBatchInput(FareService.apis["predict_batch"].input_spec):  # type: ignore[name-defined,misc]
    """BentoML's generated input model of ``/predict_batch`` (same OpenAPI schema), parsed by
    :func:`check_batch` instead of pydantic's one pass over every quote: the batch length is checked before any
    quote is validated, and a bad batch lists at most 20 errors and a count."""

    @classmethod
    async def from_http_request(cls, request: Any, serde: Any) -> Any:
        body = await request.body()
        try:
            data = loads_bounded(body or b"{}")  # too deep to parse: a 400 like any malformed body
        except ValueError as exc:
            raise ValidationError.from_exception_data(
                "QuoteBatch", [{"type": "json_invalid", "loc": (), "input": None, "ctx": {"error": str(exc)}}]
            ) from None
        batch = check_batch(data)
        # The generated class is QuoteBatch with BentoML's IO mixin: wrap the validated quotes without revalidating.
        return cls.model_construct(quotes=batch.quotes)


FareService.apis["predict_batch"].input_spec = _CheckedBatchInput
FareService.add_asgi_middleware(GuardMiddleware, settings=SETTINGS)
# Unknown paths are answered 404 outside BentoML's metrics middleware (one series, whatever the path), and
# connections get head and body deadlines (taxi_platform.serving.http_edge).
guard_routes(FareService, UNKNOWN_ROUTES.inc, (frozenset(API_ROUTES), MAX_IN_FLIGHT, OVERLOAD_SHED.inc))
install_connection_timeouts()
