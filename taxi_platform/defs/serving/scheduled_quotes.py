"""``scheduled_quotes``: a month of quote requests in the lake priced in batch, the way ``taxi-platform score``
prices a file (:mod:`taxi_platform.serving.batch_score`: the service's rules per row, rejects with their reason).

Input: ``quote_requests/month=YYYY-MM/*.parquet`` (the service's quote fields, plus any ids), put there by whoever
schedules rides. Output: ``scheduled_quotes/month=YYYY-MM/`` (priced rows with ``fare_low``/``fare_high`` and
``model_version``) and ``scheduled_quote_rejects/month=YYYY-MM/`` (rows refused, with ``field`` and ``reason``).
Both partitions are replaced atomically. The model is the champion, or the config's ``model_version``.
"""

import dagster as dg
from pydantic import Field

from taxi_platform.defs.owners import SERVING
from taxi_platform.defs.partitions import monthly_partitions
from taxi_platform.defs.resources import LakeResource, MlflowResource

SCHEDULED_QUOTES = dg.AssetKey("scheduled_quotes")
REQUESTS_TABLE = "quote_requests"
REJECTS_TABLE = "scheduled_quote_rejects"


class ScheduledQuotesConfig(dg.Config):
    model_version: str | None = Field(
        default=None,
        description="Registered version of taxi_fare_model to price with; default: the champion.",
    )
    chunk_rows: int = Field(
        default=262_144, ge=1_000, description="Rows priced per chunk (memory grows with it)."
    )


@dg.asset(
    key=SCHEDULED_QUOTES,
    partitions_def=monthly_partitions,
    **SERVING,
    kinds={"parquet", "mlflow"},
    description=__doc__,
)
def scheduled_quotes(
    context: dg.AssetExecutionContext,
    config: ScheduledQuotesConfig,
    lake: LakeResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    import os

    from taxi_platform.serving.batch_score import score_batches
    from taxi_platform.serving.score_input import open_input
    from taxi_platform.serving.score_output import TableWriter
    from taxi_platform.serving.score_pricing import load_pricer

    store = lake.lake()
    key = context.partition_key
    sources = sorted(store.fs.glob(store.partition_glob(REQUESTS_TABLE, key)))
    if not sources:
        raise dg.Failure(
            description=f"no quote requests for {key[:7]} at {store.partition_dir(REQUESTS_TABLE, key)}: put "
            "Parquet files of quotes there (pickup_datetime, pickup_zone, dropoff_zone, passenger_count, service)",
            allow_retries=False,
        )
    pricer = load_pricer(mlflow.resolved_uri(), config.model_version)
    inputs = [
        open_input(p, config.chunk_rows, filesystem=None if not store.is_remote else store.fs)
        for p in sources
    ]

    def batches():
        for opened in inputs:
            yield from opened.batches

    with (
        store.staged_partition(store.partition_dir(SCHEDULED_QUOTES.path[-1], key)) as out_dir,
        store.staged_partition(store.partition_dir(REJECTS_TABLE, key)) as bad_dir,
    ):
        writers = []

        def writer(directory):
            def make(schema):
                w = TableWriter(os.path.join(directory, "part-0.parquet"), schema, "parquet")
                writers.append(w)
                return w

            return make

        summary = score_batches(batches(), inputs[0].schema, pricer, writer(out_dir), writer(bad_dir))
        for w in writers:
            w.close()
    context.log.info(
        f"{key[:7]}: priced {summary.priced:,} of {summary.rows:,} quote requests with v{summary.model_version}; "
        f"{summary.rejected:,} rejected {summary.rejected_by_field}"
    )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": dg.MetadataValue.int(summary.priced),
            "requests": dg.MetadataValue.int(summary.rows),
            "rejected": dg.MetadataValue.int(summary.rejected),
            "rejected_by_field": dg.MetadataValue.json(summary.rejected_by_field),
            "first_rejects": dg.MetadataValue.json(summary.first_rejects),
            "model_version": dg.MetadataValue.text(summary.model_version),
            "quotes_per_second": dg.MetadataValue.float(round(summary.quotes_per_second, 1)),
            "path": dg.MetadataValue.path(store.partition_dir(SCHEDULED_QUOTES.path[-1], key)),
            "rejects_path": dg.MetadataValue.path(store.partition_dir(REJECTS_TABLE, key)),
        }
    )
