"""The Parquet lake: Hive-layout paths under one root, local or ``gs://``, with atomic writes.

A table partition (``<table>/month=YYYY-MM``) written through :meth:`Lake.staged_partition` is a pointer to an
immutable version holding its ``*.parquet`` parts (``part-0``, and for large local months ``part-1``, written in
parallel; names carry the version id): locally a relative symlink replaced in one ``os.replace``
(:mod:`taxi_platform.lake.partition_versions`), on GCS a ``CURRENT`` object written with a generation precondition
(:mod:`taxi_platform.lake.gcs_partitions`). Writers of one partition are serialised (a ``flock`` locally, a lease on
GCS); readers resolve the pointer once (:meth:`Lake.partition_glob`, :meth:`Lake.partition_files`) and so read one
version whole; leftovers of interrupted writes and partitions of the previous layout (a plain directory of parts) are
repaired by the next write or read. Single files (zone lookup, reports, a month's raw files) are moved into place with
``os.replace`` / a single upload; files that belong together (a month's raw files, one per service) are published as
one unit by :meth:`Lake.staged_files`: all new, or, if any move fails, all previous (see :meth:`Lake.publish_files`).

DuckDB connections (:meth:`Lake.connect`) spill to ``$TAXI_DATA_DIR/duckdb_tmp`` and use the memory limit from
settings.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from taxi_platform.lake import partition_versions

PART_FILE = "part-0.parquet"


def part_name(index: int) -> str:
    """File name of a partition's ``index``-th Parquet part."""
    return f"part-{int(index)}.parquet"


def month_dir(partition_key: str) -> str:
    """``2024-03-01`` or ``2024-03`` → ``month=2024-03``."""
    return f"month={partition_key[:7]}"


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


class Lake:
    """A lake rooted at a local directory or a ``gs://bucket/prefix`` URL."""

    # How long a superseded version of a partition stays readable, and the GCS lease's lifetime and wait (None: wait
    # as long as the other run holds it).
    version_grace_seconds: float = partition_versions.GRACE_SECONDS
    lease_seconds: float = 120.0
    lease_wait_seconds: float | None = None

    def __init__(self, root: str, filesystem=None):
        self._remote = None
        self.root = root.rstrip("/")
        self.is_remote = "://" in self.root and not self.root.startswith("file://")
        if self.root.startswith("file://"):
            self.root = self.root[len("file://") :]
        self._fs = filesystem

    # -- paths -----------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return "/".join([self.root, *[p.strip("/") for p in parts if p]])

    def partition_path(self, table: str, partition_key: str, filename: str = PART_FILE) -> str:
        return self.path(table, month_dir(partition_key), filename)

    def partition_dir(self, table: str, partition_key: str) -> str:
        return self.path(table, month_dir(partition_key))

    def partition_glob(self, table: str, partition_key: str) -> str:
        """Every Parquet part of one version of a partition, for ``read_parquet``: the pointer is resolved here, once,
        so a read sees that version whole even if the partition is replaced meanwhile. Without a partition, the glob
        through the pointer (which matches nothing: DuckDB reports the path)."""
        where = self.resolve_partition(self.partition_dir(table, partition_key))
        return f"{where or self.partition_dir(table, partition_key)}/*.parquet"

    def raw_trips_path(self, service: str, partition_key: str) -> str:
        """Where ``raw_trips`` keeps the TLC file of one service and month, byte for byte."""
        month = partition_key[:7]
        return self.path(
            "raw_trips", f"service={service}", month_dir(partition_key), f"{service}_tripdata_{month}.parquet"
        )

    def raw_trip_months(self, service: str) -> list[str]:
        """``YYYY-MM`` of every month ``raw_trips`` holds a directory for, for one service, oldest first."""
        from taxi_platform.core.months import MonthError, month_label

        months = set()
        for name in self.listdir(self.path("raw_trips", f"service={service}")):
            if name.startswith("month="):
                try:
                    months.add(month_label(name[len("month=") :]))
                except MonthError:
                    continue  # not a partition directory
        return sorted(months)

    def remove_empty_dirs(self, paths: Sequence[str], table: str) -> None:
        """Drop the directories above ``paths`` (up to ``table``'s root) that are empty: what staging created for
        files that never arrived. Object stores have no empty directories."""
        if self.is_remote:
            return
        stop = os.path.abspath(self.path(table))
        for path in paths:
            directory = os.path.dirname(os.path.abspath(path))
            while directory.startswith(stop) and os.path.isdir(directory):
                try:
                    os.rmdir(directory)  # only succeeds when empty
                except OSError:
                    break
                if directory == stop:
                    break
                directory = os.path.dirname(directory)

    def parquet_schema(self, path: str):
        """The Arrow schema of a Parquet file, from its footer."""
        import pyarrow.parquet as pq

        with self.fs.open(path, "rb") as fh:
            return pq.ParquetFile(fh).schema_arrow

    def zones_csv_path(self) -> str:
        return self.path("taxi_zones", "taxi_zone_lookup.csv")

    def zones_parquet_path(self) -> str:
        return self.path("taxi_zones", "zones.parquet")

    def table_glob(self, table: str) -> str:
        return self.path(table, "month=*", "*.parquet")

    # -- filesystem ------------------------------------------------------------------------
    @property
    def fs(self):
        if self._fs is None:
            if self.is_remote:
                from taxi_platform.lake.gcs import filesystem_for

                self._fs = filesystem_for(self.root)
            else:
                import fsspec

                self._fs = fsspec.filesystem("file")
        return self._fs

    def exists(self, path: str) -> bool:
        return os.path.exists(path) if not self.is_remote else self.fs.exists(path)

    def listdir(self, path: str) -> list[str]:
        if not self.is_remote:
            return sorted(os.listdir(path)) if os.path.isdir(path) else []
        try:
            return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(path, detail=False))
        except FileNotFoundError:
            return []

    def partitions(self, table: str) -> list[str]:
        """Months (``YYYY-MM``) with a complete partition of ``table``."""
        if self.is_remote:  # one listing instead of one request per month
            found = self.fs.glob(self.path(table, "month=*", "*"))
            return sorted(
                {p.rsplit("/", 2)[-2][len("month=") :] for p in found if p.endswith(("/CURRENT", ".parquet"))}
            )
        return [
            name[len("month=") :]
            for name in self.listdir(self.path(table))
            if name.startswith("month=") and self.has_partition(table, name[len("month=") :])
        ]

    # -- atomic writes ---------------------------------------------------------------------
    @contextmanager
    def staged_file(self, dest: str, suffix: str = "") -> Iterator[str]:
        """Yield a local temporary path; on success move it to ``dest`` atomically.

        On any exception the temporary file is removed and ``dest`` is untouched. The temporary name is a
        dot-file ending in ``.tmp``, so globs such as ``month=*/*.parquet`` never read a half-written file,
        even one left behind by a process that was killed.
        """
        if not self.is_remote:
            Path(dest).parent.mkdir(parents=True, exist_ok=True)
            tmp_dir = str(Path(dest).parent)
        else:
            tmp_dir = None
        fd, tmp = tempfile.mkstemp(prefix=f".{Path(dest).name}.", suffix=f"{suffix}.tmp", dir=tmp_dir)
        os.close(fd)
        try:
            yield tmp
            self.publish(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def publish(self, local_file: str, dest: str) -> None:
        """Move a finished local file to ``dest`` in one atomic step."""
        if not self.is_remote:
            Path(dest).parent.mkdir(parents=True, exist_ok=True)
            os.chmod(local_file, 0o644)  # mkstemp creates 0600; lake files are readable like any other output
            try:
                os.replace(local_file, dest)
            except OSError:  # different filesystem: copy next to dest, then rename
                tmp = str(Path(dest).parent / f".{Path(dest).name}.{uuid.uuid4().hex[:8]}.tmp")
                try:
                    shutil.copyfile(local_file, tmp)
                    os.replace(tmp, dest)
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
                os.unlink(local_file)
        else:
            self.fs.put_file(local_file, dest)
            os.unlink(local_file)

    @contextmanager
    def staged_files(self, dests: Sequence[str], suffix: str = "") -> Iterator[list[str]]:
        """Like :meth:`staged_file` for several files that belong together (a month's raw files, one per service).

        Yields one local temporary path per ``dests`` entry; when the block succeeds they are published as one unit
        (:meth:`publish_files`): all new files, or, if anything fails, all previous files. On any exception in the
        block nothing changes."""
        tmps: list[str] = []
        try:
            for dest in dests:
                if not self.is_remote:
                    Path(dest).parent.mkdir(parents=True, exist_ok=True)
                tmp_dir = None if self.is_remote else str(Path(dest).parent)
                fd, tmp = tempfile.mkstemp(prefix=f".{Path(dest).name}.", suffix=f"{suffix}.tmp", dir=tmp_dir)
                os.close(fd)
                tmps.append(tmp)
            yield list(tmps)
            self.publish_files(list(zip(tmps, dests, strict=True)))
        finally:
            for tmp in tmps:
                if os.path.exists(tmp):
                    os.unlink(tmp)

    def publish_files(self, files: Sequence[tuple[str, str]]) -> None:
        """Move finished local files to their destinations as one unit: ``files`` is ``[(local_file, dest), ...]``.

        Each previous file is first kept under a hidden backup name (a hard link locally, a server-side copy on GCS),
        then every new file is moved into place. If any move fails, the files already replaced are restored from
        their backups (new files where there was none are removed) and the error is raised, so the destinations hold
        either all the new files or all the previous ones. Readers never see a destination missing; between the
        moves (milliseconds locally, one upload per file on GCS) a reader may see some new files next to old ones.
        """
        backups: list[tuple[str, str | None]] = []  # (dest, backup) for every dest prepared so far
        done: list[tuple[str, str | None]] = []
        try:
            for _local, dest in files:
                backups.append((dest, self._backup(dest)))
            for (local, dest), (_dest, backup) in zip(files, backups, strict=True):
                self.publish(local, dest)
                done.append((dest, backup))
        except BaseException:
            for dest, backup in reversed(done):
                try:
                    self._restore(dest, backup)
                except Exception:  # keep restoring the others; the original error is what the caller needs
                    continue
            raise
        finally:
            for _dest, backup in backups:
                if backup is not None:
                    self._discard(backup)

    def _backup(self, dest: str) -> str | None:
        if not self.exists(dest):
            return None
        name = dest.rsplit("/", 1)[-1]
        backup = f"{dest.rsplit('/', 1)[0]}/.{name}.{uuid.uuid4().hex[:8]}.bak"
        if self.is_remote:
            self.fs.copy(dest, backup)
            return backup
        try:
            os.link(dest, backup)
        except OSError:  # no hard links on this filesystem
            shutil.copy2(dest, backup)
        return backup

    def _restore(self, dest: str, backup: str | None) -> None:
        if self.is_remote:
            if backup is None:
                self.fs.rm(dest)
            else:
                self.fs.copy(backup, dest)
        elif backup is None:
            os.unlink(dest)
        else:
            os.replace(backup, dest)

    def _discard(self, backup: str) -> None:
        if self.is_remote:
            if self.fs.exists(backup):
                self.fs.rm(backup)
        elif os.path.exists(backup):
            os.unlink(backup)

    @contextmanager
    def staged_partition(self, dest_dir: str) -> Iterator[str]:
        """Yield a local directory to write a partition's ``*.parquet`` parts into; on success they become the
        partition at ``dest_dir`` in one atomic step (a new version behind the partition's pointer: see the module
        docstring). The partition's lock (local) or lease (GCS) is held for the whole block, so two runs of one
        partition never interleave; leftovers of interrupted writes are repaired first. On any exception nothing
        changes for readers."""
        if self.is_remote:
            with self._remote_partitions().lease(dest_dir) as lease:
                staging = tempfile.mkdtemp(prefix=".partition.", suffix=".tmp")
                try:
                    yield staging
                    self._remote_partitions().publish(staging, dest_dir, lease)
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
            return
        with partition_versions.partition_lock(dest_dir):
            partition_versions.repair(dest_dir)
            staging = partition_versions.new_staging(dest_dir)
            try:
                yield staging
                self.publish_partition(staging, dest_dir)
            finally:
                shutil.rmtree(staging, ignore_errors=True)

    def publish_partition(self, staging: str, dest_dir: str) -> None:
        """Commit the ``*.parquet`` files of ``staging`` (a local lake's staging directory, under the partition's
        lock) as the partition at ``dest_dir``."""
        partition_versions.publish(staging, dest_dir, grace_seconds=self.version_grace_seconds)

    def _remote_partitions(self):
        if self._remote is None:
            from taxi_platform.lake.gcs_partitions import GCSPartitions

            self._remote = GCSPartitions(
                self.root,
                fs=self.fs,
                lease_seconds=self.lease_seconds,
                grace_seconds=self.version_grace_seconds,
                wait_seconds=self.lease_wait_seconds,
            )
        return self._remote

    # -- reading partitions ----------------------------------------------------------------
    def resolve_partition(self, dest_dir: str) -> str | None:
        """The directory (local) or prefix (GCS) holding the partition's current parts, resolved once: the version
        its pointer names, a directory of the previous layout, or None when there is no partition."""
        if self.is_remote:
            return self._remote_partitions().resolve(dest_dir.rstrip("/"))
        return partition_versions.resolve(dest_dir)

    def partition_files(self, table: str, partition_key: str) -> list[str]:
        """The Parquet parts of one version of a partition (empty when there is none)."""
        where = self.resolve_partition(self.partition_dir(table, partition_key))
        if where is None:
            return []
        if self.is_remote:
            return sorted(
                p if "://" in p else f"{self.root.split('://')[0]}://{p}"
                for p in self.fs.glob(f"{where}/*.parquet")
            )
        return sorted(
            os.path.join(where, f) for f in os.listdir(where) if f.endswith(".parquet") and f[0] != "."
        )

    def has_partition(self, table: str, partition_key: str) -> bool:
        """Whether the lake holds a partition of ``table`` for the month (at least one Parquet part)."""
        return bool(self.partition_files(table, partition_key))

    def write_bytes(self, dest: str, data: bytes) -> None:
        with self.staged_file(dest) as tmp:
            Path(tmp).write_bytes(data)

    def read_bytes(self, path: str) -> bytes:
        if not self.is_remote:
            return Path(path).read_bytes()
        return self.fs.cat_file(path)

    def remove_partition(self, table: str, partition_key: str) -> None:
        """Drop a partition and every version of it."""
        path = self.path(table, month_dir(partition_key))
        if self.is_remote:
            self._remote_partitions().remove(path)
            return
        if not os.path.lexists(path) and not os.path.isdir(self.path(table, partition_versions.VERSIONS)):
            return
        with partition_versions.partition_lock(path):
            partition_versions.remove(path)

    # -- DuckDB ----------------------------------------------------------------------------
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

        from taxi_platform.core.settings import load_duckdb_settings, parse_memory_limit

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
