"""The errors the TLC client raises.

TLS failures (untrusted certificate, handshake errors) are not retried: they raise :class:`TlsError`. A missing file
(HTTP 404, or 403 which CloudFront returns for missing keys) is not retried: it raises :class:`NotPublishedError`,
because the TLC simply has not published that month yet. Anything that is not a Parquet trip file raises
:class:`DownloadError` without retrying.
"""

from __future__ import annotations


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
