"""Serving: ``fare_service``, the Bento built from the current ``champion`` of ``taxi_fare_model``.

Each materialisation looks up ``taxi_fare_model@champion`` in the MLflow registry of the ``mlflow`` resource,
imports that version into the BentoML model store (``$TAXI_DATA_DIR/bentoml`` unless the ``bento_store``
resource says otherwise) and runs ``bentoml build`` with ``bento/bentofile.yaml`` and the ``uv.lock`` pins, through
:func:`taxi_platform.serving.bento_build.build_champion_bento`: the code ``taxi-platform build-bento`` and the deploy
workflow run. The service and its build config ship in the wheel, so a run pod builds from its installed
package. The Bento tag names the registry version, run and serving-code hash, so the asset follows the alias:
a new champion (or new serving code) builds a new Bento, the same champion finds its Bento already built and
says so (``rebuilt = false``) without building again.

Its automation condition is :data:`taxi_platform.defs.automation.AFTER_FARE_MODEL` (that module says why not
``eager()``).
"""

import dagster as dg

from taxi_platform.defs.automation import AFTER_FARE_MODEL
from taxi_platform.defs.keys import FARE_MODEL, FARE_SERVICE
from taxi_platform.defs.owners import SERVING
from taxi_platform.defs.resources import BentoStoreResource, MlflowResource
from taxi_platform.model.version_tags import DATA_SOURCE_TAG
from taxi_platform.serving import bento_build
from taxi_platform.serving.bento_store import ServingBuildError


@dg.asset(
    key=FARE_SERVICE,
    deps=[FARE_MODEL],
    **SERVING,
    kinds={"bentoml", "mlflow"},
    automation_condition=AFTER_FARE_MODEL,
    check_specs=[
        dg.AssetCheckSpec(
            "bento_packages_champion",
            asset=FARE_SERVICE,
            description="The Bento packages exactly the model version the champion alias points at.",
        ),
        dg.AssetCheckSpec(
            "dockerfile_generated",
            asset=FARE_SERVICE,
            description="bentoml build wrote env/docker/Dockerfile (the image can be built without BentoCloud).",
        ),
    ],
    description="A Bento (bento/service.py: POST /predict, /predict_batch; /readyz, /livez, /metrics) serving the "
    "current champion of taxi_fare_model, built with `bentoml build` into $TAXI_DATA_DIR/bentoml. Same champion "
    "and code: no rebuild.",
)
def fare_service(
    context: dg.AssetExecutionContext, bento_store: BentoStoreResource, mlflow: MlflowResource
) -> dg.MaterializeResult:
    home = bento_store.home()
    uri = mlflow.resolved_uri()
    try:  # the same code as `taxi-platform build-bento` (and so as the deploy workflow)
        champion, imported, build = bento_build.build_champion_bento(
            home, uri, import_timeout=bento_store.import_timeout, build_timeout=bento_store.build_timeout
        )
    except ServingBuildError as exc:
        raise dg.Failure(description=str(exc)) from None
    if build.built:
        context.log.info(f"built {build.tag} for champion version {champion.version} ({build.model_tag})")
    else:
        context.log.info(
            f"{build.tag} already serves champion version {champion.version} with this code: no rebuild needed"
        )
    packaged = bento_build.bento_models(build.path)
    metadata = {
        "bento_tag": dg.MetadataValue.text(build.tag),
        "bento_path": dg.MetadataValue.path(str(build.path)),
        "bento_size_bytes": dg.MetadataValue.int(build.size_bytes),
        "model_store_tag": dg.MetadataValue.text(build.model_tag),
        "model_size_bytes": dg.MetadataValue.int(build.model_size_bytes),
        "model_name": dg.MetadataValue.text(champion.name),
        "model_version": dg.MetadataValue.text(champion.version),
        "model_run_id": dg.MetadataValue.text(champion.run_id),
        "model_uri": dg.MetadataValue.text(champion.pinned_uri),
        "dockerfile": dg.MetadataValue.path(str(build.dockerfile)),
        "rebuilt": dg.MetadataValue.bool(build.built),
        "model_imported": dg.MetadataValue.bool(imported),
        "bento_home": dg.MetadataValue.path(str(home)),
        "serve_command": dg.MetadataValue.text(f"taxi-platform serve --bento {build.tag}"),
        "requirements": dg.MetadataValue.int(len(build.requirements)),
    }
    if build.shadow_tag:  # the registry's challenger, priced beside the champion on every request
        metadata["shadow_challenger"] = dg.MetadataValue.text(build.shadow_tag)
    if build.model_code:  # the champion re-priced its probe quotes with its own code before the build
        metadata["model_code"] = dg.MetadataValue.json(build.model_code)
    if build.model_overrides:
        metadata["model_pins_differing_from_lock"] = dg.MetadataValue.json(build.model_overrides)
    if DATA_SOURCE_TAG in champion.tags:
        metadata["data_source"] = dg.MetadataValue.text(str(champion.tags[DATA_SOURCE_TAG]))
    return dg.MaterializeResult(
        metadata=metadata,
        data_version=dg.DataVersion(build.tag),
        check_results=[
            dg.AssetCheckResult(
                check_name="bento_packages_champion",
                passed=packaged == [champion.store_tag],
                metadata={"packaged_models": dg.MetadataValue.json(packaged), "champion": champion.store_tag},
            ),
            dg.AssetCheckResult(
                check_name="dockerfile_generated",
                passed=build.dockerfile.is_file() and "FROM " in build.dockerfile.read_text(errors="replace"),
                metadata={"dockerfile": dg.MetadataValue.path(str(build.dockerfile))},
            ),
        ],
    )
