"""Streaming ``GET`` with retries, deadlines and size limits: the transfer under every TLC download.

Transient failures (HTTP 5xx/429, connection resets, timeouts, truncated bodies, a body whose MD5 differs from
a plain-MD5 ETag) are retried with exponential backoff. Every download has limits: an overall deadline per file
(all attempts and waits included; a server trickling bytes is cut off when it passes) and a size cap (a
``Content-Length`` over it is refused before any byte is read; a body growing past it is aborted). TLS failures
and missing files are not retried (see :mod:`taxi_platform.ingest.tlc_errors`).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

import requests

from taxi_platform.ingest.tlc_errors import DownloadError, NotPublishedError, TlsError, TooLargeError
from taxi_platform.ingest.tlc_http import (
    CHUNK_SIZE,
    NOT_PUBLISHED_STATUSES,
    TRANSIENT_STATUSES,
    FileVersion,
    Timeout,
    clean_etag,
    content_length,
    parse_http_date,
    plain_md5_etag,
    request_headers,
)
from taxi_platform.ingest.tlc_urls import base_url_of

log = logging.getLogger(__name__)


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


@dataclass(frozen=True, kw_only=True)
class _Fetched(FileVersion):
    first_bytes: bytes


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
    resp = _send(session, url, timeout=timeout, deadline=deadline)
    with resp:
        expected, encoding = _check_response(resp, url, max_bytes=max_bytes, not_published=not_published)
        etag = clean_etag(resp.headers.get("ETag"))
        etag_md5 = plain_md5_etag(etag) if verify_md5 and encoding == "identity" else None
        body = _read_body(
            resp, url, sink, chunk_size=chunk_size, max_bytes=max_bytes, deadline=deadline, expected=expected,
            with_md5=etag_md5 is not None,
        )  # fmt: skip
        if expected is not None and body.size != expected:
            raise _TransientError(
                f"body truncated: received {body.size} of {expected} bytes announced by Content-Length"
            )
        if body.md5 is not None and body.md5 != etag_md5:
            raise _TransientError(
                f"body corrupted in transit: its MD5 {body.md5} differs from the ETag {etag_md5} "
                f"({body.size} bytes received)"
            )
        raw_lm = resp.headers.get("Last-Modified")
        return _Fetched(
            sha256=body.sha256,
            size=body.size,
            etag=etag,
            last_modified=parse_http_date(raw_lm),
            last_modified_raw=raw_lm,
            content_type=resp.headers.get("Content-Type"),
            first_bytes=body.first_bytes,
        )


def _send(
    session: requests.Session, url: str, *, timeout: Timeout, deadline: float | None
) -> requests.Response:
    """Send the GET, its timeouts shortened to what is left before ``deadline``; return the streaming response."""
    if deadline is not None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _DeadlineExceeded("before the request was sent")
        connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        timeout = (min(connect, remaining), min(read, remaining))
    try:
        return session.get(url, stream=True, timeout=timeout, headers=request_headers())
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


def _check_response(
    resp: requests.Response,
    url: str,
    *,
    max_bytes: int | None,
    not_published: Callable[[int], NotPublishedError],
) -> tuple[int | None, str]:
    """Raise for a status or announced size not worth reading; return (expected length, content encoding)."""
    status = resp.status_code
    if status in NOT_PUBLISHED_STATUSES:
        raise not_published(status)
    if status in TRANSIENT_STATUSES or status >= 500:
        raise _TransientError(f"HTTP {status} {resp.reason or ''}".strip())
    if not 200 <= status < 300:
        raise DownloadError(f"{url} answered HTTP {status} {resp.reason or ''}; not retrying", url=url)
    expected = content_length(resp.headers)
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
    return expected, encoding


@dataclass(frozen=True)
class _Body:
    """What :func:`_read_body` wrote to the sink: its size, digests and first bytes."""

    size: int
    sha256: str
    md5: str | None
    first_bytes: bytes


def _read_body(
    resp: requests.Response,
    url: str,
    sink: IO[bytes],
    *,
    chunk_size: int,
    max_bytes: int | None,
    deadline: float | None,
    expected: int | None,
    with_md5: bool,
) -> _Body:
    """Stream the body into ``sink``, hashing it, until it ends, passes ``max_bytes`` or the deadline."""
    md5 = hashlib.md5(usedforsecurity=False) if with_md5 else None
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
    return _Body(size, digest.hexdigest(), md5.hexdigest() if md5 is not None else None, first)


def _broken_body_message(exc: BaseException, size: int, expected: int | None) -> str:
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        if expected is not None:
            return f"body truncated: received {size} of {expected} bytes announced by Content-Length ({exc})"
        return f"connection broken after {size} bytes ({exc})"
    if isinstance(exc, requests.Timeout):
        return f"read timed out after {size} bytes ({exc})"
    return f"connection lost after {size} bytes ({exc})"


def get_with_retries(
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
    get_once = functools.partial(
        _get_once,
        session,
        url,
        sink,
        timeout=timeout,
        chunk_size=chunk_size,
        max_bytes=max_bytes,
        not_published=not_published,
        deadline=deadline,
        verify_md5=verify_md5,
    )
    try:
        while True:
            attempt += 1
            sink.seek(0)
            sink.truncate()
            try:
                return get_once(), attempt
            except _DeadlineExceeded as exc:
                raise _deadline_error(url, deadline_seconds, attempt, f"cut off {exc}") from exc
            except _TransientError as exc:
                _wait_before_retry(url, exc, attempt, retries, backoff, deadline, deadline_seconds, logger)
            except DownloadError as exc:
                exc.attempts = attempt
                raise
    finally:
        if own_session:
            session.close()


def _wait_before_retry(
    url: str,
    exc: _TransientError,
    attempt: int,
    retries: int,
    backoff: float,
    deadline: float | None,
    deadline_seconds: float | None,
    logger: logging.Logger,
) -> None:
    """Sleep the backoff after failed attempt ``attempt``, or raise when no retry or no time is left."""
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
        raise _deadline_error(url, deadline_seconds, attempt, f"{exc}; no time left to retry") from exc
    logger.warning(f"GET {url} attempt {attempt} failed: {exc}; retrying in {wait:.2f}s")
    if wait > 0:
        time.sleep(wait)


def _deadline_error(url: str, deadline_seconds: float | None, attempt: int, detail: str) -> DownloadError:
    return DownloadError(
        f"download of {url} did not finish within its {deadline_seconds:g} s deadline "
        f"(TAXI_DOWNLOAD_DEADLINE_SECONDS; attempt {attempt}: {detail}). The source is too slow or stalled; "
        "nothing was written, try again later.",
        url=url,
        attempts=attempt,
        transient=True,
    )
