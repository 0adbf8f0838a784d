"""The fare service's cheap ASGI guard in front of its API routes, before a byte of a body is read.

In order: the API key (401) and its rate limit (429) when ``TAXI_API_KEYS_FILE`` is set
(:mod:`taxi_platform.serving.api_access`), then for a POST the content type (415), the body size (413: over
:data:`MAX_BODY_BYTES`, sized to the largest batch: 10,000 quotes of up to 256 bytes) and a ``Content-Length`` (411:
no chunked uploads). A refused request's connection is closed after the answer, its body unread.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.responses import JSONResponse

from taxi_platform.core.settings import ServiceSettings
from taxi_platform.serving.api_access import RateLimiter, access_from_settings, hash_key, presented_key
from taxi_platform.serving.quote_limits import MAX_BATCH_SIZE

MAX_QUOTE_BYTES = 256  # a verbose, pretty-printed quote (offset timestamp, indentation) is ~200 bytes
MAX_BODY_BYTES = MAX_BATCH_SIZE * MAX_QUOTE_BYTES  # 2,560,000 bytes: the largest valid batch, no more
API_ROUTES = ("/predict", "/predict_batch")

_Refusal = tuple[int, str, list[tuple[bytes, bytes]] | None]  # status, message, extra headers


class GuardMiddleware:
    """Cheap ASGI guard in front of the API routes: API key (401) and rate limit (429) when configured, body size
    (413) and content type (415) checks — all before a byte of the body is read."""

    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        max_body: int = MAX_BODY_BYTES,
        key_hashes: dict[str, str] | None = None,
        limiter: RateLimiter | None = None,
        settings: ServiceSettings | None = None,
    ) -> None:
        self.app = app
        self.max_body = max_body
        if settings is not None and key_hashes is None:
            key_hashes, limiter = access_from_settings(settings)
        self.key_hashes = key_hashes
        self.limiter = limiter

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] not in API_ROUTES:
            return await self.app(scope, receive, send)
        refusal = self._access_refusal(scope["headers"]) if self.key_hashes is not None else None
        if (
            refusal is None and scope.get("method") == "POST"
        ):  # else no body to check: the router answers (405)
            refusal = self._body_refusal(scope["headers"])
        if refusal is not None:
            return await _reject(send, *refusal)
        await self.app(scope, receive, send)

    def _access_refusal(self, headers: list[tuple[bytes, bytes]]) -> _Refusal | None:
        """401 without a listed key, 429 past the key's rate limit; None: the request may go on."""
        key = presented_key(headers)
        name = self.key_hashes.get(hash_key(key)) if key and self.key_hashes is not None else None
        if name is None:
            return (
                401,
                "missing or unknown API key: send Authorization: Bearer <key>",
                [(b"www-authenticate", b'Bearer realm="taxi_fare_service"')],
            )
        if self.limiter is not None:
            wait = self.limiter.take(name)
            if wait > 0:
                return (
                    429,
                    f"rate limit of {self.limiter.rate:g} requests/s for this key exceeded: retry later",
                    [(b"retry-after", str(max(1, round(wait + 0.5))).encode())],
                )
        return None

    def _body_refusal(self, headers: list[tuple[bytes, bytes]]) -> _Refusal | None:
        """415 for a content type other than JSON, 413 for a body too large, 411 without a Content-Length."""
        content_type = b""
        length = None
        for name, value in headers:
            if name == b"content-type":
                content_type = value.split(b";", 1)[0].strip().lower()
            elif name == b"content-length":
                length = value
        if content_type and content_type != b"application/json":
            return (
                415,
                f"Content-Type {content_type.decode('latin-1')!r} is not supported: send application/json",
                None,
            )
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return 413, f"request body over {self.max_body:,} bytes: split the batch", None
        if length is None:
            # A chunked upload of unknown size would have to be read to find out: 100 of them cost the event loop
            # that answers /livez hundreds of milliseconds. Every HTTP client sends Content-Length for a JSON body.
            return 411, "send the JSON body with a Content-Length header (no chunked upload)", None
        return None


async def _reject(
    send: Callable, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    response = JSONResponse({"error": message}, status_code=status)
    # Close the connection after answering: the body was not read, and on a kept-alive connection the server
    # would read and discard all of it (an 8 MiB upload costs the event loop that answers /livez).
    response.raw_headers.extend([*(headers or []), (b"connection", b"close")])
    await response({"type": "http"}, None, send)  # type: ignore[arg-type]
