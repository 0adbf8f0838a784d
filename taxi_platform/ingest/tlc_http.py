"""How the TLC client speaks HTTP: request settings, what status codes mean, and what response headers say
about a file's version."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

Timeout = float | tuple[float, float]
DEFAULT_TIMEOUT: tuple[float, float] = (10.0, 60.0)  # (connect, read) seconds
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF = 2.0  # seconds before the first retry; doubles each time
CHUNK_SIZE = 1 << 20
USER_AGENT = "taxi-platform/0.1 (+python-requests)"

# 404 is the plain answer for a missing file; CloudFront in front of S3 answers 403 for a missing key.
NOT_PUBLISHED_STATUSES = frozenset({403, 404})
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})

_PLAIN_MD5_ETAG = re.compile(r"^[0-9a-fA-F]{32}$")


def request_headers() -> dict[str, str]:
    # identity: we keep the file byte for byte and check its length against Content-Length
    return {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}


def plain_md5_etag(etag: str | None) -> str | None:
    """The ETag as a lower-case MD5 hex digest when it is one (a single-part S3 upload), else ``None``.

    Weak ETags (``W/…``) and multipart ETags (``<md5>-<parts>``) are not the MD5 of the body."""
    if etag is None or etag.startswith("W/") or not _PLAIN_MD5_ETAG.match(etag):
        return None
    return etag.lower()


# -- HTTP metadata -------------------------------------------------------------------------------
def parse_http_date(value: str | None) -> datetime | None:
    """Parse an HTTP date (``Last-Modified``) into an aware UTC datetime; ``None`` if absent or invalid."""
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed is None:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def clean_etag(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    weak = value.startswith("W/")
    if weak:
        value = value[2:]
    value = value.strip('"')
    return f"W/{value}" if weak else value


def content_length(headers) -> int | None:
    raw = headers.get("Content-Length")
    if raw is None:
        return None
    try:
        n = int(raw)
    except ValueError:
        return None
    return n if n >= 0 else None


@dataclass(frozen=True, kw_only=True)
class FileVersion:
    """What identifies a file's version: hash, size, ETag, Last-Modified (parsed and as sent), Content-Type."""

    sha256: str
    size: int
    etag: str | None
    last_modified: datetime | None
    last_modified_raw: str | None
    content_type: str | None

    def version_fields(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(FileVersion)}
