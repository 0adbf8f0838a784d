"""``repackage_champion``: ``taxi-platform repackage`` as a Dagster job, launched from the UI's Jobs page.

It runs :func:`taxi_platform.model.repackage.run_repackage` with the ``lake`` and ``mlflow`` resources: the
champion's (or ``version``'s) fitted state logged again with the installed ``fare_model`` package, so a rate-card
row added after it was validated reaches quotes from its date; the new version is registered and gated like any
other (:mod:`taxi_platform.model.repackage` says when it refuses). A refusal fails the run with the reason.

The new version is its validation month's model (it supersedes its source in the gate's replay), so the job
records a materialisation of that ``fare_model`` partition, with the version, its source, the card rows and the
gate's decision as metadata: the asset's history shows the change, and ``fare_service``, which follows
``fare_model``, rebuilds the Bento from the new champion.
"""

import dagster as dg
from pydantic import Field

from taxi_platform.core.months import partition_key
from taxi_platform.core.settings import load_settings
from taxi_platform.defs.keys import FARE_MODEL
from taxi_platform.defs.resources import LakeResource, MlflowResource


class RepackageConfig(dg.Config):
    version: str | None = Field(
        default=None, description="Registered version to repackage (default: the champion)."
    )
    allow_code_change: bool = Field(
        default=False,
        description="Repackage even when fare_model files other than the rate card changed (quotes before the first "
        "card change must still price exactly as before).",
    )
    evaluation_rows: int = Field(
        default=100_000,
        ge=100,
        description="Rows of the validation month the gate scores the new version on.",
    )


@dg.op(
    out={},
    description="Log the champion's fitted state again with the installed fare_model package (a later rate card), "
    "register it and run the promotion gate.",
)
def repackage_version(
    context: dg.OpExecutionContext, config: RepackageConfig, lake: LakeResource, mlflow: MlflowResource
):
    from taxi_platform.model.repackage import RepackageError, describe, run_repackage

    try:
        result = run_repackage(
            mlflow.resolved_uri(),
            lake.lake(),
            config.version,
            experiment=mlflow.resolved_experiment(),
            artifacts_dir=load_settings().data_dir / "mlartifacts",
            allow_code_change=config.allow_code_change,
            evaluation_rows=config.evaluation_rows,
            run_tags={"dagster_run_id": context.run_id},
        )
    except RepackageError as exc:
        raise dg.Failure(description=str(exc)) from None
    context.log.info(describe(result))
    outcome = result.as_dict()
    yield dg.AssetMaterialization(
        asset_key=FARE_MODEL,
        partition=partition_key(result.plan.validation_month),
        description=f"v{result.version}: v{result.plan.source_version} repackaged with the installed rate card",
        metadata={
            "model_version": dg.MetadataValue.text(result.version),
            "repackaged_from": dg.MetadataValue.text(result.plan.source_version),
            "rate_card_changes": dg.MetadataValue.json(outcome["rate_card_changes"]),
            "guard_quotes": dg.MetadataValue.int(result.guard_quotes),
            "guard_max_abs_diff": dg.MetadataValue.float(result.guard_max_abs_diff),
            "total_change_from_first_change": dg.MetadataValue.json(result.total_change_from_first_change),
            "promoted": dg.MetadataValue.bool(bool(outcome["promoted"])),
            "champion_version": dg.MetadataValue.text(outcome["champion_version"] or ""),
            "gate_reason": dg.MetadataValue.text(outcome["gate_reason"] or ""),
            "mlflow_run_id": dg.MetadataValue.text(result.run_id),
            "resumed": dg.MetadataValue.bool(result.resumed),
        },
    )


@dg.job(
    description="Bring a rate-card change to the champion without retraining: a new version with the installed "
    "fare_model package, gated like any other (taxi-platform repackage).",
    tags={"team": "model"},
)
def repackage_champion():
    repackage_version()
