"""DuckDB connections that read the lake, for :class:`~taxi_platform.lake.lake.Lake`.

DuckDB connections (:meth:`DuckDBConnections.connect`) spill to ``$TAXI_DATA_DIR/duckdb_tmp`` and use the memory limit
from settings.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import shutil
import uuid
from pathlib import Path

OWNERS_SUFFIX = ".owners"  # <temp_root>.owners/<pid>-<token>.lock: one per process, flock-held while it lives


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OSError:
        return False
    return True


_SWEPT: set[str] = set()  # spill roots this process has already cleaned
_OWNERS: dict[tuple[str, int], tuple[str, int]] = {}  # (root, pid) -> (owner name, fd holding its lock)


def _owners_dir(root: Path) -> Path:
    return root.with_name(root.name + OWNERS_SUFFIX)


def _owner(root: Path) -> str:
    """This process's owner name under ``root`` (``<pid>-<6 hex>``), its lock file held for the process's life.

    The lock file is created and locked under a temporary name, then renamed into place: a sweeper never sees
    an owner's lock before it is held. A PID says nothing once the process is gone (PIDs are reused, and a
    process in another PID namespace sharing the data dir has PIDs of its own); a held lock does.
    """
    key = (str(root), os.getpid())
    if key not in _OWNERS:
        name = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
        owners = _owners_dir(root)
        owners.mkdir(parents=True, exist_ok=True)
        tmp = owners / f".{name}.tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(tmp, owners / f"{name}.lock")
        _OWNERS[key] = (name, fd)
        atexit.register(_release, owners / f"{name}.lock", os.getpid())
    return _OWNERS[key][0]


def _release(lock: Path, pid: int) -> None:
    """At a normal exit, drop the owner lock (DuckDB removed the spill directories when they closed)."""
    if pid == os.getpid():  # not in a forked child that inherited the hook
        lock.unlink(missing_ok=True)


def _dead_lock(lock: Path) -> int | None:
    """A descriptor holding ``lock`` when its owner is gone (the caller removes it, then closes), else None."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _sweep(root: Path) -> None:
    """Remove what processes that no longer run left under ``root``: spill directories whose owner's lock is free
    (then the lock), and directories without an owner lock (older releases) whose PID is not running."""
    owners = _owners_dir(root)
    locked = {p.name.removesuffix(".lock"): p for p in owners.glob("*.lock")} if owners.is_dir() else {}
    entries = [e for e in root.iterdir() if e.is_dir() and e.name.split("-", 1)[0].isdigit()]
    for name, lock in locked.items():
        fd = _dead_lock(lock)
        if fd is None:
            continue
        try:  # the spill directories first, the lock last: a sweep killed half-way is finished by the next
            for entry in entries:
                if entry.name.startswith(name):
                    shutil.rmtree(entry, ignore_errors=True)
            lock.unlink(missing_ok=True)
        finally:
            os.close(fd)
    for tmp in owners.glob(".*.tmp") if owners.is_dir() else ():
        fd = _dead_lock(tmp)  # a process killed while taking its lock
        if fd is not None:
            tmp.unlink(missing_ok=True)
            os.close(fd)
    for entry in entries:
        pid = int(entry.name.split("-", 1)[0])
        owned = entry.name[: entry.name.index("-") + 7] in locked
        if not owned and pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(entry, ignore_errors=True)


def spill_directory(temp_root: str, sweep: bool = True) -> str:
    """A fresh spill directory path for one DuckDB connection under ``temp_root`` (created lazily by DuckDB).

    ``temp_root`` is created; its name is ``<owner>-<6 hex>``, the owner being this process's lock (see
    :func:`_owner`). With ``sweep``, directories left behind by processes that no longer run are removed; a
    live process's never are."""
    root = Path(temp_root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        if sweep:
            _sweep(root)
        return str(root / f"{_owner(root)}{uuid.uuid4().hex[:6]}")
    except (
        OSError
    ):  # an unwritable data dir only matters once DuckDB spills, and then DuckDB names the directory
        return str(root / f"{os.getpid()}-{uuid.uuid4().hex[:12]}")


class DuckDBConnections:
    """The lake's DuckDB connections; a mixin of :class:`~taxi_platform.lake.lake.Lake`, which provides
    ``is_remote`` and ``fs``."""

    def connect(
        self, threads: int | None = None, memory_limit: str | None = None, temp_root: str | None = None
    ):
        """A fresh in-process DuckDB connection that can read this lake.

        DuckDB spills sorts, joins and aggregates that outgrow ``memory_limit`` (default: ``TAXI_DUCKDB_MEMORY_LIMIT``,
        50 % of memory) to disk. Its default spill directory is ``.tmp`` in the working directory, which the image's
        unprivileged user cannot create; every connection here spills into a directory of its own under ``temp_root``
        (default ``$TAXI_DATA_DIR/duckdb_tmp``), named ``<pid>-<random>``. DuckDB creates that directory only when it
        spills and removes it when the connection closes; directories left by killed processes (their owner lock in
        ``duckdb_tmp.owners`` is free) are removed by the first connection a process opens under that root.
        """
        import duckdb

        from taxi_platform.core.setting_values import parse_memory_limit
        from taxi_platform.core.settings import load_duckdb_settings

        settings = load_duckdb_settings()
        limit = parse_memory_limit(memory_limit, "memory_limit") if memory_limit else settings.memory_limit
        root = temp_root or str(settings.temp_root)
        # Directories of dead processes are swept once per process and root, not on every connection: a step
        # opens connections in a loop and the spill root can hold many entries.
        config = {
            "memory_limit": limit,
            "temp_directory": spill_directory(root, sweep=root not in _SWEPT),
            "preserve_insertion_order": False,
        }
        if threads:
            config["threads"] = int(threads)
        con = duckdb.connect(":memory:", config=config)
        _SWEPT.add(root)
        if self.is_remote:
            con.register_filesystem(self.fs)
        return con

    def source_label(self, path: str, con=None) -> str:
        """``synthetic`` for the sample generator's files, ``tlc`` for everything else (real TLC data)."""
        return self.data_source(path, con) or "tlc"

    def data_source(self, path: str, con=None) -> str | None:
        """The ``data_source`` key-value metadata of a Parquet file (or of the first file of a glob), if any.

        Uses ``con`` (a connection from :meth:`connect`) when given, else a connection of its own."""
        from taxi_platform.core.sql import sql_literal

        own = con is None
        con = self.connect() if own else con
        try:
            rows = con.execute(
                f"SELECT value FROM parquet_kv_metadata({sql_literal(path)}) WHERE decode(key) = 'data_source'"
            ).fetchall()
        finally:
            if own:
                con.close()
        return bytes(rows[0][0]).decode() if rows else None
