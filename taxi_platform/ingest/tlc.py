"""Client for the NYC TLC trip-record source (the TLC CloudFront host or a mirror with the same layout).

Pure library code, no Dagster: URL building, ``HEAD`` probes (is a month published yet?), and
downloads that stream to a temporary file, verify length, Parquet footer and schema era, and only
then move the file into place through the lake's atomic ``staged_file``/``publish``.

Transient failures (HTTP 5xx/429, connection resets, timeouts, truncated bodies, a body whose MD5 differs from
a plain-MD5 ETag) are retried with exponential backoff. Every download has limits: an overall deadline per file
(all attempts and waits included; a server trickling bytes is cut off when it passes) and a size cap (a
``Content-Length`` over it is refused before any byte is read; a body growing past it is aborted). TLS failures
(untrusted certificate, handshake errors) are not retried: they raise :class:`TlsError`. A missing file (HTTP 404, or 403 which CloudFront returns for missing keys) is
not retried: it raises :class:`NotPublishedError`, because the TLC simply has not published that
month yet. Anything that is not a Parquet trip file raises :class:`DownloadError` without retrying.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import IO, Literal, TypedDict, Unpack

import pyarrow as pa
import pyarrow.parquet as pq
import requests

from taxi_platform.core.settings import DEFAULT_DOWNLOAD_DEADLINE_SECONDS, DEFAULT_DOWNLOAD_MAX_BYTES
from taxi_platform.ingest.tlc_schema import SchemaMismatchError, match_schema
from taxi_platform.lake.lake import Lake

log = logging.getLogger(__name__)

Timeout = float | tuple[float, float]
DEFAULT_TIMEOUT: tuple[float, float] = (10.0, 60.0)  # (connect, read) seconds
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF = 2.0  # seconds before the first retry; doubles each time
CHUNK_SIZE = 1 << 20
USER_AGENT = "taxi-platform/0.1 (+python-requests)"

MAX_ZONE_CSV_BYTES = 5 << 20

# 404 is the plain answer for a missing file; CloudFront in front of S3 answers 403 for a missing key.
NOT_PUBLISHED_STATUSES = frozenset({403, 404})
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})

_PLAIN_MD5_ETAG = re.compile(r"^[0-9a-fA-F]{32}$")
_MONTH_IN_URL = re.compile(r"_tripdata_(\d{4}-\d{2})\.parquet$")


# -- errors --------------------------------------------------------------------------------------
class TlcError(Exception):
    """Base class for errors talking to the TLC source."""


class NotPublishedError(TlcError):
    """The source does not have the file (HTTP 404/403): the month is not published yet."""

    def __init__(self, message: str, *, url: str, http_status: int):
        super().__init__(message)
        self.url = url
        self.http_status = http_status


class DownloadError(TlcError):
    """A download failed or returned something that is not a usable TLC trip file.

    ``transient`` is True when the failure was a network/server problem that might go away on a
    later attempt (the client already retried it ``attempts`` times).
    """

    def __init__(self, message: str, *, url: str, attempts: int = 1, transient: bool = False):
        super().__init__(message)
        self.url = url
        self.attempts = attempts
        self.transient = transient


class TlsError(DownloadError):
    """The TLS connection to the source failed (certificate not trusted, handshake error): never retried."""


class TooLargeError(DownloadError):
    """The file is larger than the configured size cap (``TAXI_DOWNLOAD_MAX_BYTES``): never retried."""


class NotParquetError(DownloadError):
    """The source answered 200 but the body is not a Parquet file (an HTML page, corrupt bytes)."""


class UnexpectedSchemaError(DownloadError):
    """The Parquet file lacks a column the platform requires for its service."""


class _TransientError(Exception):
    """One attempt failed for a reason worth retrying."""


class _DeadlineExceeded(Exception):
    """The download's overall deadline passed during an attempt."""


def _tls_error(url: str, exc: BaseException) -> TlsError:
    return TlsError(
        f"TLS connection to {base_url_of(url)} failed for {url} ({exc}); not retrying, because a certificate or "
        "TLS problem does not go away on its own. Check that TLC_BASE_URL uses the right host and that this "
        "machine trusts its certificate (the system CA bundle, or REQUESTS_CA_BUNDLE behind an inspecting proxy).",
        url=url,
    )


def plain_md5_etag(etag: str | None) -> str | None:
    """The ETag as a lower-case MD5 hex digest when it is one (a single-part S3 upload), else ``None``.

    Weak ETags (``W/…``) and multipart ETags (``<md5>-<parts>``) are not the MD5 of the body."""
    if etag is None or etag.startswith("W/") or not _PLAIN_MD5_ETAG.match(etag):
        return None
    return etag.lower()


class _Watchdog:
    """Cut a streaming response off when the deadline passes, even while a read is blocked (a trickling server)."""

    def __init__(self, resp: requests.Response, deadline: float | None):
        self.fired = False
        self._resp = resp
        self._timer = None
        if deadline is not None:
            self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
            self._timer.daemon = True
            self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        conn = getattr(self._resp.raw, "connection", None) or getattr(self._resp.raw, "_connection", None)
        sock = getattr(conn, "sock", None)
        try:
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)  # unblocks the reading thread, which then sees a broken body
            else:
                self._resp.close()
        except OSError:
            pass

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


# -- URLs ----------------------------------------------------------------------------------------
def trip_url(base_url: str, service: str, month: date) -> str:
    """``{base}/trip-data/{service}_tripdata_{YYYY-MM}.parquet``."""
    return f"{base_url.rstrip('/')}/trip-data/{service}_tripdata_{month:%Y-%m}.parquet"


def zone_lookup_url(base_url: str) -> str:
    """``{base}/misc/taxi_zone_lookup.csv``."""
    return f"{base_url.rstrip('/')}/misc/taxi_zone_lookup.csv"


def base_url_of(url: str) -> str:
    """The source base URL a trip or zone URL was built from (for error messages)."""
    for marker in ("/trip-data/", "/misc/"):
        if marker in url:
            return url.split(marker, 1)[0]
    return url


def not_published_message(month: date | None, missing: Mapping[str, tuple[str, int | None]]) -> str:
    """The message a user sees when the source has no file for ``month``.

    ``missing`` maps each service whose file is missing to ``(url, http_status)``.
    """
    services = list(missing)
    names = (
        " and ".join(services) if len(services) <= 2 else ", ".join(services[:-1]) + f" and {services[-1]}"
    )
    when = f"{month:%Y-%m}" if month else "this month"
    detail = "; ".join(
        f"{s}: {'HTTP ' + str(code) if code else 'not found'} for {url}" for s, (url, code) in missing.items()
    )
    base = base_url_of(next(iter(missing.values()))[0]) if missing else "?"
    return (
        f"{names} trips for {when} are not published yet on the source ({detail}). "
        "The TLC publishes each month about 7-8 weeks after the month ends, so recent months are "
        "not available yet: materialise this partition again later. If the month should exist, check "
        f"that TLC_BASE_URL (now {base}) points at the TLC CloudFront host or a mirror with the same "
        "trip-data/ layout."
    )


def _month_from_url(url: str) -> date | None:
    match = _MONTH_IN_URL.search(url)
    if not match:
        return None
    year, month = match.group(1).split("-")
    return date(int(year), int(month), 1)


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


def _clean_etag(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    weak = value.startswith("W/")
    if weak:
        value = value[2:]
    value = value.strip('"')
    return f"W/{value}" if weak else value


def _content_length(headers) -> int | None:
    raw = headers.get("Content-Length")
    if raw is None:
        return None
    try:
        n = int(raw)
    except ValueError:
        return None
    return n if n >= 0 else None


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
        resp = requester.head(url, timeout=timeout, allow_redirects=True, headers=_request_headers())
    except requests.Timeout as exc:
        return ProbeResult(url=url, status="error", message=f"timed out after {timeout}s: {exc}")
    except requests.RequestException as exc:
        return ProbeResult(url=url, status="error", message=f"{type(exc).__name__}: {exc}")
    raw_lm = resp.headers.get("Last-Modified")
    common = dict(
        url=url,
        http_status=resp.status_code,
        size=_content_length(resp.headers),
        etag=_clean_etag(resp.headers.get("ETag")),
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


# -- streaming GET with retries ------------------------------------------------------------------
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


@dataclass(frozen=True, kw_only=True)
class _Fetched(FileVersion):
    first_bytes: bytes


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


def _request_headers() -> dict[str, str]:
    # identity: we keep the file byte for byte and check its length against Content-Length
    return {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}


def _get_once(
    session: requests.Session,
    url: str,
    sink: IO[bytes],
    *,
    timeout: Timeout,
    chunk_size: int,
    max_bytes: int | None,
    not_published: Callable[[int], NotPublishedError],
    deadline: float | None = None,
    verify_md5: bool = True,
) -> _Fetched:
    """One GET attempt streaming into ``sink`` (which the caller rewinds between attempts).

    ``deadline`` is a :func:`time.monotonic` instant after which the attempt is cut off (:class:`_DeadlineExceeded`).
    """
    if deadline is not None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _DeadlineExceeded("before the request was sent")
        connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        timeout = (min(connect, remaining), min(read, remaining))
    try:
        resp = session.get(url, stream=True, timeout=timeout, headers=_request_headers())
    except (requests.exceptions.SSLError, ssl.SSLError) as exc:
        raise _tls_error(url, exc) from exc
    except requests.Timeout as exc:
        if (
            deadline is not None and time.monotonic() >= deadline - 0.05
        ):  # the timeout was shortened to the deadline
            raise _DeadlineExceeded("waiting for the response") from exc
        raise _TransientError(f"timed out connecting or waiting for the response ({exc})") from exc
    except requests.ConnectionError as exc:
        raise _TransientError(f"connection failed ({exc})") from exc
    with resp:
        status = resp.status_code
        if status in NOT_PUBLISHED_STATUSES:
            raise not_published(status)
        if status in TRANSIENT_STATUSES or status >= 500:
            raise _TransientError(f"HTTP {status} {resp.reason or ''}".strip())
        if not 200 <= status < 300:
            raise DownloadError(f"{url} answered HTTP {status} {resp.reason or ''}; not retrying", url=url)
        expected = _content_length(resp.headers)
        encoding = (resp.headers.get("Content-Encoding") or "identity").lower()
        if encoding != "identity":
            expected = None  # the length is of the encoded body; the Parquet footer check still applies
        if expected is not None and max_bytes is not None and expected > max_bytes:
            raise TooLargeError(
                f"{url} announces {expected} bytes (Content-Length), more than the {max_bytes} byte limit "
                "(TAXI_DOWNLOAD_MAX_BYTES); nothing was downloaded. Raise the limit if the TLC really publishes "
                "files this large.",
                url=url,
            )
        if expected is not None and hasattr(resp.raw, "enforce_content_length"):
            # let a short body end normally so the length check below reports exactly what arrived
            resp.raw.enforce_content_length = False
        etag = _clean_etag(resp.headers.get("ETag"))
        etag_md5 = plain_md5_etag(etag) if verify_md5 and encoding == "identity" else None
        md5 = hashlib.md5(usedforsecurity=False) if etag_md5 else None
        digest = hashlib.sha256()
        size = 0
        first = b""
        watchdog = _Watchdog(resp, deadline)
        try:
            for chunk in resp.iter_content(chunk_size=chunk_size):
                if watchdog.fired or (deadline is not None and time.monotonic() >= deadline):
                    raise _DeadlineExceeded(f"after {size + len(chunk)} bytes")
                if not chunk:
                    continue
                if len(first) < 256:
                    first += chunk[: 256 - len(first)]
                digest.update(chunk)
                if md5 is not None:
                    md5.update(chunk)
                sink.write(chunk)
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise TooLargeError(
                        f"{url} sent more than the {max_bytes} byte limit (TAXI_DOWNLOAD_MAX_BYTES); the download "
                        "was aborted and nothing was written. Raise the limit if the TLC really publishes files "
                        "this large.",
                        url=url,
                    )
        except (requests.exceptions.SSLError, ssl.SSLError) as exc:
            if watchdog.fired:
                raise _DeadlineExceeded(f"after {size} bytes") from exc
            raise _tls_error(url, exc) from exc
        except requests.RequestException as exc:
            if watchdog.fired:
                raise _DeadlineExceeded(f"after {size} bytes") from exc
            raise _TransientError(_broken_body_message(exc, size, expected)) from exc
        finally:
            watchdog.cancel()
        if watchdog.fired:
            raise _DeadlineExceeded(f"after {size} bytes")
        if expected is not None and size != expected:
            raise _TransientError(
                f"body truncated: received {size} of {expected} bytes announced by Content-Length"
            )
        if md5 is not None and md5.hexdigest() != etag_md5:
            raise _TransientError(
                f"body corrupted in transit: its MD5 {md5.hexdigest()} differs from the ETag {etag_md5} "
                f"({size} bytes received)"
            )
        raw_lm = resp.headers.get("Last-Modified")
        return _Fetched(
            sha256=digest.hexdigest(),
            size=size,
            etag=etag,
            last_modified=parse_http_date(raw_lm),
            last_modified_raw=raw_lm,
            content_type=resp.headers.get("Content-Type"),
            first_bytes=first,
        )


def _broken_body_message(exc: BaseException, size: int, expected: int | None) -> str:
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        if expected is not None:
            return f"body truncated: received {size} of {expected} bytes announced by Content-Length ({exc})"
        return f"connection broken after {size} bytes ({exc})"
    if isinstance(exc, requests.Timeout):
        return f"read timed out after {size} bytes ({exc})"
    return f"connection lost after {size} bytes ({exc})"


def _get_with_retries(
    url: str,
    sink: IO[bytes],
    *,
    timeout: Timeout,
    retries: int,
    backoff: float,
    chunk_size: int = CHUNK_SIZE,
    max_bytes: int | None = None,
    not_published: Callable[[int], NotPublishedError],
    session: requests.Session | None = None,
    logger: logging.Logger | None = None,
    deadline_seconds: float | None = None,
    verify_md5: bool = True,
) -> tuple[_Fetched, int]:
    """GET ``url`` into ``sink`` with up to ``retries`` retries on transient errors; returns (result, attempts).

    ``deadline_seconds`` bounds the whole download, every attempt and backoff wait included."""
    logger = logger or log
    own_session = session is None
    session = session or requests.Session()
    attempt = 0
    deadline = None if deadline_seconds is None else time.monotonic() + deadline_seconds

    def deadline_error(detail: str, cause: BaseException | None = None) -> DownloadError:
        return DownloadError(
            f"download of {url} did not finish within its {deadline_seconds:g} s deadline "
            f"(TAXI_DOWNLOAD_DEADLINE_SECONDS; attempt {attempt}: {detail}). The source is too slow or stalled; "
            "nothing was written, try again later.",
            url=url,
            attempts=attempt,
            transient=True,
        )

    try:
        while True:
            attempt += 1
            sink.seek(0)
            sink.truncate()
            try:
                return (
                    _get_once(
                        session,
                        url,
                        sink,
                        timeout=timeout,
                        chunk_size=chunk_size,
                        max_bytes=max_bytes,
                        not_published=not_published,
                        deadline=deadline,
                        verify_md5=verify_md5,
                    ),
                    attempt,
                )
            except _DeadlineExceeded as exc:
                raise deadline_error(f"cut off {exc}") from exc
            except _TransientError as exc:
                if attempt > retries:
                    raise DownloadError(
                        f"download of {url} failed after {attempt} attempt(s): {exc}. The source or network "
                        "may be having trouble; try again later.",
                        url=url,
                        attempts=attempt,
                        transient=True,
                    ) from exc
                wait = backoff * (2 ** (attempt - 1))
                if deadline is not None and time.monotonic() + wait >= deadline:
                    raise deadline_error(f"{exc}; no time left to retry") from exc
                logger.warning(f"GET {url} attempt {attempt} failed: {exc}; retrying in {wait:.2f}s")
                if wait > 0:
                    time.sleep(wait)
            except DownloadError as exc:
                exc.attempts = attempt
                raise
    finally:
        if own_session:
            session.close()


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
    month = month or _month_from_url(url)

    def not_published(status: int) -> NotPublishedError:
        return NotPublishedError(
            not_published_message(month, {service: (url, status)}), url=url, http_status=status
        )

    with open(local_path, "wb") as sink:
        fetched, attempts = _get_with_retries(
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
    fetched, attempts = _get_with_retries(
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
