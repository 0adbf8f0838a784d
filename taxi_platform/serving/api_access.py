"""The fare service's API keys and per-key rate limit (off unless ``TAXI_API_KEYS_FILE`` is set).

``TAXI_API_KEYS_FILE`` names a file of ``name:sha256-hex`` lines (in the cloud a Secret Manager secret mounted as a
file); a request's key (``Authorization: Bearer <key>`` or ``X-API-Key``) must hash to a listed digest, and each
key gets ``TAXI_RATE_LIMIT`` requests per second (burst ``TAXI_RATE_BURST``) per worker. The variables are read by
:func:`taxi_platform.core.settings.load_service_settings`; :func:`access_from_settings` turns them into the key
hashes and the limiter :class:`~taxi_platform.serving.request_guard.GuardMiddleware` checks.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from taxi_platform.core.settings import ServiceSettings


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
        raise ValueError(f"{path} lists no key hashes: remove TAXI_API_KEYS_FILE to turn authentication off")
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


def access_from_settings(settings: ServiceSettings) -> tuple[dict[str, str] | None, RateLimiter | None]:
    """``(key hashes, limiter)``: ``(None, None)`` without a key file (no authentication, no limit); no limiter
    at rate 0."""
    if not settings.api_keys_file:
        return None, None
    rate = settings.rate_limit
    limiter = RateLimiter(rate, settings.rate_burst) if rate > 0 else None
    return load_key_hashes(settings.api_keys_file), limiter


def presented_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            return value[7:].strip().decode("latin-1")
        if name == b"x-api-key":
            return value.strip().decode("latin-1")
    return None
