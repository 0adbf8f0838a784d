"""Streaming writes of one lake partition: record batches in, Parquet parts out, published in one step.

Encoding Parquet is the most expensive part of the transform steps, and pyarrow's writer encodes on one
thread. :class:`ParquetSink` therefore runs its writers on background threads (encoding overlaps with DuckDB
producing the next batch) and, on a local lake, spreads batches over two part files written in parallel.
The parts are staged in a hidden directory and published together (:meth:`Lake.staged_partition`), so readers
see either the whole previous partition or the whole new one.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from taxi_platform.lake.lake import Lake, part_name

ROW_GROUP_ROWS = 1_000_000
SPLIT_AFTER_ROWS = 500_000  # smaller partitions stay one file; bigger ones spread the rest over the parts
_WRITE_STATISTICS = ("service", "pickup_datetime", "dropoff_datetime", "pickup_zone", "dropoff_zone")
_DONE = object()
# Buffers of the writers (and of the batches filtered for them) come from the C library's allocator: pyarrow's
# default, mimalloc, hands the freed pages of every batch back to the kernel, which zeroes them again for the
# next one (about a tenth of the transform's CPU).
WRITE_POOL = pa.system_memory_pool()


@contextmanager
def default_pool(pool: pa.MemoryPool = WRITE_POOL) -> Iterator[None]:
    """Make ``pool`` pyarrow's default memory pool inside the block, for the allocations no pyarrow call lets one
    choose (the Parquet reader's). The setting is process-wide: meant for a step's own process."""
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pool)
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


def writer_options(schema: pa.Schema) -> dict:
    """pyarrow writer settings for lake tables.

    pyarrow's writer needs about half the CPU of DuckDB's COPY for these tables, and snappy is the fastest codec
    that every Parquet reader supports. Timestamps are written plain and uncompressed: snappy spends more CPU on
    them than on any other column and shrinks them by only a third. The other columns wider than a byte are
    dictionary-encoded (amounts, distances, zones and codes repeat a lot; a column chunk whose dictionary outgrows
    pyarrow's 1 MB page falls back to plain encoding), which makes the files about a third smaller and leaves snappy
    less to compress; one-byte flags and counts are cheaper to compress as they are. Min/max
    statistics are kept for the columns readers filter on (time, zones, service), which saves ~15 % of the
    encoding CPU.
    """
    timestamps = {f.name for f in schema if pa.types.is_timestamp(f.type)}
    return {
        "compression": {f.name: "none" if f.name in timestamps else "snappy" for f in schema},
        "use_dictionary": [
            f.name
            for f in schema
            if f.name not in timestamps and not (pa.types.is_integer(f.type) and f.type.bit_width == 8)
        ],
        "write_statistics": [c for c in _WRITE_STATISTICS if c in schema.names],
    }


class _PartWriter:
    """One part file, written on its own thread from a small queue; opened on its first batch."""

    def __init__(self, path: str, schema: pa.Schema) -> None:
        self.path = path
        self.schema = schema
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.rows = 0  # rows handed to this part
        self.thread = threading.Thread(
            target=self._run, name=f"parquet-{os.path.basename(path)}", daemon=True
        )
        self.thread.start()

    def _run(self) -> None:
        writer = None
        try:
            while (batch := self.queue.get()) is not _DONE:
                if writer is None:
                    writer = pq.ParquetWriter(
                        self.path, self.schema, memory_pool=WRITE_POOL, **writer_options(self.schema)
                    )
                writer.write_batch(batch, row_group_size=ROW_GROUP_ROWS)
        except BaseException as exc:  # reported to the producer by ParquetSink.put() / __exit__
            self.error = exc
            while self.queue.get() is not _DONE:  # drain so the producer never blocks
                pass
        finally:
            if writer is not None:
                try:
                    writer.close()
                except BaseException as exc:
                    self.error = self.error or exc

    def finish(self) -> None:
        self.queue.put(_DONE)
        self.thread.join()


@dataclass(frozen=True)
class WrittenTable:
    """A written partition described from the batches that went in (no Parquet is read back)."""

    rows: int
    schema: pa.Schema
    null_counts: dict[str, int]
    ranges: dict[str, tuple | None] = field(default_factory=dict)
    preview: pa.Table | None = None


class ParquetSink:
    """Write record batches as the Parquet parts of one partition; publish them only if everything succeeded.

    ``dest`` is the partition's first part (``…/month=YYYY-MM/part-0.parquet``, as :meth:`Lake.partition_path`
    returns it). On a local lake, once ``SPLIT_AFTER_ROWS`` rows are in ``part-0``, each further batch goes to
    the part with the fewest rows (smaller months stay one file); on GCS there is one part, uploaded as a single
    object. On any error the staged parts are removed and the previous partition stays as it was.
    """

    def __init__(
        self,
        lake: Lake,
        dest: str,
        schema: pa.Schema,
        metadata: Mapping[str, str],
        parts: int | None = None,
        ranges: Sequence[str] = (),
        preview_rows: int = 5,
    ) -> None:
        self.schema = schema.with_metadata(
            {**(schema.metadata or {}), **{k.encode(): v.encode() for k, v in metadata.items()}}
        )
        self.parts = parts or (1 if lake.is_remote else 2)
        self._staged = lake.staged_partition(dest.rsplit("/", 1)[0])
        self._writers: list[_PartWriter] = []
        self.rows = 0
        # What the step reports about its output, tallied from the batches it writes rather than read back:
        # NULLs per column, (min, max) of the ``ranges`` columns (None until a non-null value arrives) and
        # the first ``preview_rows`` rows (those of part-0's start).
        self.null_counts = dict.fromkeys(schema.names, 0)
        self.ranges: dict[str, tuple | None] = dict.fromkeys(ranges)
        self._preview_rows = preview_rows
        self._preview: list[pa.RecordBatch] = []

    def __enter__(self) -> ParquetSink:
        staging = self._staged.__enter__()
        self._writers = [
            _PartWriter(os.path.join(staging, part_name(i)), self.schema) for i in range(self.parts)
        ]
        return self

    def put(self, batch: pa.RecordBatch) -> None:
        for w in self._writers:
            if w.error is not None:
                raise w.error
        if batch.num_rows:
            # the part with the fewest rows so far takes the batch, so the parts end up the same size
            target = (
                min(self._writers, key=lambda w: w.rows)
                if self.rows >= SPLIT_AFTER_ROWS
                else self._writers[0]
            )
            self._profile(batch)
            target.queue.put(batch.replace_schema_metadata(self.schema.metadata))
            target.rows += batch.num_rows
            self.rows += batch.num_rows

    def _profile(self, batch: pa.RecordBatch) -> None:
        for name, column in zip(batch.schema.names, batch.columns, strict=True):
            self.null_counts[name] += column.null_count
        for name, current in self.ranges.items():
            low, high = pc.min_max(batch.column(name)).values()
            if low.is_valid:
                low, high = low.as_py(), high.as_py()
                self.ranges[name] = (
                    (low, high) if current is None else (min(current[0], low), max(current[1], high))
                )
        if self.rows < self._preview_rows:
            self._preview.append(batch.slice(0, self._preview_rows - self.rows))

    def summary(self) -> WrittenTable:
        """What this sink wrote: rows, schema, NULLs per column, tracked ranges and the first rows."""
        return WrittenTable(
            rows=self.rows,
            schema=self.schema,
            null_counts=dict(self.null_counts),
            ranges=dict(self.ranges),
            preview=pa.Table.from_batches(self._preview, self.schema),
        )

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None and self.rows == 0:  # an empty partition is still one readable file
            self._writers[0].queue.put(_empty_batch(self.schema))
        for w in self._writers:
            w.finish()
        error = next((w.error for w in self._writers if w.error is not None), None)
        if exc is None and error is not None:
            self._staged.__exit__(type(error), error, error.__traceback__)  # removes the staged parts
            raise error
        return self._staged.__exit__(exc_type, exc, tb)


def _empty_batch(schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array([], type=f.type) for f in schema], schema=schema)
