"""DuckDB connections that read the lake, for :class:`~taxi_platform.lake.lake.Lake`.

DuckDB connections (:meth:`DuckDBConnections.connect`) spill to ``$TAXI_DATA_DIR/duckdb_tmp`` and use the memory limit
from settings.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


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


def spill_directory(temp_root: str, sweep: bool = True) -> str:
    """A fresh spill directory path for one DuckDB connection under ``temp_root`` (created lazily by DuckDB).

    ``temp_root`` is created; with ``sweep``, subdirectories left behind by processes that no longer run are
    removed."""
    root = Path(temp_root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        for entry in root.iterdir() if sweep else ():
            pid_text = entry.name.split("-", 1)[0]
            if (
                entry.is_dir()
                and pid_text.isdigit()
                and int(pid_text) != os.getpid()
                and not _pid_alive(int(pid_text))
            ):
                shutil.rmtree(entry, ignore_errors=True)
    except (
        OSError
    ):  # an unwritable data dir only matters once DuckDB spills, and then DuckDB names the directory
        pass
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
        spills and removes it when the connection closes; directories left by killed processes are removed by the
        first connection a process opens under that root.
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
