"""The prediction log's write-through day files (:class:`DayFile`): whole lines appended before a request is
answered, each day's file of each process its own (see :mod:`taxi_platform.serving.prediction_log`, Durability)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

FILE_PREFIX = "predictions-"


def day_file_path(directory: Path, day: str, pid: int | None = None) -> Path:
    """``<directory>/predictions-YYYY-MM-DD-<pid>.jsonl``: one file per process and UTC day."""
    return directory / f"{FILE_PREFIX}{day}-{os.getpid() if pid is None else pid}.jsonl"


class DayFile:
    """The write-through file sink: appends whole lines to the day file of each record's UTC day.

    The steps, each of which a kill may interrupt (the crash test enumerates them): open the day's file
    (``O_APPEND | O_CREAT``); if it is not empty and does not end in a newline (a writer with the same pid was
    killed mid-write), write a newline to close the torn fragment; append each record's lines with ``write``
    (repeated for a short write); on a new day (or when the file was moved away, looked at most once a second)
    ``fsync`` and ``close`` the old file and open the new one. Thread-safe (a lock around each append)."""

    CHECK_MOVED_EVERY = 1.0  # seconds between checks that the open file still has its name

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._day: str | None = None
        self._path: Path | None = None
        self._checked_at = 0.0

    def append(self, day: str, data: bytes) -> None:
        with self._lock:
            fd = self._open(day)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]

    def _open(self, day: str) -> int:
        now = time.monotonic()
        if self._fd is not None and self._day == day:
            if now - self._checked_at < self.CHECK_MOVED_EVERY:
                return self._fd
            self._checked_at = now
            if self._path is not None and self._path.exists():
                return self._fd
        self._close_fd()
        path = day_file_path(self.directory, day)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and _last_byte(path, size) != b"\n":
                os.write(fd, b"\n")  # close a fragment torn by a writer killed mid-write
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._day, self._path, self._checked_at = fd, day, path, now
        return fd

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def close(self) -> None:
        with self._lock:
            self._close_fd()


def _last_byte(path: Path, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, 1, size - 1)
    finally:
        os.close(fd)
