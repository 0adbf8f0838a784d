"""Dagster resources shared by the platform's assets.

All resources are cheap to construct: nothing is read from the environment, opened or connected
until an asset asks for it, so definitions load fast and the same resources work in a local run,
in ``dagster dev`` and in a Kubernetes run pod (where settings come from that pod's environment).

**Locked in a deployed instance.** The fields of :data:`LOCKED_FIELDS` decide where credentials, data or code
come from (the MLflow server the client sends its password to, the host raw files are fetched from and how they
are checked, the lake that is read and written, the store Bentos are built in). With
``TAXI_LOCK_RESOURCE_CONFIG=true`` (the Helm values set it) they are the deployment's, from its environment: a
run whose config sets one to anything else fails when the resource is set up, before it connects anywhere, with
:class:`LockedResourceConfigError` naming the field. Locally (the default) run config may set them.
"""

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from pydantic import Field

from taxi_platform.core.settings import MODEL_NAME, Settings, load_settings, parse_services
from taxi_platform.lake.lake import Lake
from taxi_platform.model.tracking import TrackedRun

# resource key -> field -> the deployment's value of that field (from settings).
LOCKED_FIELDS: dict[str, dict[str, Callable[[Settings], object]]] = {
    "lake": {"root": lambda s: s.lake_root},
    "tlc": {
        "base_url": lambda s: s.tlc_base_url,
        "verify_md5": lambda s: True,
        "max_bytes": lambda s: s.download_max_bytes,
        "deadline_seconds": lambda s: s.download_deadline_seconds,
    },
    "mlflow": {"tracking_uri": lambda s: s.mlflow_tracking_uri},
    "bento_store": {"bento_home": lambda s: str(s.bento_home)},
}


class LockedResourceConfigError(ValueError):
    """A run's config set a resource field the deployment fixes (``TAXI_LOCK_RESOURCE_CONFIG``)."""


def _normalised(value: object) -> object:
    return value.rstrip("/") if isinstance(value, str) else value


def refuse_locked_overrides(
    resource: dg.ConfigurableResource, key: str, settings: Settings | None = None
) -> None:
    """Raise :class:`LockedResourceConfigError` when settings lock resource config and ``resource`` (the resource
    bound to ``key``) sets one of its :data:`LOCKED_FIELDS` to anything but unset or the deployment's value."""
    settings = settings or load_settings()
    if not settings.lock_resource_config:
        return
    refused = []
    for name, deployed in LOCKED_FIELDS[key].items():
        value = getattr(resource, name)
        if value is None or _normalised(value) == _normalised(deployed(settings)):
            continue
        refused.append(f"{key}.{name}={value!r}")
    if refused:
        raise LockedResourceConfigError(
            f"run config may not set {', '.join(refused)}: in this deployment (TAXI_LOCK_RESOURCE_CONFIG=true) "
            f"where credentials, data and code come from is fixed by its environment; launch the run without "
            f"these fields"
        )


class LakeResource(dg.ConfigurableResource):
    """The Parquet lake. ``root`` defaults to ``TAXI_LAKE_ROOT`` (or ``$TAXI_DATA_DIR/lake``)."""

    root: str | None = Field(
        default=None,
        description="Lake root: a local directory or gs://bucket/prefix. Default: from settings.",
    )

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        refuse_locked_overrides(self, "lake")

    def resolved_root(self) -> str:
        return self.root or load_settings().lake_root

    def lake(self) -> Lake:
        return Lake(self.resolved_root())


class TlcSourceResource(dg.ConfigurableResource):
    """Where and how to fetch TLC files. Unset fields default to ``TLC_BASE_URL`` / ``TAXI_SERVICES``."""

    base_url: str | None = Field(
        default=None, description="Source base URL (TLC CloudFront host or a mirror). Default: TLC_BASE_URL."
    )
    services: list[str] | None = Field(
        default=None, description="Services to ingest, e.g. ['yellow', 'green']. Default: TAXI_SERVICES."
    )
    connect_timeout: float = Field(default=10.0, description="Seconds to wait for a TCP/TLS connection.")
    read_timeout: float = Field(default=60.0, description="Seconds to wait between bytes of a response.")
    retries: int = Field(default=3, ge=0, description="Client retries per file on transient errors.")
    backoff: float = Field(
        default=2.0, ge=0, description="Seconds before the first client retry; doubles on each retry."
    )
    probe_workers: int = Field(default=8, ge=1, description="Parallel HEAD requests when probing.")
    deadline_seconds: float | None = Field(
        default=None,
        gt=0,
        description=(
            "Overall time for one file, all attempts included; a server trickling bytes is cut off when it passes. "
            "Default: TAXI_DOWNLOAD_DEADLINE_SECONDS (1800)."
        ),
    )
    max_bytes: int | None = Field(
        default=None,
        gt=0,
        description=(
            "Size cap per trip file: a larger Content-Length is refused before downloading, a body growing past it "
            "is aborted. Default: TAXI_DOWNLOAD_MAX_BYTES (2 GiB)."
        ),
    )
    verify_md5: bool = Field(
        default=True,
        description=(
            "Compare each body's MD5 with the ETag when the ETag is a plain MD5 (a single-part upload, as the TLC's "
            "files are); a mismatch is retried as corruption in transit. Turn off for a mirror whose 32-hex ETags "
            "are not MD5s (e.g. objects encrypted with a KMS key)."
        ),
    )
    step_retries: bool = Field(
        default=True,
        description=(
            "Whether a transient download failure that outlasts the client retries may be retried by the "
            "asset's Dagster RetryPolicy. Permanent failures (not published, not Parquet, bad schema) never are."
        ),
    )

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        refuse_locked_overrides(self, "tlc")

    def source_url(self) -> str:
        return (self.base_url or load_settings().tlc_base_url).rstrip("/")

    def service_list(self) -> tuple[str, ...]:
        if self.services is None:
            return load_settings().services
        return parse_services(",".join(self.services))

    def timeout(self) -> tuple[float, float]:
        return (self.connect_timeout, self.read_timeout)

    def download_options(self) -> dict[str, object]:
        """Keyword arguments for :func:`taxi_platform.ingest.tlc.download_to`: timeouts, retries and limits."""
        settings = None if self.deadline_seconds and self.max_bytes else load_settings()
        return {
            "timeout": self.timeout(),
            "retries": self.retries,
            "backoff": self.backoff,
            "deadline": self.deadline_seconds or settings.download_deadline_seconds,
            "max_bytes": self.max_bytes or settings.download_max_bytes,
            "verify_md5": self.verify_md5,
        }


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking and registry: the one place the tracking URI is configured.

    ``tracking_uri`` defaults to ``MLFLOW_TRACKING_URI`` (or SQLite under ``TAXI_DATA_DIR``), read at run time.
    Reading the URI starts nothing and imports nothing heavy; only :meth:`start_tracking` opens an MLflow run,
    so assets that merely read the registry share this resource without creating runs.
    """

    tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI. Default: MLFLOW_TRACKING_URI or sqlite under TAXI_DATA_DIR.",
    )
    experiment_name: str | None = Field(
        default=None, description=f"MLflow experiment for training runs. Default: {MODEL_NAME}."
    )

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        refuse_locked_overrides(self, "mlflow")

    def resolved_uri(self) -> str:
        return self.tracking_uri or load_settings().mlflow_tracking_uri

    def resolved_experiment(self) -> str:
        return self.experiment_name or MODEL_NAME

    @contextmanager
    def start_tracking(self, new_run_name: str | None = None) -> Iterator[TrackedRun]:
        """Open (or resume) this Dagster run's MLflow run through dagster-mlflow's ``mlflow_tracking``.

        ``new_run_name`` opens a new MLflow run of that name instead (still tagged ``dagster_run_id``): a Dagster run
        that trains several months (a ranged backfill run) logs each month to its own MLflow run.

        dagster-mlflow sets the experiment and starts the run tagged ``dagster_run_id``; on exit it ends the run
        FAILED/KILLED only if an error is propagating, so the caller ends it on success (its job hook
        ``end_mlflow_on_run_finished`` is not used: asset jobs never run it, and it would end runs early). An
        unreachable server fails here, before any work. ``mlflow.set_tracking_uri`` also exports
        ``MLFLOW_TRACKING_URI`` to subprocesses, which is why only a training run calls this.
        """
        # mlflow.set_tracking_uri / set_experiment export MLFLOW_TRACKING_URI and MLFLOW_EXPERIMENT_ID: put the
        # environment back afterwards, so a later subprocess of this process (a Bento build, another run's
        # store) does not inherit this run's store and experiment.
        saved_env = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dg.BetaWarning)  # dagster-mlflow is marked beta
            warnings.simplefilter(
                "ignore", DeprecationWarning
            )  # it reads InitResourceContext.dagster_run/run_id
            import mlflow
            from dagster_mlflow import mlflow_tracking

            from taxi_platform.model.gate import ensure_reachable
            from taxi_platform.model.tracking import ensure_local_experiment

            uri = self.resolved_uri()
            experiment = self.resolved_experiment()
            ensure_reachable(uri)
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)
            ensure_local_experiment(uri, experiment, load_settings().data_dir / "mlartifacts")
            config = {"experiment_name": experiment, "mlflow_tracking_uri": uri}
            if new_run_name is not None:
                experiment_id = mlflow.set_experiment(experiment).experiment_id
                created = mlflow.MlflowClient(uri).create_run(experiment_id, run_name=new_run_name)
                config["mlflow_run_id"] = created.info.run_id  # dagster-mlflow resumes it and adds its tags
            run_context = self.get_resource_context().replace_config(config)
            session = mlflow_tracking.resource_fn(run_context)
            next(session)
        try:
            active = mlflow.active_run()
            yield TrackedRun(
                run_id=active.info.run_id,
                experiment_id=active.info.experiment_id,
                experiment_name=experiment,
                tracking_uri=uri,
            )
        finally:
            try:
                next(
                    session, None
                )  # dagster-mlflow's teardown: ends the run FAILED/KILLED if an error propagates
            finally:
                for key in [k for k in os.environ if k.startswith("MLFLOW_") and k not in saved_env]:
                    del os.environ[key]
                os.environ.update(saved_env)


class BentoStoreResource(dg.ConfigurableResource):
    """Where Bentos are built and how long importing and building may take (the registry is ``mlflow``'s)."""

    bento_home: str | None = Field(
        default=None, description="BentoML home (model and Bento store). Default: $TAXI_DATA_DIR/bentoml."
    )
    import_timeout: float = Field(default=600.0, description="Seconds allowed for importing the champion.")
    build_timeout: float = Field(default=900.0, description="Seconds allowed for `bentoml build`.")

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        refuse_locked_overrides(self, "bento_store")

    def home(self) -> Path:
        return Path(self.bento_home) if self.bento_home else load_settings().bento_home


RESOURCES: dict[str, dg.ConfigurableResource] = {
    "lake": LakeResource(),
    "tlc": TlcSourceResource(),
    "mlflow": MlflowResource(),
    "bento_store": BentoStoreResource(),
}


@dg.definitions
def resources() -> dg.Definitions:
    """Every resource, by the key the assets name (load_from_defs_folder picks this up)."""
    return dg.Definitions(resources=RESOURCES)
