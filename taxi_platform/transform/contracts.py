"""Data contracts of ``cleaned_trips`` and ``trip_features``: each table's columns, types and constraints,
declared once and versioned.

A :class:`Contract` is plain data. It is checked against a partition's Parquet parts in one DuckDB pass
(:func:`validate`): every declared column present with its type, NULLs only where allowed, values inside their
range or set, and the table's row rules. The Dagster wiring (``defs/transform/contracts.py``) turns the same declaration
into the assets' column schema (``dagster/column_schema`` with constraints) and into blocking asset checks, and the
writers stamp the version into each Parquet file's key-value metadata (``contract``, e.g. ``trip_features/1``).
``fare_model`` trains only on ``trip_features`` stamped with the version its code expects and records that version
in the registered model (version tag ``contract``); a file of another version is refused with both versions named.
Whoever later reads ``trip_features`` for a registered version — the gate scoring it on a month, ``drift_report``
scoring the champion — refuses files stamped with another version than the model's (:func:`require_model_contract`).

Change a contract (a column, type or rule) and bump its ``version``: ``test_contracts`` pins each version to the
declaration's digest, so a change without a bump fails.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from taxi_platform.core.sql import sql_literal
from taxi_platform.fare_model.features import BOROUGHS, SERVICES

if TYPE_CHECKING:  # pragma: no cover
    from taxi_platform.lake.lake import Lake

CONTRACT_KEY = "contract"  # the Parquet key-value metadata key holding "<table>/<version>"
MIN_ZONE, MAX_ZONE = 1, 263


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # Arrow type name; "string" also admits dictionary-encoded strings
    description: str
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    allowed: tuple[str | int, ...] | None = None

    def rules(self) -> list[str]:
        """The constraints in words (the column schema's ``other`` constraints)."""
        out = []
        if self.min is not None:
            out.append(f"> {self.min:g}" if self.min_exclusive else f">= {self.min:g}")
        if self.max is not None:
            out.append(f"<= {self.max:g}")
        if self.allowed is not None:
            out.append("in {" + ", ".join(map(str, self.allowed)) + "}")
        return out


@dataclass(frozen=True)
class RowRule:
    name: str
    sql: str  # a DuckDB boolean expression every row satisfies (NULL counts as satisfied)
    description: str


@dataclass(frozen=True)
class Contract:
    table: str
    version: str
    columns: tuple[Column, ...]
    row_rules: tuple[RowRule, ...] = ()

    @property
    def tag(self) -> str:
        """``<table>/<version>``: what the files and the model record."""
        return f"{self.table}/{self.version}"

    def digest(self) -> str:
        """A hash of the declaration (columns, types, rules), to tie each version to one declaration."""
        body = json.dumps(
            {"columns": [asdict(c) for c in self.columns], "rules": [asdict(r) for r in self.row_rules]},
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


@dataclass
class ContractReport:
    """The outcome of :func:`validate` for one partition."""

    contract: str  # table/version
    rows: int
    violations: dict[str, int] = field(
        default_factory=dict
    )  # "column: rule" -> rows (or 1 for schema problems)

    @property
    def passed(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        if self.passed:
            return f"{self.rows:,} rows satisfy {self.contract}"
        listed = "; ".join(f"{k} ({v:,} rows)" for k, v in self.violations.items())
        return f"{self.contract} violated: {listed}"


# -- the declarations -----------------------------------------------------------------------------------
_ZONE = {"min": MIN_ZONE, "max": MAX_ZONE}
_FLAG = {"allowed": (0, 1)}

CLEANED_TRIPS = Contract(
    table="cleaned_trips",
    version="1",
    columns=(
        Column("service", "string", "TLC service", allowed=SERVICES),
        Column("pickup_datetime", "timestamp[us]", "pickup, New York local time"),
        Column("dropoff_datetime", "timestamp[us]", "dropoff, New York local time"),
        Column("pickup_zone", "int32", "pickup TLC LocationID", **_ZONE),
        Column("dropoff_zone", "int32", "dropoff TLC LocationID", **_ZONE),
        Column("passenger_count", "int8", "passengers (a missing count imputed as 1)", min=0, max=9),
        Column("trip_distance", "double", "miles", min=0, min_exclusive=True, max=200),
        Column("trip_duration_min", "double", "minutes", min=0, min_exclusive=True, max=300),
        Column("fare_amount", "double", "metered fare, USD", min=0, min_exclusive=True, max=1000),
        Column("total_amount", "double", "total charged, USD", nullable=True),
        Column("vendor_id", "int32", "TPEP/LPEP provider", nullable=True, min=1, max=99),
        Column("ratecode_id", "int32", "rate code", nullable=True, allowed=(1, 2, 3, 4, 5, 6, 99)),
        Column("payment_type", "int32", "payment type", nullable=True, min=0, max=6),
        Column("tip_amount", "double", "tip, USD", nullable=True),
        Column("tolls_amount", "double", "tolls, USD", nullable=True),
        Column("congestion_surcharge", "double", "congestion surcharge, USD", nullable=True),
        Column("airport_fee", "double", "airport fee, USD", nullable=True),
        Column("cbd_congestion_fee", "double", "CBD congestion fee, USD", nullable=True),
    ),
    row_rules=(
        RowRule("dropoff_after_pickup", "dropoff_datetime > pickup_datetime", "dropoff after pickup"),
        RowRule(
            "speed_at_most_90mph",
            "trip_distance / (trip_duration_min / 60.0) <= 90.0 + 1e-9",
            "average speed at most 90 mph",
        ),
    ),
)

TRIP_FEATURES = Contract(
    table="trip_features",
    version="1",
    columns=(
        Column("pickup_datetime", "timestamp[us]", "pickup, New York local time"),
        Column("pickup_zone", "int32", "pickup TLC LocationID", **_ZONE),
        Column("dropoff_zone", "int32", "dropoff TLC LocationID", **_ZONE),
        Column("service", "string", "TLC service", allowed=SERVICES),
        Column("pickup_hour", "int8", "hour of pickup", min=0, max=23),
        Column("pickup_weekday", "int8", "0 = Monday", min=0, max=6),
        Column("is_weekend", "int8", "Saturday or Sunday", **_FLAG),
        Column("is_rush_hour", "int8", "weekday rush hour", **_FLAG),
        Column("is_night", "int8", "overnight", **_FLAG),
        Column("pickup_borough", "string", "pickup borough", allowed=BOROUGHS),
        Column("dropoff_borough", "string", "dropoff borough", allowed=BOROUGHS),
        Column("pickup_is_airport", "int8", "pickup at EWR, JFK or LGA", **_FLAG),
        Column("dropoff_is_airport", "int8", "dropoff at EWR, JFK or LGA", **_FLAG),
        Column("is_jfk_manhattan", "int8", "JFK <-> Manhattan (flat fare)", **_FLAG),
        Column("same_zone", "int8", "pickup zone = dropoff zone", **_FLAG),
        Column("passenger_count", "int8", "passengers", min=0, max=9),
        Column("fare_amount", "double", "target: metered fare, USD", min=0, min_exclusive=True, max=1000),
        Column("trip_distance", "double", "observed miles (not a feature)", min=0, min_exclusive=True),
        Column("trip_duration_min", "double", "observed minutes (not a feature)", min=0, min_exclusive=True),
    ),
)

CONTRACTS = {c.table: c for c in (CLEANED_TRIPS, TRIP_FEATURES)}


def contract_stamp(table: str) -> dict[str, str]:
    """The Parquet key-value metadata a writer of ``table`` adds: ``{"contract": "<table>/<version>"}``."""
    return {CONTRACT_KEY: CONTRACTS[table].tag}


# -- checking data ---------------------------------------------------------------------------------------
def _type_ok(declared: str, actual) -> bool:
    import pyarrow as pa

    if declared == "string":
        if pa.types.is_dictionary(actual):
            actual = actual.value_type
        return pa.types.is_string(actual) or pa.types.is_large_string(actual)
    return str(actual) == declared


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _value(v: str | int | float) -> str:
    return sql_literal(v) if isinstance(v, str) else repr(v)


def validate(lake: Lake, contract: Contract, paths: Sequence[str]) -> ContractReport:
    """Check the Parquet files (or globs) ``paths`` against ``contract`` in one DuckDB pass."""
    report = ContractReport(contract.tag, rows=0)
    files = _listed_files(lake, paths)
    if not files:
        report.violations["table: no Parquet files"] = 1
        return report
    present = _check_schemas(lake, contract, files, report)
    tests = _rule_tests(contract, present)
    selects = ", ".join(["count(*)"] + [f"count(*) FILTER (WHERE {sql})" for sql in tests.values()])
    listing = "[" + ", ".join(sql_literal(f) for f in files) + "]"
    con = lake.connect()
    try:
        counts = con.execute(
            f"SELECT {selects} FROM read_parquet({listing}, hive_partitioning = false, union_by_name = true)"
        ).fetchone()
    except (
        Exception
    ) as exc:  # a rule referencing a missing column, unreadable file: a violation, never a crash
        report.violations[f"table: unreadable ({type(exc).__name__}: {str(exc)[:200]})"] = 1
        return report
    finally:
        con.close()
    report.rows = int(counts[0])
    for name, n in zip(tests, counts[1:], strict=True):
        if n:
            report.violations[name] = int(n)
    return report


def _listed_files(lake: Lake, paths: Sequence[str]) -> list[str]:
    """The files ``paths`` (files or globs) name, sorted, with the lake's protocol where it is remote."""
    # gcsfs's glob drops the gs:// protocol: put it back, DuckDB needs it
    remote = lake.is_remote
    found = {f for p in paths for f in (lake.fs.glob(p) if "*" in p else [p])}
    return sorted(lake.fs.unstrip_protocol(f) if remote and "://" not in f else f for f in found)


def _check_schemas(
    lake: Lake, contract: Contract, files: Sequence[str], report: ContractReport
) -> dict[str, object]:
    """Record missing and mistyped columns in ``report``; the columns present with their type in some file."""
    present: dict[str, object] = {}
    for f in files:
        schema = lake.parquet_schema(f)
        for col in contract.columns:
            if col.name not in schema.names:
                report.violations[f"{col.name}: missing"] = 1
            elif not _type_ok(col.type, schema.field(col.name).type):
                report.violations[f"{col.name}: type {schema.field(col.name).type}, expected {col.type}"] = 1
            else:
                present[col.name] = True
    return present


def _rule_tests(contract: Contract, present: Mapping[str, object]) -> dict[str, str]:
    """Violation name -> SQL condition true for a violating row, for the present columns' rules and the row rules."""
    tests: dict[str, str] = {}
    for col in contract.columns:
        if col.name not in present:
            continue
        q = _quoted(col.name)
        if not col.nullable:
            tests[f"{col.name}: null"] = f"{q} IS NULL"
        if col.min is not None:
            tests[f"{col.name}: {col.rules()[0]}"] = (
                f"NOT ({q} {'>' if col.min_exclusive else '>='} {col.min!r})"
            )
        if col.max is not None:
            tests[f"{col.name}: <= {col.max:g}"] = f"NOT ({q} <= {col.max!r})"
        if col.allowed is not None:
            values = ", ".join(_value(v) for v in col.allowed)
            tests[f"{col.name}: {col.rules()[-1]}"] = (
                f"NOT (CAST({q} AS VARCHAR) IN ({values}))"
                if isinstance(col.allowed[0], str)
                else f"NOT ({q} IN ({values}))"
            )
        if col.type == "double":
            tests[f"{col.name}: finite"] = f"NOT isfinite({q})"
    for rule in contract.row_rules:
        tests[f"row: {rule.description}"] = f"NOT ({rule.sql})"
    return tests


def stamped_versions(lake: Lake, paths: Sequence[str]) -> dict[str, str | None]:
    """The ``contract`` metadata of each Parquet file under ``paths`` (None: written before contracts)."""
    import pyarrow.parquet as pq

    out: dict[str, str | None] = {}
    for p in paths:
        for f in sorted(lake.fs.glob(p) if "*" in p else [p]):
            with lake.fs.open(f, "rb") as fh:
                meta = pq.ParquetFile(fh).schema_arrow.metadata or {}
            value = meta.get(CONTRACT_KEY.encode())
            out[str(f)] = value.decode() if value is not None else None
    return out


class ContractMismatchError(ValueError):
    """Data stamped with another contract version than the one the reader expects."""


def other_versions(expected: str, stamps: Mapping[str, str | None]) -> dict[str, str]:
    """The files of ``stamps`` (path -> stamp) stamped with another version than ``expected``.

    Files written before contracts existed (no stamp) are not among them: the contract's version 1 describes them.
    """
    return {path: stamp for path, stamp in stamps.items() if stamp is not None and stamp != expected}


def _listed(label: str, wrong: Mapping[str, str]) -> list[str]:
    return [f"{label} ({path.rsplit('/', 1)[-1]}: {stamp})" for path, stamp in wrong.items()]


def require_version(lake: Lake, contract: Contract, partitions: dict[str, str]) -> None:
    """Refuse when a file of ``partitions`` (label -> glob) is stamped with another version of ``contract``."""
    wrong = [
        item
        for label, glob in partitions.items()
        for item in _listed(label, other_versions(contract.tag, stamped_versions(lake, [glob])))
    ]
    if wrong:
        raise ContractMismatchError(
            f"data of another contract: {', '.join(wrong)}; this code reads {contract.tag}. Re-materialise those "
            f"partitions with this code, or train with the code of their contract"
        )


def require_model_contract(
    model: str, trained_on: str | None, stamps: Mapping[str, Mapping[str, str | None]]
) -> None:
    """Refuse to score ``model`` (e.g. ``taxi_fare_model v3``) on files stamped with another contract version than
    the one it was trained on (its ``contract`` tag, ``trained_on``); ``stamps`` is label (a month) -> path ->
    stamp, as :func:`stamped_versions` reads them.

    A version without the tag predates contracts and is accepted, as are unstamped files.
    """
    if not trained_on:
        return
    wrong = [
        item for label, files in stamps.items() for item in _listed(label, other_versions(trained_on, files))
    ]
    if wrong:
        raise ContractMismatchError(
            f"{model} was trained on {trained_on}, but trip_features of {', '.join(wrong)} is of another contract: "
            f"it is not scored on data it was not trained for. Train a version on data of that contract "
            f"(materialise fare_model), or re-materialise those months as {trained_on}"
        )
