"""BentoML fare-quote service: the registered ``champion`` of ``taxi_fare_model`` over HTTP.

Endpoints:

- ``POST /predict`` — one flat JSON quote → ``{"fare_amount", "fare_low", "fare_high", "currency",
  "model_version"}``; ``fare_low``..``fare_high`` is the model's calibrated fare range (null for a model version
  without one).
- ``POST /predict_batch`` — ``{"quotes": [...]}`` (≤ 10,000) → ``{"predictions": [...], "fare_low": [...],
  "fare_high": [...], "currency", "model_version"}``, fares in request order, priced in one vectorised call.
- ``/livez``, ``/readyz``, ``/healthz``, ``/metrics`` (Prometheus), ``/docs.json`` (the OpenAPI spec) and ``/``
  (Swagger UI over that spec) — BentoML's own.

Bad input is a 400 whose JSON body names each bad field and says what a good value looks like (validation
lives in :mod:`taxi_platform.serving.quotes`; a batch lists at most 20 errors and a count). Bodies over
:data:`MAX_BODY_BYTES` (sized to the largest batch: 10,000 quotes of up to 256 bytes) get 413, non-JSON content
types 415, bodies without a ``Content-Length`` (chunked uploads) 411; a batch's length is checked before any
quote is validated.

The edge (:mod:`taxi_platform.serving.http_edge`): a path the service does not route is answered 404 before BentoML's
metrics middleware (which would label a series with the raw path) and counted under one series; JSON nested too
deep to parse is a 400; a connection must send its request head within 5 s of connecting (or of the head's first
byte), its body within 20 s of the head, and may idle 5 s between requests, else it is closed; a client that
disconnects mid-request is one INFO line.

Access (off by default, for local use): ``TAXI_API_KEYS_FILE`` names a file of ``name:sha256-hex`` lines (in
the cloud a Secret Manager secret mounted as a file); then ``/predict`` and ``/predict_batch`` need
``Authorization: Bearer <key>`` (or ``X-API-Key``) whose SHA-256 is listed (401 otherwise), and each key gets
``TAXI_RATE_LIMIT`` requests per second (burst ``TAXI_RATE_BURST``) per worker, 429 with ``Retry-After`` past
it. Health, readiness and metrics routes never need a key.

Built for speed on small machines:

- ``async`` endpoints that price in the event loop (no thread hop), through the model's numpy fast path
  ``FareQuoteModel.predict_quotes`` on arrays — no pandas DataFrame per request;
- a batch of plain quotes is validated a column at a time and never becomes ``Quote`` objects
  (:func:`taxi_platform.serving.quotes.check_batch`): its columns go straight to the model and the prediction log;
- concurrent single quotes that arrive in the same event-loop turn are priced together in one model call
  (:class:`QuoteBatcher`; an idle server adds no wait, a busy one amortises the per-call model overhead);
- prediction logging is a queue put; a background thread writes the JSON lines
  (:mod:`taxi_platform.serving.prediction_log`);
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
import hashlib
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from itertools import count
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException
from pydantic import ValidationError
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse

from taxi_platform.core.settings import MODEL_NAME, load_settings
from taxi_platform.fare_model.features import SERVICES
from taxi_platform.model.model_loading import load_version

# The model runs its own code (shipped as taxi_fare_model_<digest>, see taxi_platform.model.model_loading), never
# these modules: they only validate requests and log quotes.
from taxi_platform.serving.http_edge import guard_routes, install_connection_timeouts, loads_bounded
from taxi_platform.serving.prediction_log import PredictionLog, file_sink_directory, sinks_from_env
from taxi_platform.serving.quotes import (
    CURRENCY,
    EXAMPLE_QUOTE,
    MAX_BATCH_SIZE,
    BatchPrediction,
    FarePrediction,
    Quote,
    QuoteBatch,
    check_batch,
    check_services,
    quotes_to_columns,
    round_fares,
)
from taxi_platform.serving.shadow import ShadowPricer

ARGS = bentoml.use_arguments()
MODEL_STORE_VERSION = str(getattr(ARGS, "model_version", "") or "latest")
SHADOW_STORE_VERSION = str(getattr(ARGS, "shadow_version", "") or "")  # the challenger priced in the shadow
MAX_QUOTE_BYTES = 256  # a verbose, pretty-printed quote (offset timestamp, indentation) is ~200 bytes
MAX_BODY_BYTES = MAX_BATCH_SIZE * MAX_QUOTE_BYTES  # 2,560,000 bytes: the largest valid batch, no more
ENV_API_KEYS_FILE = "TAXI_API_KEYS_FILE"
ENV_RATE_LIMIT = "TAXI_RATE_LIMIT"
ENV_RATE_BURST = "TAXI_RATE_BURST"
DEFAULT_RATE_LIMIT = 20.0  # requests per second per key and worker (a batch is one request)
LARGE_BATCH = 2_048  # batches at least this big are priced in a worker thread so the event loop stays free
API_ROUTES = ("/predict", "/predict_batch")

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
PREDICTION_LOG_DROPPED = bentoml.metrics.Counter(
    name="taxi_fare_prediction_log_dropped",
    documentation="Prediction-log records dropped because the log writer fell behind.",
)


class ClientErrorLogFilter(logging.Filter):
    """BentoML logs every rejected request as an ERROR with a traceback. A 4xx is the caller's mistake, already
    explained in the response: log one INFO line instead (tracebacks stay for real server errors). So is a client
    that disconnects before its body is read (or is disconnected by the body deadline): nothing to answer."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if isinstance(record.exc_info, tuple) else None
        if isinstance(exc, ClientDisconnect):
            record.msg = str(record.msg).replace("Exception on", "Client disconnected during", 1)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
            return True
        if isinstance(exc, ValidationError) or (
            isinstance(exc, BentoMLException) and int(exc.error_code) < 500
        ):
            summary = (
                f"{exc.error_count()} validation error(s)" if isinstance(exc, ValidationError) else str(exc)
            )
            record.msg = str(record.msg).replace("Exception on", "Rejected", 1) + f": {summary[:200]}"
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


logging.getLogger("bentoml._internal.server.http_app").addFilter(ClientErrorLogFilter())


def hash_key(key: str) -> str:
    """The SHA-256 hex digest stored for an API key (keys are random tokens, so a plain hash suffices)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def load_key_hashes(path: str | os.PathLike[str]) -> dict[str, str]:
    """``{sha256_hex: key_name}`` from a file of ``name:sha256-hex`` lines (``#`` comments, blank lines ok)."""
    hashes: dict[str, str] = {}
    for number, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, digest = line.rpartition(":")
        digest = digest.strip().lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"{path} line {number}: expected name:<64 hex digits of the key's SHA-256>")
        hashes[digest] = name.strip() or f"key-{number}"
    if not hashes:
        raise ValueError(f"{path} lists no key hashes: remove {ENV_API_KEYS_FILE} to turn authentication off")
    return hashes


class RateLimiter:
    """Token bucket per key: ``rate`` requests per second, bursts of ``burst``; ``take`` returns the seconds to
    wait (0 when the request may go)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens - 1.0, now)
        return 0.0


def _access_from_env() -> tuple[dict[str, str] | None, RateLimiter | None]:
    path = os.environ.get(ENV_API_KEYS_FILE, "").strip()
    if not path:
        return None, None
    rate = float(os.environ.get(ENV_RATE_LIMIT, "") or DEFAULT_RATE_LIMIT)
    burst = float(os.environ.get(ENV_RATE_BURST, "") or max(2 * rate, 1.0))
    return load_key_hashes(path), (RateLimiter(rate, burst) if rate > 0 else None)


def _presented_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            return value[7:].strip().decode("latin-1")
        if name == b"x-api-key":
            return value.strip().decode("latin-1")
    return None


class GuardMiddleware:
    """Cheap ASGI guard in front of the API routes: API key (401) and rate limit (429) when configured, body size
    (413) and content type (415) checks — all before a byte of the body is read."""

    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        max_body: int = MAX_BODY_BYTES,
        key_hashes: dict[str, str] | None = None,
        limiter: RateLimiter | None = None,
        from_env: bool = True,
    ) -> None:
        self.app = app
        self.max_body = max_body
        if from_env and key_hashes is None:
            key_hashes, limiter = _access_from_env()
        self.key_hashes = key_hashes
        self.limiter = limiter

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] not in API_ROUTES:
            return await self.app(scope, receive, send)
        if self.key_hashes is not None:
            key = _presented_key(scope["headers"])
            name = self.key_hashes.get(hash_key(key)) if key else None
            if name is None:
                return await _reject(
                    send,
                    401,
                    "missing or unknown API key: send Authorization: Bearer <key>",
                    [(b"www-authenticate", b'Bearer realm="taxi_fare_service"')],
                )
            if self.limiter is not None:
                wait = self.limiter.take(name)
                if wait > 0:
                    return await _reject(
                        send,
                        429,
                        f"rate limit of {self.limiter.rate:g} requests/s for this key exceeded: retry later",
                        [(b"retry-after", str(max(1, round(wait + 0.5))).encode())],
                    )
        if scope.get("method") != "POST":
            return await self.app(scope, receive, send)  # no body to check: the router answers (405)
        content_type = b""
        length = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value.split(b";", 1)[0].strip().lower()
            elif name == b"content-length":
                length = value
        if content_type and content_type != b"application/json":
            return await _reject(
                send,
                415,
                f"Content-Type {content_type.decode('latin-1')!r} is not supported: send application/json",
            )
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return await _reject(send, 413, f"request body over {self.max_body:,} bytes: split the batch")
        if length is None:
            # A chunked upload of unknown size would have to be read to find out: 100 of them cost the event loop
            # that answers /livez hundreds of milliseconds. Every HTTP client sends Content-Length for a JSON body.
            return await _reject(
                send, 411, "send the JSON body with a Content-Length header (no chunked upload)"
            )
        await self.app(scope, receive, send)


async def _reject(
    send: Callable, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    response = JSONResponse({"error": message}, status_code=status)
    # Close the connection after answering: the body was not read, and on a kept-alive connection the server
    # would read and discard all of it (an 8 MiB upload costs the event loop that answers /livez).
    response.raw_headers.extend([*(headers or []), (b"connection", b"close")])
    await response({"type": "http"}, None, send)  # type: ignore[arg-type]


class QuoteBatcher:
    """Prices single quotes that arrive in the same event-loop turn with one model call.

    ``submit`` queues a quote and, if no flush is pending, schedules one with ``loop.call_soon``: it runs after
    the requests already in the loop's ready queue have been parsed and queued their quotes. An idle server
    prices a lone quote right away; a busy one prices several per call.
    """

    def __init__(self, price: Callable[[list[Quote]], np.ndarray], max_size: int = 64) -> None:
        self.price = price
        self.max_size = max_size
        self._quotes: list[Quote] = []
        self._futures: list[asyncio.Future] = []
        self._scheduled = False

    def submit(self, quote: Quote) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._quotes.append(quote)
        self._futures.append(future)
        if len(self._quotes) >= self.max_size:
            self._flush()
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        quotes, futures = self._quotes, self._futures
        if not quotes:
            return
        self._quotes, self._futures = [], []
        try:
            fares = self.price(quotes)
        except Exception as exc:  # every waiting request gets the error
            for f in futures:
                if not f.done():
                    f.set_exception(exc)
            return
        for f, fare in zip(futures, fares, strict=True):
            if not f.done():
                f.set_result(fare)


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


def _request_ids(ctx: bentoml.Context, ids: count, prefix: str) -> tuple[str, str | None]:
    """``(server id, client id)``. The server's id names the request's quotes in the prediction log (unique:
    a random per-worker prefix and a counter) and is answered as ``X-Quote-ID``; the client's ``X-Request-ID``
    (at most 128 printable characters, else ignored) is logged as ``client_request_id`` and echoed as
    ``X-Request-ID`` (the server's id when the client sent none), never used to identify a quote."""
    server = f"{prefix}-{next(ids)}"
    given = ctx.request.headers.get("x-request-id")
    client = given if given and len(given) <= 128 and given.isprintable() else None
    ctx.response.headers["X-Quote-ID"] = server
    ctx.response.headers["X-Request-ID"] = client or server
    return server, client


@bentoml.service(
    name="taxi_fare_service",
    description="Prices NYC taxi trips before they start: the champion taxi_fare_model over HTTP.",
    traffic={"timeout": 30, "max_concurrency": 512},
    logging={"access": {"enabled": False}},
    # No trace spans for the prediction routes unless asked for (TAXI_TRACE_PREDICTIONS=1, with an exporter
    # configured): BentoML opens several OpenTelemetry spans per request, ~15 % of a quote's CPU time.
    tracing={"excluded_urls": [] if os.environ.get("TAXI_TRACE_PREDICTIONS") else ["/predict"]},
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
        self.batcher = QuoteBatcher(self._price)
        self._ids = count(1)
        self._id_prefix = secrets.token_hex(8)  # 64 random bits per worker start: unique across pods
        to_file, to_stdout = sinks_from_env()
        self.prediction_log = PredictionLog(
            file_sink_directory(load_settings().prediction_log_path, __file__) if to_file else None,
            stdout=to_stdout,
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
        """``(n, 3)``: fare, fare_low, fare_high per quote (NaN ranges for a model without calibrated ranges)."""
        if hasattr(self.model, "predict_ranges"):
            fares, low, high, _ = self.model.predict_ranges(columns)
        else:  # a version logged before fare ranges ships its own, older model code
            fares, low, high = self.model.predict_quotes(columns), None, None
        if not np.isfinite(fares).all():
            raise bentoml.exceptions.InternalServerError("the model returned a non-finite fare")
        if low is None:
            nan = np.full(len(fares), np.nan)
            return np.stack([fares, nan, nan], axis=1)
        return np.stack([fares, low, high], axis=1)

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
        fare, low, high = (await self.batcher.submit(quote)).tolist()
        fare = round(fare, 2)
        ids = _request_ids(ctx, self._ids, self._id_prefix)
        QUOTES_PRICED.labels(endpoint="predict").inc()
        self._log("predict", ids, [quote], [fare])
        ranged = low == low  # NaN: the model has no calibrated range
        return FarePrediction.model_construct(
            fare_amount=fare,
            fare_low=round(low, 2) if ranged else None,
            fare_high=round(high, 2) if ranged else None,
            currency=CURRENCY,
            model_version=self.model_version,
        )

    @bentoml.api(route="/predict_batch")
    async def predict_batch(self, batch: QuoteBatch, /, ctx: bentoml.Context) -> BatchPrediction:
        """Price up to 10,000 quotes in one call; ``predictions[i]`` is the fare of ``quotes[i]``.

        The body is validated by :func:`taxi_platform.serving.quotes.check_batch` (see ``_CheckedBatchInput``):
        length first, at most 20 errors listed."""
        quotes = batch.quotes
        check_services(quotes, self.services, batch=True)
        columns = quotes_to_columns(quotes)
        if not quotes:
            priced = np.zeros((0, 3))
        elif len(quotes) >= LARGE_BATCH:
            priced = await asyncio.to_thread(self._price_columns, columns)
        else:
            priced = self._price_columns(columns)
        fares = round_fares(priced[:, 0])
        ranged = getattr(self.model, "intervals", None) is not None  # else the model has no ranges
        ids = _request_ids(ctx, self._ids, self._id_prefix)
        QUOTES_PRICED.labels(endpoint="predict_batch").inc(len(quotes))
        if quotes:
            self._log("predict_batch", ids, columns, fares)
        return BatchPrediction.model_construct(
            predictions=fares,
            fare_low=round_fares(priced[:, 1]) if ranged else None,
            fare_high=round_fares(priced[:, 2]) if ranged else None,
            currency=CURRENCY,
            model_version=self.model_version,
        )


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
FareService.add_asgi_middleware(GuardMiddleware)
# Unknown paths are answered 404 outside BentoML's metrics middleware (one series, whatever the path), and
# connections get head and body deadlines (taxi_platform.serving.http_edge).
guard_routes(FareService, UNKNOWN_ROUTES.inc)
install_connection_timeouts()
