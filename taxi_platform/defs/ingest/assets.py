"""Ingest: the TLC zone lookup and the monthly trip files, kept as the source published them.

``taxi_zones`` stores ``misc/taxi_zone_lookup.csv`` (and a typed Parquet copy); ``raw_trips`` stores each
configured service's monthly Parquet file byte for byte under
``raw_trips/service={service}/month=YYYY-MM/``. Both write through the lake's atomic staging, so a failed
or killed run leaves the previous files in place; a month's files (one per service) are published as one unit.
Downloads are bounded by ``TAXI_DOWNLOAD_DEADLINE_SECONDS`` and ``TAXI_DOWNLOAD_MAX_BYTES`` and checked against
the ETag's MD5 where the ETag is one.
"""

import hashlib
from datetime import date, timedelta

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from taxi_platform.core.months import parse_month, partition_key
from taxi_platform.defs.keys import RAW_TRIPS, TAXI_ZONES
from taxi_platform.defs.month_ranges import (
    SMALL_MONTHS_PER_RUN,
    MonthOutcome,
    materialize_months,
    months_per_run,
)
from taxi_platform.defs.owners import INGEST
from taxi_platform.defs.partitions import monthly_partitions
from taxi_platform.defs.resources import LakeResource, TlcSourceResource
from taxi_platform.ingest.tlc import DownloadResult, download_to, fetch
from taxi_platform.ingest.tlc_errors import DownloadError, NotPublishedError
from taxi_platform.ingest.tlc_probe import ProbeResult, probe_many
from taxi_platform.ingest.tlc_schema import SchemaMismatchError, era_for, match_schema
from taxi_platform.ingest.tlc_urls import not_published_message, trip_url, zone_lookup_url
from taxi_platform.ingest.zones import ZoneLookupError, parse_zone_lookup
from taxi_platform.lake.lake import Lake

RAW_TABLE = "raw_trips"  # the lake table raw_trips writes

INGEST_RETRY_POLICY = dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL)
TLC_POOL = "tlc_downloads"


def _column_schema(schema: pa.Schema) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(name=f.name, type=str(f.type)) for f in schema])


def _preview(table: pa.Table, limit: int = 10) -> dg.TableMetadataValue:
    """The first ``limit`` rows as a table the UI renders (values are ints and strings)."""
    records = [dg.TableRecord(row) for row in table.slice(0, limit).to_pylist()]
    return dg.MetadataValue.table(records=records, schema=_column_schema(table.schema))


def _timestamp_or_text(parsed, raw: str | None) -> dg.MetadataValue:
    if parsed is not None:
        return dg.MetadataValue.timestamp(parsed)
    return dg.MetadataValue.text(raw or "")


def _failure(exc: Exception, *, allow_retries: bool, suffix: str) -> dg.Failure:
    return dg.Failure(description=f"{exc} {suffix}".strip(), allow_retries=allow_retries)


# -- taxi_zones --------------------------------------------------------------------------------------
@dg.asset(
    key=TAXI_ZONES,
    **INGEST,
    kinds={"csv", "parquet"},
    description="TLC taxi zone lookup (LocationID -> Borough, Zone, service_zone), as published, plus a typed Parquet copy.",
    retry_policy=INGEST_RETRY_POLICY,
    pool=TLC_POOL,
    code_version="1",
)
def taxi_zones(
    context: dg.AssetExecutionContext, lake: LakeResource, tlc: TlcSourceResource
) -> dg.MaterializeResult:
    url = zone_lookup_url(tlc.source_url())
    lk = lake.lake()
    try:
        options = tlc.download_options()
        fetched = fetch(
            url,
            timeout=tlc.timeout(),
            retries=tlc.retries,
            backoff=tlc.backoff,
            deadline=options["deadline"],
            verify_md5=tlc.verify_md5,
            logger=context.log,
        )
        table = parse_zone_lookup(fetched.content, source=url)
    except NotPublishedError as exc:
        raise _failure(exc, allow_retries=False, suffix="Nothing was written.") from exc
    except ZoneLookupError as exc:
        raise _failure(exc, allow_retries=False, suffix="Nothing was written.") from exc
    except DownloadError as exc:
        raise _failure(
            exc, allow_retries=exc.transient and tlc.step_retries, suffix="Nothing was written."
        ) from exc

    csv_path = lk.zones_csv_path()
    parquet_path = lk.zones_parquet_path()
    with lk.staged_file(parquet_path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    lk.write_bytes(csv_path, fetched.content)
    context.log.info(f"wrote {table.num_rows} zones from {url} to {csv_path} and {parquet_path}")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": table.num_rows,
            "dagster/column_schema": _column_schema(table.schema),
            "preview": _preview(table),
            "url": dg.MetadataValue.url(url),
            "sha256": fetched.sha256,
            "size": fetched.size,
            "etag": fetched.etag or "",
            "last_modified": _timestamp_or_text(fetched.last_modified, fetched.last_modified_raw),
            "csv_path": dg.MetadataValue.path(csv_path),
            "parquet_path": dg.MetadataValue.path(parquet_path),
        },
        data_version=dg.DataVersion(fetched.sha256),
    )


# -- raw_trips ---------------------------------------------------------------------------------------
def _check_published(month: date, probes: dict[str, ProbeResult]) -> None:
    """Raise a :class:`dagster.Failure` if the source says a service's file does not exist.

    A probe that failed for another reason (timeout, 5xx) does not block: the download that follows
    retries transient errors itself and still fails cleanly, writing nothing, if the file is missing.
    """
    missing = {s: p for s, p in probes.items() if p.status == "not_published"}
    if missing:
        message = not_published_message(month, {s: (p.url, p.http_status) for s, p in missing.items()})
        published = [s for s, p in probes.items() if p.published]
        note = f" ({', '.join(published)} already published.)" if published else ""
        raise dg.Failure(
            description=f"{message}{note} Nothing was written for this partition.",
            metadata={f"{s}_url": dg.MetadataValue.url(p.url) for s, p in missing.items()},
            allow_retries=False,
        )


def _service_metadata(result: DownloadResult) -> dict[str, object]:
    s = result.service
    return {
        f"{s}_sha256": result.sha256,
        f"{s}_size": result.size,
        f"{s}_etag": result.etag or "",
        f"{s}_last_modified": _timestamp_or_text(result.last_modified, result.last_modified_raw),
        f"{s}_url": dg.MetadataValue.url(result.url),
        f"{s}_path": dg.MetadataValue.path(result.path),
        f"{s}_era": result.era,
        f"{s}_extra_columns": dg.MetadataValue.json(list(result.extra_columns)),
        f"{s}_row_count": result.num_rows,
        f"{s}_data_source": result.data_source,
        f"{s}_attempts": result.attempts,
    }


# The TLC publishes one month about every 30 days (7-8 weeks after it ends). No new raw_trips for 45 days: the
# TLC is late (WARN in the UI's asset health); 75 days: a release was missed (FAIL). Evaluated by the daemon.
RAW_TRIPS_FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=timedelta(days=75), warn_window=timedelta(days=45)
)


@dg.asset(
    key=RAW_TRIPS,
    partitions_def=monthly_partitions,
    **INGEST,
    kinds={"parquet", "python"},
    description=(
        "The TLC monthly trip files, one per configured service, byte for byte as published "
        "(sha256, size, ETag and Last-Modified in the metadata)."
    ),
    retry_policy=INGEST_RETRY_POLICY,
    pool=TLC_POOL,
    code_version="1",
    freshness_policy=RAW_TRIPS_FRESHNESS,
    backfill_policy=months_per_run(SMALL_MONTHS_PER_RUN),
)
def raw_trips(context: dg.AssetExecutionContext, lake: LakeResource, tlc: TlcSourceResource):
    lk = lake.lake()
    return materialize_months(context, lambda key: _download_month(context, lk, tlc, key))


def _download_month(
    context: dg.AssetExecutionContext, lk: Lake, tlc: TlcSourceResource, key: str
) -> MonthOutcome:
    month = parse_month(key, "partition key")
    services = tlc.service_list()
    base_url = tlc.source_url()
    urls = {s: trip_url(base_url, s, month) for s in services}
    _probe_month(context, tlc, month, services, urls)
    results = _download_services(context, lk, tlc, month, services, urls)
    return _month_outcome(results, month, services, base_url)


def _probe_month(
    context: dg.AssetExecutionContext,
    tlc: TlcSourceResource,
    month: date,
    services: tuple[str, ...],
    urls: dict[str, str],
) -> None:
    """HEAD each service's file, log what answered, and fail when the month is not published yet."""
    probes = dict(
        zip(
            services,
            probe_many(urls.values(), max_workers=tlc.probe_workers, timeout=tlc.timeout()),
            strict=True,
        )
    )
    for s, p in probes.items():
        if p.status == "error":
            context.log.warning(
                f"{s} {month:%Y-%m}: HEAD {p.url} failed ({p.message}); trying the download anyway"
            )
        else:
            context.log.info(
                f"{s} {month:%Y-%m}: {p.status} (HTTP {p.http_status}, {p.size} bytes, ETag {p.etag})"
            )
    _check_published(month, probes)


def _download_services(
    context: dg.AssetExecutionContext,
    lk: Lake,
    tlc: TlcSourceResource,
    month: date,
    services: tuple[str, ...],
    urls: dict[str, str],
) -> list[DownloadResult]:
    """Download and publish the month's files, one per service, as one unit; a failure leaves earlier files."""
    results: list[DownloadResult] = []
    try:
        # Stage every service's file first; publish them as one unit (all new or all previous files) only when all
        # have downloaded and verified.
        dests = [lk.raw_trips_path(service, partition_key(month)) for service in services]
        with lk.staged_files(dests, suffix=".parquet") as tmps:
            for service, dest, tmp in zip(services, dests, tmps, strict=True):
                result = download_to(
                    urls[service],
                    tmp,
                    service=service,
                    month=month,
                    **tlc.download_options(),
                    logger=context.log,
                    result_path=dest,
                )
                _log_download(context, service, month, result)
                results.append(result)
    except NotPublishedError as exc:
        lk.remove_empty_dirs([lk.raw_trips_path(s, partition_key(month)) for s in services], RAW_TABLE)
        raise _failure(exc, allow_retries=False, suffix="Nothing was written for this partition.") from exc
    except DownloadError as exc:
        lk.remove_empty_dirs([lk.raw_trips_path(s, partition_key(month)) for s in services], RAW_TABLE)
        raise _failure(
            exc,
            allow_retries=exc.transient and tlc.step_retries,
            suffix=f"Nothing was written; any earlier files for {month:%Y-%m} are unchanged.",
        ) from exc
    except OSError as exc:  # staging or publishing in the lake failed (disk full, permissions, I/O)
        lk.remove_empty_dirs([lk.raw_trips_path(s, partition_key(month)) for s in services], RAW_TABLE)
        raise dg.Failure(
            description=(
                f"writing the {month:%Y-%m} trip files to the lake failed ({exc}). The month's files are published "
                f"as one unit: any earlier files for {month:%Y-%m} are unchanged."
            ),
            allow_retries=tlc.step_retries,
        ) from exc
    return results


def _log_download(
    context: dg.AssetExecutionContext, service: str, month: date, result: DownloadResult
) -> None:
    context.log.info(
        f"{service} {month:%Y-%m}: {result.num_rows} rows, {result.size} bytes, era {result.era}, "
        f"sha256 {result.sha256[:12]}, {result.attempts} attempt(s)"
    )
    if result.extra_columns:
        context.log.warning(f"{service} {month:%Y-%m} has new columns {list(result.extra_columns)}")


def _month_outcome(
    results: list[DownloadResult], month: date, services: tuple[str, ...], base_url: str
) -> MonthOutcome:
    """The month's metadata (totals, then each service's) and a data version over the files' SHA-256s."""
    sources = {r.data_source for r in results}
    metadata: dict[str, object] = {
        "dagster/row_count": sum(r.num_rows for r in results),
        "data_source": "synthetic" if "synthetic" in sources else "tlc",
        "month": f"{month:%Y-%m}",
        "services": dg.MetadataValue.json(list(services)),
        "source": dg.MetadataValue.url(base_url),
    }
    for result in results:
        metadata.update(_service_metadata(result))
    version = hashlib.sha256("".join(f"{r.service}:{r.sha256};" for r in results).encode()).hexdigest()
    return MonthOutcome(metadata=metadata, data_version=version)


# -- checks ------------------------------------------------------------------------------------------
@dg.asset_check(
    asset=raw_trips,
    name="raw_schema_recognised",
    description=(
        "Each raw trip file's columns match a known TLC schema era for its service (required columns present; "
        "extra columns are allowed and listed)."
    ),
)
def raw_schema_recognised(
    context: dg.AssetCheckExecutionContext, lake: LakeResource, tlc: TlcSourceResource
) -> dg.AssetCheckResult:
    lk = lake.lake()
    services = tlc.service_list()
    if context.has_partition_key:
        months = [parse_month(context.partition_key, "partition key")]
    else:
        months = sorted({parse_month(m) for service in services for m in lk.raw_trip_months(service)})
    errors: list[str] = []
    warnings: list[str] = []
    files: dict[str, dict[str, object]] = {}
    for month in months:
        for service in services:
            path = lk.raw_trips_path(service, partition_key(month))
            label = f"{service} {month:%Y-%m}"
            if not lk.exists(path):
                errors.append(f"{label}: file missing at {path}")
                continue
            try:
                matched = match_schema(service, lk.parquet_schema(path))
            except SchemaMismatchError as exc:
                errors.append(f"{label}: {exc}")
                continue
            except (pa.ArrowException, OSError) as exc:
                errors.append(f"{label}: unreadable Parquet ({exc})")
                continue
            expected = era_for(service, month).name
            files[label] = {
                "era": matched.era,
                "expected_era": expected,
                "extra_columns": list(matched.extra_columns),
                "missing_optional_columns": list(matched.missing_optional),
            }
            if matched.missing_optional:
                warnings.append(
                    f"{label}: era {matched.era} columns missing {list(matched.missing_optional)}"
                )
    if not months:
        errors.append("no raw_trips files in the lake to check")
    passed = not errors and not warnings
    severity = dg.AssetCheckSeverity.ERROR if errors else dg.AssetCheckSeverity.WARN
    problems = errors + warnings
    return dg.AssetCheckResult(
        passed=passed,
        severity=severity,
        description="; ".join(problems) if problems else f"{len(files)} file(s) match a known TLC schema era",
        metadata={
            "files": dg.MetadataValue.json(files),
            "extra_columns": dg.MetadataValue.json(
                sorted({c for f in files.values() for c in f["extra_columns"]})  # type: ignore[union-attr]
            ),
            "problems": dg.MetadataValue.json(problems),
        },
    )


__all__ = [
    "INGEST_RETRY_POLICY",
    "TLC_POOL",
    "raw_schema_recognised",
    "raw_trips",
    "taxi_zones",
]
