"""``cleaned_trips`` and ``trip_features``: monthly DuckDB transforms over the lake, with their checks.

No ``from __future__ import annotations`` here: Dagster inspects the ``context`` annotation at runtime.
"""

from datetime import date

import dagster as dg

from taxi_platform.defs.automation import follow_upstream
from taxi_platform.defs.keys import CLEANED_TRIPS, RAW_TRIPS, TAXI_ZONES, TRIP_FEATURES
from taxi_platform.defs.metadata import written_table_metadata
from taxi_platform.defs.month_ranges import (
    SMALL_MONTHS_PER_RUN,
    MonthOutcome,
    materialize_months,
    months_per_run,
)
from taxi_platform.defs.owners import TRANSFORM
from taxi_platform.defs.partitions import monthly_partitions
from taxi_platform.defs.resources import LakeResource, TlcSourceResource
from taxi_platform.defs.transform import contracts as contracts
from taxi_platform.defs.transform.disk_space import retry_when_disk_full
from taxi_platform.fare_model.features import FEATURES_VERSION, ZoneTable
from taxi_platform.ingest.tlc_schema import SchemaMismatchError
from taxi_platform.ingest.zones import ZoneLookupError, parse_zone_records, zone_table
from taxi_platform.lake.lake import Lake
from taxi_platform.transform.cleaning import CLEANING_VERSION, CleanResult, clean_month
from taxi_platform.transform.cleaning_rules import REJECT_REASON_RULES
from taxi_platform.transform.contracts import CLEANED_TRIPS as CLEANED_CONTRACT
from taxi_platform.transform.contracts import TRIP_FEATURES as FEATURES_CONTRACT
from taxi_platform.transform.contracts import validate
from taxi_platform.transform.trip_features import write_features

KEY_COLUMNS = ("service", "pickup_datetime", "dropoff_datetime", "pickup_zone", "dropoff_zone", "fare_amount")
MIN_KEPT_RATIO = 0.80


def load_zones(lake: Lake) -> ZoneTable:
    """The zone table from the ``taxi_zones`` asset's CSV in the lake."""
    path = lake.zones_csv_path()
    if not lake.exists(path):
        raise dg.Failure(
            description=f"No zone lookup at {path}: materialise the `taxi_zones` asset first.",
        )
    try:
        return zone_table(parse_zone_records(lake.read_bytes(path), source=path))
    except ZoneLookupError as exc:
        raise dg.Failure(description=f"{exc}. Re-materialise the `taxi_zones` asset.") from exc


@dg.asset(
    partitions_def=monthly_partitions,
    deps=[RAW_TRIPS],
    **TRANSFORM,
    code_version=CLEANING_VERSION,
    kinds={"duckdb", "parquet"},
    automation_condition=follow_upstream(),
    backfill_policy=months_per_run(SMALL_MONTHS_PER_RUN),
    metadata=contracts.definition_metadata(CLEANED_CONTRACT),
    check_specs=[
        contracts.check_spec(CLEANED_TRIPS, CLEANED_CONTRACT),
        dg.AssetCheckSpec(
            "kept_ratio_above_threshold",
            asset=CLEANED_TRIPS,
            description=f"At least {MIN_KEPT_RATIO:.0%} of raw rows survive cleaning (warns).",
        ),
        dg.AssetCheckSpec(
            "no_nulls_in_key_columns",
            asset=CLEANED_TRIPS,
            description=f"No NULLs in {', '.join(KEY_COLUMNS)}.",
        ),
        dg.AssetCheckSpec(
            "pickups_inside_month",
            asset=CLEANED_TRIPS,
            description="Every pickup lies inside the partition's month.",
        ),
    ],
    description="Yellow and green trips of one month in one typed schema (any TLC schema era), exact duplicates "
    "and invalid rows removed. Lake: cleaned_trips/month=YYYY-MM/.\n\n"
    "A row's values never fail the month: every number is checked before it is narrowed, and each rejected row "
    "is counted in the `rejected_by_reason` metadata under the first rule it breaks:\n\n"
    + "\n".join(f"- `{reason}`: {rule}" for reason, rule in REJECT_REASON_RULES.items())
    + "\n- `exact_duplicate`: a later copy of a row identical in every source column\n\n"
    "The step fails only on a file it cannot read (a required column missing, or a column of a type it cannot "
    "read, e.g. fares stored as text); the message names the column and the file's schema era.",
)
def cleaned_trips(context: dg.AssetExecutionContext, lake: LakeResource, tlc: TlcSourceResource):
    store = lake.lake()
    services = tlc.service_list()
    with retry_when_disk_full(context, None if store.is_remote else store.root):
        yield from materialize_months(context, lambda key: _clean(context, store, services, key))


def _clean(context: dg.AssetExecutionContext, store: Lake, services: list[str], key: str) -> MonthOutcome:
    month = date.fromisoformat(key)
    raw_files = {}
    for service in services:
        path = store.raw_trips_path(service, key)
        if not store.exists(path):
            raise dg.Failure(
                description=f"raw_trips has no {service} file for {month:%Y-%m} ({path}): "
                f"materialise raw_trips for partition {key} first.",
            )
        raw_files[service] = path
    dest = store.partition_path("cleaned_trips", key)
    try:
        # data_source=None: the raw files' labels, read on the step's one DuckDB connection
        result = clean_month(store, raw_files, month, dest, data_source=None)
    except SchemaMismatchError as exc:
        raise dg.Failure(description=str(exc)) from exc
    context.log.info(
        f"{month:%Y-%m}: kept {result.rows_out:,} of {result.total_in:,} rows; rejected {result.rejected}"
    )
    # Metadata and checks come from what the step wrote (the writer's tallies), not from reading it back.
    parts = store.partition_glob("cleaned_trips", key)
    return MonthOutcome(
        metadata={
            **written_table_metadata(result.written, parts),
            "rows_in": dg.MetadataValue.json(result.rows_in),
            "rows_out_by_service": dg.MetadataValue.json(result.rows_out_by_service),
            "rejected_by_reason": dg.MetadataValue.json(result.rejected),
            "rejected_rows": dg.MetadataValue.int(sum(result.rejected.values())),
            "passenger_count_imputed": dg.MetadataValue.int(result.passenger_count_imputed),
            "kept_ratio": dg.MetadataValue.float(round(result.kept_ratio, 4)),
            "data_source": dg.MetadataValue.text(result.data_source),
            "contract_version": dg.MetadataValue.text(CLEANED_CONTRACT.tag),
        },
        checks=[
            contracts.check_result(CLEANED_CONTRACT, validate(store, CLEANED_CONTRACT, [parts])),
            *_cleaned_checks(result),
        ],
    )


def _cleaned_checks(result: CleanResult) -> list[dg.AssetCheckResult]:
    """The checks on the rows written, from the writer's NULL counts and pickup range (see ``clean_month``)."""
    kept_ratio = result.kept_ratio
    nulls = {c: int(result.written.null_counts[c]) for c in KEY_COLUMNS if result.written.null_counts[c]}
    outside = result.pickups_outside_month
    return [
        dg.AssetCheckResult(
            check_name="kept_ratio_above_threshold",
            passed=kept_ratio >= MIN_KEPT_RATIO,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"kept_ratio": round(kept_ratio, 4), "threshold": MIN_KEPT_RATIO},
        ),
        dg.AssetCheckResult(
            check_name="no_nulls_in_key_columns",
            passed=not nulls,
            metadata={"null_counts": dg.MetadataValue.json(nulls)},
        ),
        dg.AssetCheckResult(
            check_name="pickups_inside_month",
            passed=outside == 0,
            metadata={"pickups_outside_month": int(outside)},
        ),
    ]


@dg.asset(
    partitions_def=monthly_partitions,
    deps=[CLEANED_TRIPS, TAXI_ZONES],
    **TRANSFORM,
    code_version=FEATURES_VERSION,
    kinds={"duckdb", "parquet"},
    automation_condition=follow_upstream(),
    backfill_policy=months_per_run(SMALL_MONTHS_PER_RUN),
    metadata=contracts.definition_metadata(FEATURES_CONTRACT),
    check_specs=[contracts.check_spec(TRIP_FEATURES, FEATURES_CONTRACT)],
    description="Per-trip features known before the ride (lib/features.py, shared with serving) plus the target "
    "fare_amount and observed distance/duration. Lake: trip_features/month=YYYY-MM/.",
)
def trip_features(context: dg.AssetExecutionContext, lake: LakeResource):
    store = lake.lake()
    zones = load_zones(store)
    with retry_when_disk_full(context, None if store.is_remote else store.root):
        yield from materialize_months(context, lambda key: _features(context, store, zones, key))


def _features(context: dg.AssetExecutionContext, store: Lake, zones: ZoneTable, key: str) -> MonthOutcome:
    if not store.has_partition("cleaned_trips", key):
        raise dg.Failure(
            description=f"No cleaned_trips partition for {key} at {store.partition_dir('cleaned_trips', key)}: "
            "materialise cleaned_trips for this month first."
        )
    dest = store.partition_path("trip_features", key)
    result = write_features(store, store.partition_glob("cleaned_trips", key), zones, dest)
    context.log.info(f"{key[:7]}: wrote {result.rows:,} feature rows")
    parts = store.partition_glob("trip_features", key)
    return MonthOutcome(
        metadata={
            **written_table_metadata(result.written, parts),
            "data_source": result.data_source or "tlc",  # what Lake.source_label reads from the file
            "contract_version": dg.MetadataValue.text(FEATURES_CONTRACT.tag),
        },
        checks=[contracts.check_result(FEATURES_CONTRACT, validate(store, FEATURES_CONTRACT, [parts]))],
    )
