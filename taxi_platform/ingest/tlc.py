"""Client for the NYC TLC trip-record source (the TLC CloudFront host or a mirror with the same layout).

Pure library code, no Dagster: downloads that stream to a temporary file, verify length, Parquet footer and
schema era, and only then move the file into place through the lake's atomic ``staged_file``/``publish``. URLs
are built in :mod:`taxi_platform.ingest.tlc_urls`, ``HEAD`` probes (is a month published yet?) live in
:mod:`taxi_platform.ingest.tlc_probe`, and the transfer with its retries and limits in
:mod:`taxi_platform.ingest.tlc_transfer`.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TypedDict, Unpack

import pyarrow as pa
import pyarrow.parquet as pq
import requests

from taxi_platform.core.settings import DEFAULT_DOWNLOAD_DEADLINE_SECONDS, DEFAULT_DOWNLOAD_MAX_BYTES
from taxi_platform.ingest.tlc_errors import NotParquetError, NotPublishedError, UnexpectedSchemaError
from taxi_platform.ingest.tlc_http import (
    DEFAULT_BACKOFF,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    FileVersion,
    Timeout,
)
from taxi_platform.ingest.tlc_schema import SchemaMismatchError, match_schema
from taxi_platform.ingest.tlc_transfer import get_with_retries
from taxi_platform.ingest.tlc_urls import base_url_of, month_from_url, not_published_message
from taxi_platform.lake.lake import Lake

MAX_ZONE_CSV_BYTES = 5 << 20


class TransferOptions(TypedDict, total=False):
    """Keyword arguments :func:`download` passes on to :func:`download_to` (see there)."""

    timeout: Timeout
    retries: int
    backoff: float
    session: requests.Session | None
    logger: logging.Logger | None
    deadline: float | None
    max_bytes: int | None
    verify_md5: bool


# -- trip file download --------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class DownloadResult(FileVersion):
    """A verified TLC trip file and what we know about it."""

    url: str
    path: str
    service: str
    era: str
    extra_columns: tuple[str, ...]
    missing_optional_columns: tuple[str, ...]
    num_rows: int
    attempts: int
    parquet_metadata: dict[str, str] = field(default_factory=dict)

    @property
    def data_source(self) -> str:
        """``synthetic`` when the file says it was generated (sample mirror), else ``tlc``."""
        return "synthetic" if self.parquet_metadata.get("data_source") == "synthetic" else "tlc"


def _snippet(first_bytes: bytes, limit: int = 80) -> str:
    text = first_bytes[:limit].decode("utf-8", errors="replace")
    return repr(text)


def _key_value_metadata(pf: pq.ParquetFile) -> dict[str, str]:
    raw = pf.metadata.metadata or {}
    out: dict[str, str] = {}
    for k, v in raw.items():
        key = k.decode("utf-8", errors="replace")
        if key == "ARROW:schema":
            continue
        out[key] = v.decode("utf-8", errors="replace")
    return out


def inspect_parquet(
    path: str | Path, *, url: str, content_type: str | None = None, first_bytes: bytes = b""
) -> pq.ParquetFile:
    """Open a downloaded file as Parquet, or raise :class:`NotParquetError` saying what came back instead."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(4)
        if size >= 8:
            fh.seek(-4, io.SEEK_END)
        tail = fh.read(4)
        if not first_bytes:
            fh.seek(0)
            first_bytes = fh.read(256)
    problem = None
    if size < 12 or head != b"PAR1":
        problem = "it does not start with the Parquet magic bytes"
    elif tail != b"PAR1":
        problem = "it does not end with the Parquet footer (truncated or corrupt)"
    pf = None
    if problem is None:
        try:
            pf = pq.ParquetFile(path)
            _ = pf.schema_arrow
        except (pa.ArrowException, OSError, ValueError) as exc:
            problem = f"pyarrow cannot read its footer ({exc})"
    if problem is not None or pf is None:
        raise NotParquetError(
            f"the source returned something that is not a Parquet file for {url}: {problem}. "
            f"Content-Type: {content_type or 'unknown'}; {size} bytes starting with {_snippet(first_bytes)}. "
            f"Check that TLC_BASE_URL (now {base_url_of(url)}) points at the TLC CloudFront host or a mirror "
            "with the same layout, not at a web page or proxy.",
            url=url,
        )
    return pf


def download_to(
    url: str,
    local_path: str | Path,
    *,
    service: str,
    month: date | None = None,
    timeout: Timeout = DEFAULT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF,
    session: requests.Session | None = None,
    logger: logging.Logger | None = None,
    result_path: str | None = None,
    deadline: float | None = DEFAULT_DOWNLOAD_DEADLINE_SECONDS,
    max_bytes: int | None = DEFAULT_DOWNLOAD_MAX_BYTES,
    verify_md5: bool = True,
) -> DownloadResult:
    """Download ``url`` into the local staging file ``local_path`` and verify it.

    The caller owns ``local_path`` (e.g. a ``Lake.staged_file``) and publishes it; on any error the
    file's content is undefined and must be discarded. ``result_path`` is recorded in the result
    (defaults to ``local_path``). ``deadline`` (seconds, all attempts included) and ``max_bytes`` bound the
    download; ``verify_md5`` compares the body with the ETag when the ETag is a plain MD5.
    """
    month = month or month_from_url(url)

    def not_published(status: int) -> NotPublishedError:
        return NotPublishedError(
            not_published_message(month, {service: (url, status)}), url=url, http_status=status
        )

    with open(local_path, "wb") as sink:
        fetched, attempts = get_with_retries(
            url,
            sink,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            not_published=not_published,
            session=session,
            logger=logger,
            deadline_seconds=deadline,
            max_bytes=max_bytes,
            verify_md5=verify_md5,
        )
    try:
        pf = inspect_parquet(
            local_path, url=url, content_type=fetched.content_type, first_bytes=fetched.first_bytes
        )
    except NotParquetError as exc:
        exc.attempts = attempts
        raise
    try:
        matched = match_schema(service, pf.schema_arrow)
    except SchemaMismatchError as exc:
        raise UnexpectedSchemaError(
            f"{url} is not a usable {service} trip file: {exc}. The TLC may have changed the file layout; "
            "update taxi_platform/ingest/tlc_schema.py if this is a new schema era.",
            url=url,
            attempts=attempts,
        ) from exc
    return DownloadResult(
        url=url,
        path=str(result_path if result_path is not None else local_path),
        service=service,
        **fetched.version_fields(),  # type: ignore[arg-type]
        era=matched.era,
        extra_columns=matched.extra_columns,
        missing_optional_columns=matched.missing_optional,
        num_rows=pf.metadata.num_rows,
        attempts=attempts,
        parquet_metadata=_key_value_metadata(pf),
    )


def download(
    url: str,
    dest: str | Path,
    *,
    service: str,
    lake: Lake | None = None,
    month: date | None = None,
    **options: Unpack[TransferOptions],
) -> DownloadResult:
    """Download a TLC trip file to ``dest`` (a local path or a path in ``lake``), atomically.

    The file is streamed to a temporary name, verified (length, Parquet footer, schema era) and only
    then moved into place, so ``dest`` is either the previous file or the complete new one. ``options``
    (timeouts, retries, limits) are :func:`download_to`'s.
    """
    dest = str(dest)
    if lake is None:
        lake = Lake(dest.rsplit("/", 1)[0] if "/" in dest else ".")
    with lake.staged_file(dest, suffix=".parquet") as tmp:
        return download_to(url, tmp, service=service, month=month, result_path=dest, **options)


# -- zone lookup ---------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class FetchResult(FileVersion):
    """A small file fetched into memory."""

    url: str
    content: bytes
    attempts: int


def fetch(
    url: str,
    *,
    timeout: Timeout = DEFAULT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF,
    max_bytes: int = MAX_ZONE_CSV_BYTES,
    session: requests.Session | None = None,
    logger: logging.Logger | None = None,
    deadline: float | None = DEFAULT_DOWNLOAD_DEADLINE_SECONDS,
    verify_md5: bool = True,
) -> FetchResult:
    """GET a small file into memory, with the same retry and length checks as :func:`download`."""

    def not_published(status: int) -> NotPublishedError:
        return NotPublishedError(
            f"{url} is not on the source (HTTP {status}). Check that TLC_BASE_URL (now {base_url_of(url)}) "
            "points at the TLC CloudFront host or a mirror with the same layout.",
            url=url,
            http_status=status,
        )

    buf = io.BytesIO()
    fetched, attempts = get_with_retries(
        url,
        buf,
        timeout=timeout,
        retries=retries,
        backoff=backoff,
        max_bytes=max_bytes,
        not_published=not_published,
        session=session,
        logger=logger,
        deadline_seconds=deadline,
        verify_md5=verify_md5,
    )
    return FetchResult(url=url, content=buf.getvalue(), attempts=attempts, **fetched.version_fields())  # type: ignore[arg-type]
