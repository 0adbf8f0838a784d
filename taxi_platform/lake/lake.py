"""The Parquet lake: Hive-layout paths under one root, local or ``gs://``, with atomic writes.

A table partition (``<table>/month=YYYY-MM``) written through :meth:`Lake.staged_partition` is a pointer to an
immutable version holding its ``*.parquet`` parts (``part-0``, and for large local months ``part-1``, written in
parallel; names carry the version id): locally a relative symlink replaced in one ``os.replace``
(:mod:`taxi_platform.lake.partition_versions`), on GCS a ``CURRENT`` object written with a generation precondition
(:mod:`taxi_platform.lake.gcs_partitions`). Writers of one partition are serialised (a ``flock`` locally, a lease on
GCS); readers resolve the pointer once (:meth:`Lake.partition_glob`, :meth:`Lake.partition_files`) and so read one
version whole; leftovers of interrupted writes and partitions of the previous layout (a plain directory of parts) are
repaired by the next write or read. Single files and sets of files are written by
:class:`~taxi_platform.lake.atomic_files.AtomicFiles`, DuckDB connections opened by
:class:`~taxi_platform.lake.duckdb_connection.DuckDBConnections`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from taxi_platform.lake import partition_versions
from taxi_platform.lake.atomic_files import AtomicFiles
from taxi_platform.lake.duckdb_connection import DuckDBConnections

PART_FILE = "part-0.parquet"


def part_name(index: int) -> str:
    """File name of a partition's ``index``-th Parquet part."""
    return f"part-{int(index)}.parquet"


def month_dir(partition_key: str) -> str:
    """``2024-03-01`` or ``2024-03`` → ``month=2024-03``."""
    return f"month={partition_key[:7]}"


class Lake(AtomicFiles, DuckDBConnections):
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

    # -- writing partitions ----------------------------------------------------------------
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
