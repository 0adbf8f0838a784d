"""Versioned lake partitions on GCS: immutable version objects, one pointer object per partition written with a
generation precondition, and a lease object that keeps two runs of one partition from interleaving.

Layout of one partition (``dest`` is ``gs://bucket/prefix/<table>/month=YYYY-MM``)::

    <table>/month=2024-03/CURRENT                      text: ../.versions/month=2024-03/<id>
    <table>/.versions/month=2024-03/<id>/part-0.<id>.parquet
    <table>/.versions/month=2024-03.lease              JSON: owner and expiry of the run writing the partition

A write takes the lease (created with ``if_generation_match=0``; taken over, with a precondition on its generation,
only once expired; renewed by a heartbeat thread while the write runs), notes the pointer's generation, uploads the
parts under a new version id, and commits by rewriting ``CURRENT`` with ``if_generation_match`` set to the generation
it noted: one object write, atomic for readers, and refused (:class:`PartitionConflict`) when another run committed
since, so a stale writer never overwrites a newer commit. Readers read ``CURRENT`` once (:meth:`GCSPartitions.resolve`)
and glob inside the version. Parts a killed write uploaded are never referenced and are removed, with superseded
versions, by a later write once the commit that superseded them is older than the grace period. A partition of the
previous layout (``month=…/*.parquet``, no pointer) is read as it is and replaced by the first versioned write.

``memory://`` lakes (tests, demos in one process) use the same layout without preconditions.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from taxi_platform.lake.partition_versions import (
    GRACE_SECONDS,
    VERSIONS,
    new_version_id,
    step,
    versioned_name,
)

POINTER = "CURRENT"
LEASE_SECONDS = 120.0
_POLL_SECONDS = 1.0


class PartitionConflict(RuntimeError):
    """Another run committed the partition after this run took its lease: this run's version is not published."""


class LeaseTimeout(TimeoutError):
    """Another run holds the partition's lease for longer than this run was willing to wait."""


class _Conflict(Exception):
    """A generation precondition failed."""


@dataclass
class Lease:
    """A held lease and what the holder saw of the partition when it took it."""

    name: str
    owner: str
    generation: int
    pointer_generation: int = 0
    pointer_target: str | None = None
    pointer_updated: float | None = None
    lost: bool = False
    stop: threading.Event = field(default_factory=threading.Event)


class _GCSStore:
    """Objects of one bucket through google-cloud-storage, with generation preconditions.

    Every call carries the lake's deadline (``TAXI_GCS_TIMEOUT_SECONDS``); the client retries a call that overran
    it, or got a 5xx, with backoff (conditional writes and deletes are retried because they carry a precondition).
    A retried conditional write whose first attempt did land (the answer was lost, or came after the deadline) is
    refused by its own precondition (412): :meth:`put` then reads the object, and when it holds exactly what this
    write sent the write is done, not a conflict. Every object written with a precondition has unique content (a
    lease names its owner, a pointer its version id, a part sits under its version id), so equal content is this
    write's.
    """

    def __init__(self, root: str):
        from taxi_platform.lake.gcs import gcs_client_for, gcs_settings, split_gcs_url

        self.bucket_name, _prefix = split_gcs_url(root)
        self.bucket = gcs_client_for(root).bucket(self.bucket_name)
        self.timeout = gcs_settings().timeout_seconds

    def key(self, url: str) -> str:
        return url.split("://", 1)[1].split("/", 1)[1]

    def get(self, url: str) -> tuple[bytes, int, float] | None:
        from google.api_core.exceptions import NotFound

        blob = self.bucket.get_blob(self.key(url), timeout=self.timeout)
        if blob is None:
            return None
        generation, updated = int(blob.generation), blob.updated.timestamp()
        try:
            data = blob.download_as_bytes(if_generation_match=generation, timeout=self.timeout)
        except NotFound:
            return None
        except Exception as exc:
            if _is_precondition(exc):
                return self.get(url)  # rewritten between the two requests: read the new one
            raise
        return data, generation, updated

    def put(self, url: str, data: bytes | None, if_generation_match: int, path: str | None = None) -> int:
        blob = self.bucket.blob(self.key(url))
        try:
            if path is not None:
                blob.upload_from_filename(path, if_generation_match=if_generation_match, timeout=self.timeout)
            else:
                blob.upload_from_string(data, if_generation_match=if_generation_match, timeout=self.timeout)
        except Exception as exc:
            if _is_precondition(exc):
                landed = self._landed(url, data, path)
                if landed is not None:
                    return landed
                raise _Conflict(url) from exc
            raise
        return int(blob.generation)

    def _landed(self, url: str, data: bytes | None, path: str | None) -> int | None:
        """The generation of ``url`` when it holds exactly the bytes this write sent, else None."""
        import base64

        blob = self.bucket.get_blob(self.key(url), timeout=self.timeout)
        if blob is None:
            return None
        generation = int(blob.generation)  # before a download, which may reset the blob's properties
        try:
            if path is not None:
                with open(path, "rb") as fh:
                    digest = hashlib.file_digest(fh, "md5").digest()
                if blob.md5_hash:
                    same = base64.b64decode(blob.md5_hash) == digest
                else:
                    data = blob.download_as_bytes(if_generation_match=generation, timeout=self.timeout)
                    same = hashlib.md5(data).digest() == digest
            else:
                same = blob.download_as_bytes(if_generation_match=generation, timeout=self.timeout) == data
        except Exception as exc:
            if _is_precondition(exc):
                return None  # rewritten since: by another writer
            raise
        return generation if same else None

    def delete(self, url: str, if_generation_match: int | None = None) -> None:
        from google.api_core.exceptions import NotFound

        try:
            self.bucket.blob(self.key(url)).delete(
                if_generation_match=if_generation_match, timeout=self.timeout
            )
        except NotFound:
            pass
        except Exception as exc:
            if not _is_precondition(exc):
                raise

    def list(self, url_prefix: str) -> list[str]:
        scheme = url_prefix.split("://", 1)[0]
        blobs = self.bucket.list_blobs(prefix=self.key(url_prefix), timeout=self.timeout)
        return sorted(f"{scheme}://{self.bucket_name}/{b.name}" for b in blobs)


class _FsspecStore:
    """The same operations on any fsspec filesystem (``memory://``), without atomic preconditions."""

    def __init__(self, fs):
        self.fs = fs

    def get(self, url: str) -> tuple[bytes, int, float] | None:
        try:
            data = self.fs.cat_file(url)
        except FileNotFoundError:
            return None
        return data, _generation(data), time.time() - 2 * GRACE_SECONDS  # no update time: treat as old

    def put(self, url: str, data: bytes | None, if_generation_match: int, path: str | None = None) -> int:
        current = self.get(url)
        if (current[1] if current else 0) != if_generation_match:
            raise _Conflict(url)
        if path is not None:
            with open(path, "rb") as fh:
                data = fh.read()
        self.fs.pipe_file(url, data)
        return _generation(data)

    def delete(self, url: str, if_generation_match: int | None = None) -> None:
        current = self.get(url)
        if current is not None and if_generation_match in (None, current[1]):
            self.fs.rm(url)

    def list(self, url_prefix: str) -> list[str]:
        scheme = url_prefix.split("://", 1)[0]
        found = self.fs.find(url_prefix.rsplit("/", 1)[0])
        urls = [p if "://" in p else f"{scheme}://{p.lstrip('/')}" for p in found]
        return sorted(u for u in urls if u.startswith(url_prefix))


def _generation(data: bytes) -> int:
    return int.from_bytes(hashlib.sha256(data).digest()[:7], "big") or 1


def _is_precondition(exc: Exception) -> bool:
    from google.api_core.exceptions import PreconditionFailed

    return isinstance(exc, PreconditionFailed) or getattr(exc, "code", None) == 412


class GCSPartitions:
    """Versioned partitions of a remote lake (see the module docstring)."""

    def __init__(
        self,
        root: str,
        fs=None,
        lease_seconds: float = LEASE_SECONDS,
        grace_seconds: float = GRACE_SECONDS,
        wait_seconds: float | None = None,
    ):
        is_gcs = root.startswith(("gs://", "gcs://"))
        self.store = _GCSStore(root) if is_gcs else _FsspecStore(fs)
        self.lease_seconds = lease_seconds
        self.grace_seconds = grace_seconds
        self.wait_seconds = wait_seconds

    # -- names ---------------------------------------------------------------------------------------------------
    @staticmethod
    def _versions(dest: str) -> str:
        table, name = dest.rstrip("/").rsplit("/", 1)
        return f"{table}/{VERSIONS}/{name}"

    @staticmethod
    def _target(dest: str, pointer: str) -> str:
        scheme, rest = dest.rstrip("/").split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, pointer.strip()))}"

    # -- reading -------------------------------------------------------------------------------------------------
    def resolve(self, dest: str) -> str | None:
        """The prefix holding the partition's current parts (the version ``CURRENT`` names, or a partition of the
        previous layout), or None when there is none."""
        found = self.store.get(f"{dest}/{POINTER}")
        if found is not None:
            return self._target(dest, found[0].decode())
        if any(u.endswith(".parquet") and "/" not in u[len(dest) + 1 :] for u in self.store.list(f"{dest}/")):
            return dest
        return None

    # -- the lease -----------------------------------------------------------------------------------------------
    @contextmanager
    def lease(self, dest: str) -> Iterator[Lease]:
        """Hold the partition's lease inside the block (renewed in the background)."""
        lease = self._acquire(dest)
        beat = threading.Thread(target=self._heartbeat, args=(lease,), name="partition-lease", daemon=True)
        beat.start()
        try:
            yield lease
        finally:
            lease.stop.set()
            beat.join()
            if not lease.lost:
                self.store.delete(lease.name, if_generation_match=lease.generation)

    def _body(self, owner: str) -> bytes:
        return json.dumps(
            {
                "owner": owner,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "expires": time.time() + self.lease_seconds,
            }
        ).encode()

    def _acquire(self, dest: str) -> Lease:
        name = f"{self._versions(dest)}.lease"
        owner = uuid.uuid4().hex
        deadline = None if self.wait_seconds is None else time.monotonic() + self.wait_seconds
        while True:
            current = self.store.get(name)
            expired = current is None or _expires(current[0]) < time.time()
            if expired:
                try:
                    generation = self.store.put(name, self._body(owner), current[1] if current else 0)
                except _Conflict:
                    continue  # another run took it first: look again
                lease = Lease(name=name, owner=owner, generation=generation)
                pointer = self.store.get(f"{dest}/{POINTER}")
                if pointer is not None:
                    lease.pointer_target = self._target(dest, pointer[0].decode())
                    lease.pointer_generation, lease.pointer_updated = pointer[1], pointer[2]
                step("leased")
                return lease
            if deadline is not None and time.monotonic() > deadline:
                raise LeaseTimeout(
                    f"{dest} is being written by another run (lease {name} held until "
                    f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(_expires(current[0])))})"
                )
            time.sleep(min(_POLL_SECONDS, self.lease_seconds / 4))

    def _heartbeat(self, lease: Lease) -> None:
        while not lease.stop.wait(self.lease_seconds / 3):
            try:
                lease.generation = self.store.put(lease.name, self._body(lease.owner), lease.generation)
            except _Conflict:
                lease.lost = True  # expired and taken over: the commit's precondition will refuse this run
                return
            except Exception:
                continue  # a transient error: try again at the next beat

    # -- writing -------------------------------------------------------------------------------------------------
    def publish(self, staging: str, dest: str, lease: Lease) -> str:
        """Upload the ``*.parquet`` files of the local ``staging`` directory as a new version and commit it."""
        files = sorted(f for f in os.listdir(staging) if f.endswith(".parquet"))
        if not files:
            raise ValueError(f"no Parquet parts to publish for {dest}")
        version = new_version_id()
        prefix = f"{self._versions(dest)}/{version}"
        uploaded = []
        for f in files:
            url = f"{prefix}/{versioned_name(f, version)}"
            self.store.put(url, None, 0, path=os.path.join(staging, f))
            uploaded.append(url)
            step("part_uploaded")
        pointer = posixpath.relpath(prefix.split("://", 1)[1], dest.split("://", 1)[1])
        try:
            if lease.lost:
                raise _Conflict(lease.name)
            self.store.put(f"{dest}/{POINTER}", pointer.encode(), lease.pointer_generation)
        except _Conflict as exc:
            for url in uploaded:
                self.store.delete(url)
            raise PartitionConflict(
                f"{dest} was committed by another run after this run took its lease (it lost the lease or "
                "overran it); this run's version was discarded, the other run's stands"
            ) from exc
        step("committed")
        if lease.pointer_generation == 0:  # the previous layout's parts, now hidden by the pointer
            for url in self.store.list(f"{dest}/"):
                if url.endswith(".parquet"):
                    self.store.delete(url)
            step("legacy_removed")
        self._sweep(dest, keep={prefix, lease.pointer_target}, previous_commit=lease.pointer_updated)
        step("swept")
        return prefix

    def _sweep(self, dest: str, keep: set[str | None], previous_commit: float | None) -> None:
        if previous_commit is None or time.time() - previous_commit <= self.grace_seconds:
            return
        versions = f"{self._versions(dest)}/"
        for url in self.store.list(versions):
            if url.rsplit("/", 1)[0] not in keep:
                self.store.delete(url)

    def remove(self, dest: str) -> None:
        """Drop the partition: its pointer, any parts of the previous layout, and every version."""
        for url in self.store.list(f"{dest}/") + self.store.list(f"{self._versions(dest)}/"):
            self.store.delete(url)


def _expires(data: bytes) -> float:
    try:
        return float(json.loads(data)["expires"])
    except (ValueError, KeyError, TypeError):
        return 0.0  # unreadable: treat as expired
