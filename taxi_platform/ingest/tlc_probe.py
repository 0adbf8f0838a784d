"""``HEAD`` probes: is a TLC file published yet, and which version of it?"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import requests

from taxi_platform.ingest.tlc_http import (
    DEFAULT_TIMEOUT,
    NOT_PUBLISHED_STATUSES,
    Timeout,
    clean_etag,
    content_length,
    parse_http_date,
    request_headers,
)

# -- probe ---------------------------------------------------------------------------------------
ProbeStatus = Literal["published", "not_published", "error"]


@dataclass(frozen=True)
class ProbeResult:
    """What a ``HEAD`` request says about one source file."""

    url: str
    status: ProbeStatus
    http_status: int | None = None
    size: int | None = None
    etag: str | None = None
    last_modified: datetime | None = None  # parsed; None when absent or unparseable
    last_modified_raw: str | None = None  # the header as sent, kept even when garbage
    content_type: str | None = None
    message: str | None = None  # why, when status is "error" or "not_published"

    @property
    def published(self) -> bool:
        return self.status == "published"


def probe(
    url: str, timeout: Timeout = DEFAULT_TIMEOUT, session: requests.Session | None = None
) -> ProbeResult:
    """``HEAD`` one URL. Never raises for HTTP or network problems: they come back as ``status="error"``."""
    requester = session or requests
    try:
        resp = requester.head(url, timeout=timeout, allow_redirects=True, headers=request_headers())
    except requests.Timeout as exc:
        return ProbeResult(url=url, status="error", message=f"timed out after {timeout}s: {exc}")
    except requests.RequestException as exc:
        return ProbeResult(url=url, status="error", message=f"{type(exc).__name__}: {exc}")
    raw_lm = resp.headers.get("Last-Modified")
    common = dict(
        url=url,
        http_status=resp.status_code,
        size=content_length(resp.headers),
        etag=clean_etag(resp.headers.get("ETag")),
        last_modified=parse_http_date(raw_lm),
        last_modified_raw=raw_lm,
        content_type=resp.headers.get("Content-Type"),
    )
    if resp.status_code in NOT_PUBLISHED_STATUSES:
        return ProbeResult(status="not_published", message=f"HTTP {resp.status_code}", **common)
    if 200 <= resp.status_code < 300:
        return ProbeResult(status="published", **common)
    return ProbeResult(
        status="error", message=f"HTTP {resp.status_code} {resp.reason or ''}".strip(), **common
    )


def probe_many(
    urls: Iterable[str], max_workers: int = 8, timeout: Timeout = DEFAULT_TIMEOUT
) -> list[ProbeResult]:
    """Probe several URLs in parallel; results are in the order of ``urls``."""
    url_list = list(urls)
    if not url_list:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(url_list)))) as pool:
        return list(pool.map(lambda u: probe(u, timeout=timeout), url_list))
