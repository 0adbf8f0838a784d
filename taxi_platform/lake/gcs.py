"""Google Cloud Storage access for the lake: one fsspec filesystem and one storage client, set up alike.

Both read the same two settings, so the Dagster-facing ``dagster_gcp.GCSResource`` (which wraps a
``google.cloud.storage.Client``) and the lake's fsspec filesystem always talk to the same place:

* ``GOOGLE_CLOUD_PROJECT`` (or ``GCLOUD_PROJECT``): the project billed for requests. On GKE with
  Workload Identity the credentials come from the pod's Kubernetes service account; locally from
  ``gcloud auth application-default login``.
* ``STORAGE_EMULATOR_HOST`` (``http://host:port``): talk to a GCS emulator such as
  ``gcp-storage-emulator`` instead, anonymously (no credentials are looked up). Include the scheme:
  google-cloud-storage (and so ``GCSResource``) uses the value verbatim as its endpoint; the functions
  here also accept a bare ``host:port``.

The filesystem is gcsfs's plain ``gcsfs.core.GCSFileSystem``. Recent gcsfs releases export an
``ExtendedGcsFileSystem`` as ``gcsfs.GCSFileSystem`` (unless ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``
is set before gcsfs is imported) that asks the Storage Control API over gRPC what kind of bucket it is
talking to (zonal / hierarchical namespace) before the first read or write. Emulators do not speak
gRPC, so each of those probes waits out a 60 s retry deadline, and a failed probe is not cached, so
it repeats on every call. Lake buckets are flat-namespace buckets (see ``terraform/storage.tf``), so
the plain class is the right one for them on real GCS too and saves a control-plane round-trip.

Listings are not cached (``use_listings_cache=False``): several processes and pods write partitions
to the same lake, and a cached directory listing would hide partitions written by others.

Deadlines: ``TAXI_GCS_TIMEOUT_SECONDS`` (default 60) bounds connecting and each wait for an answer's bytes, in
both clients. gcsfs gets it as an ``aiohttp.ClientTimeout`` of ``sock_connect``/``sock_read`` (no total): an
overrun then raises aiohttp's ``ServerTimeoutError``, which gcsfs retries with backoff like a 503, where a plain
number (a total deadline) raised ``asyncio.TimeoutError``, which gcsfs does not retry (one slow answer failed the
step) -- and without any deadline a stalled read held the step for aiohttp's default five minutes. The storage
client (``GCSPartitions``) passes the same number as each call's ``timeout``; its default retry covers a timeout.

Heavy imports (gcsfs, google-cloud-storage) happen inside the functions.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - typing only
    import fsspec
    from google.cloud import storage

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
PROJECT_ENVS = ("GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT")
# gcsfs reads this at import time; "false" makes ``gcsfs.GCSFileSystem`` the plain class everywhere.
GCSFS_EXTENDED_ENV = "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"
# Any project id works against an emulator; buckets are created under it.
EMULATOR_DEFAULT_PROJECT = "taxi-platform-local"
GCS_SCHEMES = ("gs://", "gcs://")


class GCSConfigError(ValueError):
    """A GCS URL or GCS setting is unusable."""


@dataclass(frozen=True)
class GCSSettings:
    """Where GCS requests go, which project they bill, and how long one request may stall."""

    project: str | None
    emulator_endpoint: str | None  # ``http://host:port`` or None for the real service
    timeout_seconds: float = 60.0  # TAXI_GCS_TIMEOUT_SECONDS

    @property
    def is_emulator(self) -> bool:
        return self.emulator_endpoint is not None


def gcs_settings(env: Mapping[str, str] | None = None) -> GCSSettings:
    """Read the GCS project and emulator endpoint from ``env`` (default: ``os.environ``)."""
    env = os.environ if env is None else env
    emulator = (env.get(EMULATOR_ENV) or "").strip()
    endpoint = None
    if emulator and emulator != "default":
        endpoint = emulator if emulator.startswith(("http://", "https://")) else f"http://{emulator}"
        endpoint = endpoint.rstrip("/")
    project = next((env[name].strip() for name in PROJECT_ENVS if (env.get(name) or "").strip()), None)
    if project is None and endpoint is not None:
        project = EMULATOR_DEFAULT_PROJECT
    from taxi_platform.core.settings import SettingsError, load_gcs_timeout

    try:
        timeout = load_gcs_timeout(env)
    except SettingsError as exc:
        raise GCSConfigError(str(exc)) from exc
    return GCSSettings(project=project, emulator_endpoint=endpoint, timeout_seconds=timeout)


def split_gcs_url(url: str) -> tuple[str, str]:
    """``gs://bucket/some/prefix`` → ``("bucket", "some/prefix")``; raises GCSConfigError otherwise."""
    scheme = next((s for s in GCS_SCHEMES if url.startswith(s)), None)
    if scheme is None:
        raise GCSConfigError(f"{url!r} is not a GCS URL: expected gs://bucket/prefix")
    bucket, _, prefix = url[len(scheme) :].partition("/")
    if not bucket:
        raise GCSConfigError(f"{url!r} names no bucket: expected gs://bucket/prefix")
    return bucket, prefix.strip("/")


def filesystem_for(root: str, env: Mapping[str, str] | None = None) -> fsspec.AbstractFileSystem:
    """An fsspec filesystem for a remote lake root.

    ``gs://`` (or ``gcs://``) roots get a ``gcsfs.core.GCSFileSystem`` configured from
    :func:`gcs_settings`; ``memory://`` roots (tests, demos) get fsspec's in-memory filesystem.
    """
    if root.startswith("memory://"):
        import fsspec

        return fsspec.filesystem("memory")
    split_gcs_url(root)  # validates the URL with a clear message
    settings = gcs_settings(env)
    from gcsfs.core import (
        GCSFileSystem,
        aiohttp,  # gcsfs's own HTTP client (not a dependency of ours; pyproject lists gcsfs)
    )

    kwargs: dict = {
        "use_listings_cache": False,
        # per connect and per read, not in total: an overrun is then an aiohttp ClientError that gcsfs retries
        "requests_timeout": aiohttp.ClientTimeout(
            total=None, sock_connect=settings.timeout_seconds, sock_read=settings.timeout_seconds
        ),
    }
    if settings.project:
        kwargs["project"] = settings.project
    if settings.is_emulator:
        return GCSFileSystem(token="anon", endpoint_url=settings.emulator_endpoint, **kwargs)
    try:
        return GCSFileSystem(token="google_default", **kwargs)
    except Exception as exc:  # google.auth.exceptions.DefaultCredentialsError and friends
        raise GCSConfigError(
            f"cannot open {root}: no Google credentials found ({exc}). Run `gcloud auth "
            f"application-default login`, run on GKE with Workload Identity, or set {EMULATOR_ENV} "
            "to use a GCS emulator."
        ) from exc


def gcs_client_for(root: str | None = None, env: Mapping[str, str] | None = None) -> storage.Client:
    """A ``google.cloud.storage.Client`` for the same project/endpoint as :func:`filesystem_for`.

    This is what ``dagster_gcp.GCSResource(project=...).get_client()`` builds; against an emulator
    it uses anonymous credentials and the emulator endpoint explicitly instead of relying on the
    client's own environment sniffing.
    """
    if root is not None:
        split_gcs_url(root)
    settings = gcs_settings(env)
    from google.cloud import storage

    if settings.is_emulator:
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(
            project=settings.project,
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": settings.emulator_endpoint},
        )
    return storage.Client(project=settings.project)
