"""Batch scoring: price a file (or a lake partition) of quote requests with one registered model version.

The input is read in chunks (:mod:`taxi_platform.serving.score_input`: Parquet row groups or CSV blocks), so
memory follows the chunk size, not the file. Each chunk is checked with the fare service's own rules
(:mod:`taxi_platform.serving.score_checks`: plain rows a column at a time, every other row by
:func:`~taxi_platform.serving.quotes.parse_quote` itself); a row the service would refuse lands in the rejects with
the service's message, and a bad row never stops the job. Worker threads check and price
(:mod:`taxi_platform.serving.score_pricing`) whole chunks side by side (one per core); the chunks are read and
written (:mod:`taxi_platform.serving.score_output`: the priced rows and the rejects) in input order.
"""

from __future__ import annotations

import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from taxi_platform.serving.score_checks import CheckedChunk, check_chunk
from taxi_platform.serving.score_input import DEFAULT_CHUNK_ROWS, ScoreInputError, file_format, open_input
from taxi_platform.serving.score_output import (
    REJECT_SCHEMA,
    TableWriter,
    output_schema,
    priced_batch,
    rejects_batch,
    rejects_path_for,
)
from taxi_platform.serving.score_pricing import Pricer

MAX_WORKERS = 4  # chunks priced at once, one per core; each chunk in flight holds ~150 MB


@dataclass
class ScoreSummary:
    rows: int = 0
    priced: int = 0
    rejected: int = 0
    rejected_by_field: dict[str, int] = field(default_factory=dict)
    first_rejects: list[dict[str, Any]] = field(default_factory=list)  # up to 10: row, field, reason
    model_version: str = ""
    seconds: float = 0.0

    @property
    def quotes_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def add(self, checked: CheckedChunk, first_row: int) -> None:
        """Count a chunk's priced and rejected rows (the first 10 rejects kept with their row and reason)."""
        for i, f, r in zip(checked.rejected.tolist(), checked.fields, checked.reasons, strict=True):
            if len(self.first_rejects) >= 10:
                break
            self.first_rejects.append({"row": i + first_row, "field": f, "reason": r})
        self.priced += len(checked.valid)
        self.rejected += len(checked.rejected)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "priced": self.priced,
            "rejected": self.rejected,
            "rejected_by_field": dict(self.rejected_by_field),
            "first_rejects": list(self.first_rejects),
            "model_version": self.model_version,
            "seconds": round(self.seconds, 3),
            "quotes_per_second": round(self.quotes_per_second, 1),
        }


def _one_openmp_thread() -> None:
    """Limit this (worker) thread's OpenMP to one thread: scikit-learn's tree walk then runs on the caller."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="openmp")


def _score_chunk(
    schema: pa.Schema, pricer: Pricer, batch: pa.RecordBatch, first_row: int, text_numbers: bool
) -> tuple[pa.RecordBatch, pa.RecordBatch | None, CheckedChunk]:
    """One chunk checked and priced (in a worker thread): its priced rows, its rejects (None if none), the check."""
    checked = check_chunk(batch, text_numbers, pricer.services)
    priced = priced_batch(schema, batch, first_row, checked, pricer.price(checked.columns), pricer.version)
    return priced, (rejects_batch(batch, first_row, checked) if len(checked.rejected) else None), checked


def score_batches(
    batches: Iterable[pa.RecordBatch],
    input_schema: pa.Schema,
    pricer: Pricer,
    output: TableWriter | Callable[[pa.Schema], TableWriter],
    rejects: TableWriter | Callable[[pa.Schema], TableWriter],
    text_numbers: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ScoreSummary:
    """Check, price and write every batch; the writers may be given as factories of a schema (then built
    before the first batch, so an empty input still gets both files with their columns)."""
    started = time.perf_counter()
    schema = output_schema(input_schema)
    out = output(schema) if callable(output) else output
    bad = rejects(REJECT_SCHEMA) if callable(rejects) else rejects
    summary = ScoreSummary(model_version=pricer.version)
    by_field: Counter[str] = Counter()
    workers = max(1, min(MAX_WORKERS, os.cpu_count() or 1))

    def finish(done: Future, first: int, rows: int) -> None:
        priced, rejected, checked = done.result()
        out.write(priced)
        if rejected is not None:
            bad.write(rejected)
        by_field.update(checked.fields)
        summary.add(checked, first)
        if progress is not None:
            progress(rows)

    # Each worker thread checks, prices and lays out whole chunks (Arrow, numpy and the tree walk release the
    # GIL), one OpenMP thread each so the workers do not fight over the cores; this thread reads the chunks in
    # order and writes the results in input order. At most workers + 1 chunks are in flight.
    first_row = 0
    pending: deque[tuple[Future, int, int]] = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="score", initializer=_one_openmp_thread) as pool:
        for batch in batches:
            done = pool.submit(_score_chunk, schema, pricer, batch, first_row, text_numbers)
            pending.append((done, first_row, batch.num_rows))
            first_row += batch.num_rows
            while len(pending) > workers or (pending and pending[0][0].done()):
                finish(*pending.popleft())
        while pending:
            finish(*pending.popleft())
    summary.rows = first_row
    summary.rejected_by_field = dict(sorted(by_field.items()))
    summary.seconds = time.perf_counter() - started
    return summary


class _HiddenFiles:
    """The output and rejects files, written under hidden names beside their destinations and renamed into place
    by :meth:`publish`; :meth:`discard` closes the writers and removes what was not published."""

    def __init__(self, dests: tuple[Path, Path]) -> None:
        self.dests = dests
        self.temps = [p.with_name(f".{p.name}.{os.getpid()}.tmp") for p in dests]
        for p in dests:
            p.parent.mkdir(parents=True, exist_ok=True)
        self.writers: list[TableWriter] = []

    def writer(self, index: int) -> Callable[[pa.Schema], TableWriter]:
        def make(schema: pa.Schema) -> TableWriter:
            w = TableWriter(self.temps[index], schema, file_format(self.dests[index]))
            self.writers.append(w)
            return w

        return make

    def publish(self) -> None:
        for w in self.writers:
            w.close()
        os.replace(self.temps[0], self.dests[0])
        os.replace(self.temps[1], self.dests[1])

    def discard(self) -> None:
        for w in self.writers:
            try:
                w.close()
            except Exception:  # already closed
                pass
        for t in self.temps:
            t.unlink(missing_ok=True)


def score_file(
    source: str | Path,
    output: str | Path,
    pricer: Pricer,
    rejects: str | Path | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Callable[[int, int, str], None] | None = None,
) -> ScoreSummary:
    """Price the quotes in ``source`` into ``output`` (rejected rows into ``rejects``, default
    :func:`rejects_path_for`). Both files appear whole or not at all: they are written beside their
    destination under a hidden name and renamed into place when every chunk is done.

    ``progress(done, total, unit)`` is called after each chunk (rows for Parquet, bytes for CSV).
    """
    output = Path(output)
    rejects = Path(rejects) if rejects is not None else rejects_path_for(output)
    file_format(output), file_format(rejects)  # refuse an unknown output type before reading anything
    if output.resolve() == Path(source).resolve():
        raise ScoreInputError(f"--output {output} is the input file: choose another path")
    opened = open_input(source, chunk_rows)
    files = _HiddenFiles((output, rejects))

    def step(rows: int) -> None:
        if progress is not None:
            progress(opened.position(), opened.total, opened.unit)

    try:
        summary = score_batches(
            opened.batches,
            opened.schema,
            pricer,
            files.writer(0),
            files.writer(1),
            text_numbers=opened.text_numbers,
            progress=step,
        )
        files.publish()
    except pa.ArrowInvalid as exc:
        raise ScoreInputError(f"cannot read {source}: {exc}") from exc
    finally:
        files.discard()
    return summary
