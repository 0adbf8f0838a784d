"""Reading a month's served quotes back from the fare service's prediction log, local or in the cloud.

The log is what :mod:`taxi_platform.serving.prediction_log` writes — local JSON-lines files
``predictions-YYYY-MM-DD-<pid>.jsonl`` — or what the Cloud Logging sink makes of its stdout lines in the
predictions bucket: objects ``<log name>/YYYY/MM/DD/HH:MM:SS_HH:MM:SS_S<n>.json`` holding one ``LogEntry`` per
line, the record under ``jsonPayload``. Both are named by the (UTC) day they were written.

:func:`read_log` collects the quotes of one **pickup** month and nothing else:

- **only the files that can hold the month**: a quote asks about a pickup at most a year ahead
  (:data:`taxi_platform.serving.quote_limits.MAX_DAYS_AHEAD`), so a file dated more than that before the month's first
  day cannot hold one of its pickups and is not opened (a file whose name carries no date is read). Quotes
  about past pickups are accepted by the service, so later files are all read;
- **streamed**, one line at a time; a line whose text does not contain ``"YYYY-MM-`` holds no pickup of the
  month and is not parsed; of the others only the month's quotes are kept, as columns
  (:class:`taxi_platform.monitoring.served_quotes.QuoteColumns`). Memory grows with the month's quotes, not with the
  history.

A line delivered twice (a retried log shipment) is counted once. A quote is identified by the server's request
id and its index in the request (lines with ``client_request_id``, written since ids are the server's); on
older lines, whose request id may be a client's, only a record equal in every field (time to the
millisecond, ids, quote, fare) is a duplicate. Unreadable lines that could hold the month are skipped and
counted.

Only whole lines are read: the service appends each line with its newline in one write, so a local file's final
line without a newline is being written or was torn by a killed worker; it is skipped and counted as
``torn_lines``, never parsed (a torn line closed later by a restarted writer's newline fails to parse and is
counted as unreadable). The sink's objects are whole by construction and their last line may lack a newline.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from taxi_platform.monitoring.served_quotes import QuoteColumns, quote_values
from taxi_platform.serving.prediction_log import explode
from taxi_platform.serving.quote_limits import MAX_DAYS_AHEAD

if TYPE_CHECKING:  # pragma: no cover - typing only
    import fsspec

# New York is behind UTC, and the writer names a file by the last record of the batch it flushes: a day each.
SLACK_DAYS = 2
_LOCAL_NAME = re.compile(r"(?:^|/)predictions-(\d{4})-(\d{2})-(\d{2})-[^/]*\.jsonl$")
_SINK_NAME = re.compile(r"(?:^|/)(\d{4})/(\d{2})/(\d{2})/[^/]+\.json$")


class LogUnreadable(RuntimeError):
    """The log location exists (or should) but cannot be listed or read: permissions, credentials, network."""


def file_day(path: str) -> date | None:
    """The day a log file was written, from its name (local file or the sink's object); None if unnamed."""
    match = _LOCAL_NAME.search(path) or _SINK_NAME.search(path)
    if match is None:
        return None
    try:
        return date(*map(int, match.groups()))
    except ValueError:
        return None


def earliest_log_day(month: str) -> date:
    """The first day whose log can hold a quote for a pickup in ``month`` (``YYYY-MM``)."""
    first = date(int(month[:4]), int(month[5:7]), 1)
    return first - timedelta(days=MAX_DAYS_AHEAD + SLACK_DAYS)


def _filesystem(source: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem of ``source`` (gs:// set up like the lake's: project, emulator, no listings cache)."""
    from fsspec.implementations.local import LocalFileSystem

    from taxi_platform.lake.gcs import GCSConfigError, filesystem_for

    if "://" not in source or source.startswith("file://"):
        return LocalFileSystem(), source.removeprefix("file://")
    try:
        fs = filesystem_for(source)
    except GCSConfigError as exc:
        raise LogUnreadable(str(exc)) from exc
    return fs, source.split("://", 1)[1]


def _list(fs: fsspec.AbstractFileSystem, root: str, source: str) -> list[str]:
    try:
        if not fs.exists(root):
            return []
        found = fs.find(root)
    except (PermissionError, OSError) as exc:
        raise LogUnreadable(f"cannot list the prediction log under {source}: {exc}") from exc
    names = [p for p in found if p.rsplit("/", 1)[-1].endswith((".jsonl", ".json"))]
    return sorted(p for p in names if not p.rsplit("/", 1)[-1].startswith("."))


def log_files(source: str) -> list[str]:
    """Every prediction-log file under ``source`` (a local directory or ``gs://bucket[/prefix]``), sorted;
    ``[]`` when there is none or the location does not exist. ``LogUnreadable`` when it cannot be listed."""
    fs, root = _filesystem(source)
    protocol = (
        source.split("://", 1)[0] + "://" if "://" in source and not source.startswith("file://") else ""
    )
    return [protocol + p for p in _list(fs, root, source)]


def _records(line: str) -> Iterator[dict[str, Any]]:
    obj = json.loads(line)
    if isinstance(obj, dict) and isinstance(obj.get("jsonPayload"), dict):  # Cloud Logging LogEntry
        obj = obj["jsonPayload"]
    if isinstance(obj, dict) and "count" in obj and "fare_amount" in obj:
        yield obj


def _month_quotes(line: str, month: str) -> list[tuple[tuple, tuple]]:
    """``(dedup key, values)`` of the line's quotes picked up in ``month``; raises on a malformed line."""
    out = []
    for record in _records(line):
        pickups = record["pickup_datetime"]
        if not isinstance(pickups, list) or len(pickups) != int(record["count"]):
            raise ValueError("pickup_datetime is not a list of count values")
        wanted = {i for i, t in enumerate(pickups) if str(t)[:7] == month}
        if not wanted:
            continue
        server_ids = "client_request_id" in record
        for i, quote in enumerate(explode(record)):
            if i not in wanted:
                continue
            values = quote_values(quote)
            # values: ts, request_id, client id, endpoint, model_version, role, index, quote fields, fare
            key = (values[1], values[5], values[6]) if server_ids else values
            out.append((key, values))
    return out


def read_log(source: str, month: str) -> tuple[QuoteColumns, dict[str, int]]:
    """The quotes served for pickups in ``month`` (``YYYY-MM``) from the log under ``source``, and statistics:
    ``files`` (all log files there), ``files_read`` (those that can hold the month), ``lines`` (read),
    ``lines_parsed`` (that could hold the month), ``unreadable_lines``, ``duplicate_quotes``, and ``torn_lines``
    when there are any (module docstring).
    """
    month = month[:7]
    fs, root = _filesystem(source)
    files = _list(fs, root, source)
    first = earliest_log_day(month)
    chosen = [p for p in files if (day := file_day(p)) is None or day >= first]
    stats = {
        "files": len(files),
        "files_read": len(chosen),
        "lines": 0,
        "lines_parsed": 0,
        "unreadable_lines": 0,
        "duplicate_quotes": 0,
    }
    columns = QuoteColumns()
    seen: set[tuple] = set()
    needle = f'"{month}-'
    for path in chosen:
        whole_lines_only = path.endswith(".jsonl")  # the service's own files (module docstring)
        try:
            with fs.open(path, "rb") as raw, io.TextIOWrapper(raw, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    if not line.strip():
                        continue
                    if whole_lines_only and not line.endswith("\n"):
                        stats["torn_lines"] = stats.get("torn_lines", 0) + 1
                        continue
                    stats["lines"] += 1
                    if needle not in line:
                        continue
                    stats["lines_parsed"] += 1
                    try:
                        quotes = _month_quotes(line, month)
                    except (ValueError, KeyError, TypeError, IndexError):
                        stats["unreadable_lines"] += 1
                        continue
                    for key, values in quotes:
                        if key in seen:
                            stats["duplicate_quotes"] += 1
                            continue
                        seen.add(key)
                        columns.add(values)
        except (PermissionError, OSError) as exc:
            raise LogUnreadable(f"cannot read prediction-log file {path}: {exc}") from exc
    return columns, stats
