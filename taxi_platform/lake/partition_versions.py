"""Versioned lake partitions on a local disk: immutable version directories behind a symlink that one rename swaps.

Layout of one partition (``dest`` is ``<table>/month=YYYY-MM``)::

    <table>/month=2024-03 -> .versions/month=2024-03/20240501T120000123456-ab12cd     (relative symlink)
    <table>/.versions/month=2024-03/20240501T120000123456-ab12cd/part-0.20240501T120000123456-ab12cd.parquet
    <table>/.versions/month=2024-03.lock                                                (writers' lock file)

A write takes the partition's lock (``fcntl.flock``: the kernel releases it when the process dies, so a killed run
never blocks the next), stages its parts in ``.versions/month=…/<id>.staging``, renames them to version-unique names,
renames the staging directory to ``<id>`` and commits by ``os.replace`` of a temporary symlink over ``month=…``: the
only step a reader can observe, and an atomic one. Readers resolve the link once (:func:`resolve`) and glob inside the
version directory, so they read one version whole; a plain glob through the link never mixes versions either (part
names are version-unique: a file listed in the old version cannot be opened in the new one) but can fail with "file
not found" if the link moves between its listing and its reads. Superseded versions are removed by a later write of
the partition once the commit that superseded them is older than a grace period, so a reader that resolved one still
reads it whole.

Whatever a killed write leaves (staging directories, temporary links, a version never linked, the previous layout's
``.month=….old<n>`` backups and ``.…tmp`` staging directories, a real ``month=…`` directory of the previous layout) is
repaired or migrated by the next write, and by the next read when no writer holds the lock.

:data:`STEP_HOOK` is called with the name of each step (tests use it to interrupt a write between two steps).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

VERSIONS = ".versions"
GRACE_SECONDS = 3600.0  # how long a superseded version stays readable
STAGING_SUFFIX = ".staging"
LEGACY_SUFFIX = ".legacy"
LINK_SUFFIX = ".link"
_OLD_BACKUP = re.compile(r"\.old\d+$")  # the previous layout's backup of a partition being replaced

STEP_HOOK: Callable[[str], None] | None = None  # tests only: called between the steps of a write


def step(name: str) -> None:
    """Report that a write finished step ``name`` (see :data:`STEP_HOOK`)."""
    if STEP_HOOK is not None:
        STEP_HOOK(name)


def new_version_id() -> str:
    """A unique id whose string order is the order of creation (UTC microseconds, then random)."""
    now = time.time_ns()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now // 1_000_000_000))
    return f"{stamp}{(now // 1000) % 1_000_000:06d}-{uuid.uuid4().hex[:6]}"


def versioned_name(name: str, version: str) -> str:
    """``part-0.parquet`` → ``part-0.<version>.parquet``."""
    stem, dot, ext = name.rpartition(".")
    return f"{stem}.{version}.{ext}" if dot else f"{name}.{version}"


def _split(dest: str) -> tuple[str, str, str]:
    """``<table>/month=X`` → (table dir, ``month=X``, versions dir)."""
    dest = dest.rstrip("/")
    parent, name = os.path.split(dest)
    return parent, name, os.path.join(parent, VERSIONS, name)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _parquet_files(directory: str) -> list[str]:
    try:
        return sorted(f for f in os.listdir(directory) if f.endswith(".parquet") and not f.startswith("."))
    except FileNotFoundError:
        return []


@contextmanager
def partition_lock(dest: str, blocking: bool = True) -> Iterator[bool]:
    """Hold the partition's write lock inside the block; yields False when ``blocking`` is off and another process
    holds it. The kernel drops the lock when the holder dies."""
    parent, name, _versions = _split(dest)
    os.makedirs(os.path.join(parent, VERSIONS), exist_ok=True)
    fd = os.open(os.path.join(parent, VERSIONS, f"{name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# -- reading ------------------------------------------------------------------------------------------------------
def resolve(dest: str) -> str | None:
    """The directory that holds the partition's current parts: the version the link points at, a real directory of
    the previous layout, or None when there is no partition. An interrupted swap is repaired here when no writer
    holds the partition (and read through its pending link or backup when one does)."""
    for _attempt in range(3):
        try:
            target = os.readlink(dest)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # not a link: a directory of the previous layout (or a file)
                return dest if os.path.isdir(dest) else None
            raise
        else:
            return os.path.normpath(os.path.join(os.path.dirname(dest.rstrip("/")), target))
        pending = _pending(dest)
        if pending is None:
            if not os.path.lexists(dest):
                return None
            continue  # the link appeared since: read it
        try:
            with partition_lock(dest, blocking=False) as locked:
                if locked:
                    repair(dest)
                    continue
        except OSError:  # a read-only lake: read the pending version without repairing
            pass
        return pending
    return None


def _pending(dest: str) -> str | None:
    """When ``dest`` is missing: the directory an interrupted (or running) swap was about to put there, if any."""
    parent, name, _versions = _split(dest)
    try:
        entries = sorted(os.listdir(parent), reverse=True)  # newest version id first
    except FileNotFoundError:
        return None
    for entry in entries:
        path = os.path.join(parent, entry)
        if entry.startswith(f".{name}.") and entry.endswith(LINK_SUFFIX):
            try:
                target = os.path.normpath(os.path.join(parent, os.readlink(path)))
            except OSError:
                continue
            if os.path.isdir(target):
                return target
    for (
        entry
    ) in entries:  # the previous layout's backup of the old partition, moved aside by an interrupted swap
        if (
            entry.startswith(f".{name}.")
            and _OLD_BACKUP.search(entry)
            and os.path.isdir(os.path.join(parent, entry))
        ):
            return os.path.join(parent, entry)
    return None


# -- repairing ------------------------------------------------------------------------------------------------------
def repair(dest: str) -> None:
    """Finish or undo what an interrupted write left behind; the caller holds the partition lock."""
    parent, name, versions = _split(dest)
    if not os.path.lexists(dest):
        pending = _pending(dest)
        if pending is not None:
            link = _link_to(dest, pending) if os.path.dirname(pending) == versions else None
            if link is not None:
                os.replace(link, dest)
            else:
                os.rename(pending, dest)  # the previous layout's backup goes back
            step("repaired")
    prefix = f".{name}."
    for entry in os.listdir(parent) if os.path.isdir(parent) else ():
        path = os.path.join(parent, entry)
        if not entry.startswith(prefix):
            continue
        if os.path.islink(path):
            os.unlink(path)
        elif entry.endswith(".tmp") or _OLD_BACKUP.search(entry):  # the previous layout's staging and backups
            shutil.rmtree(path, ignore_errors=True)
    for entry in os.listdir(versions) if os.path.isdir(versions) else ():
        if entry.endswith((STAGING_SUFFIX, LEGACY_SUFFIX)):
            shutil.rmtree(os.path.join(versions, entry), ignore_errors=True)
    if os.path.isdir(dest) and not os.path.islink(dest):
        _migrate(dest)


def _link_to(dest: str, version_dir: str) -> str:
    """A temporary symlink beside ``dest`` pointing at ``version_dir`` (relative), ready to replace ``dest``."""
    parent, name, _versions = _split(dest)
    link = os.path.join(parent, f".{name}.{os.path.basename(version_dir)}{LINK_SUFFIX}")
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(os.path.relpath(version_dir, parent), link)
    return link


def _migrate(dest: str) -> None:
    """Turn a real ``month=…`` directory of the previous layout into a version behind a link (its files are hard
    linked, not copied). Readers see the directory, then the pending link, then the link: never nothing."""
    _parent, _name, versions = _split(dest)
    os.makedirs(versions, exist_ok=True)
    version = new_version_id()
    staging = os.path.join(versions, version + STAGING_SUFFIX)
    os.makedirs(staging)
    for f in _parquet_files(dest):
        target = os.path.join(staging, versioned_name(f, version))
        try:
            os.link(os.path.join(dest, f), target)
        except OSError:
            shutil.copy2(os.path.join(dest, f), target)
    os.chmod(staging, 0o755)
    ready = os.path.join(versions, version)
    os.rename(staging, ready)
    step("migrate:version_ready")
    link = _link_to(dest, ready)
    step("migrate:link_created")
    aside = os.path.join(versions, version + LEGACY_SUFFIX)
    os.rename(dest, aside)
    step("migrate:moved_aside")
    os.replace(link, dest)
    step("migrate:committed")
    shutil.rmtree(aside, ignore_errors=True)


# -- writing --------------------------------------------------------------------------------------------------------
def new_staging(dest: str) -> str:
    """A fresh staging directory for the next version of ``dest`` (the caller holds the lock)."""
    _parent, _name, versions = _split(dest)
    os.makedirs(versions, exist_ok=True)
    staging = os.path.join(versions, new_version_id() + STAGING_SUFFIX)
    os.makedirs(staging)
    return staging


def publish(staging: str, dest: str, grace_seconds: float = GRACE_SECONDS) -> str:
    """Make the ``*.parquet`` files in ``staging`` (from :func:`new_staging`) the partition ``dest``; the caller holds
    the lock. Returns the new version directory."""
    parent, _name, versions = _split(dest)
    files = _parquet_files(staging)
    if not files:
        raise ValueError(f"no Parquet parts to publish for {dest}")
    version = os.path.basename(staging)[: -len(STAGING_SUFFIX)]
    for f in files:
        named = os.path.join(staging, versioned_name(f, version))
        os.rename(os.path.join(staging, f), named)
        os.chmod(named, 0o644)  # mkstemp/mkdtemp create private files
        with open(named, "rb") as fh:
            os.fsync(fh.fileno())
    os.chmod(staging, 0o755)
    _fsync_dir(staging)
    step("parts_named")
    ready = os.path.join(versions, version)
    os.rename(staging, ready)
    step("version_ready")
    previous = resolve(dest)
    previous_commit = os.lstat(dest).st_mtime if os.path.islink(dest) else None
    link = _link_to(dest, ready)
    step("link_created")
    os.replace(link, dest)
    _fsync_dir(parent)
    step("committed")
    _sweep(versions, keep={ready, previous}, previous_commit=previous_commit, grace_seconds=grace_seconds)
    step("swept")
    return ready


def _sweep(versions: str, keep: set[str | None], previous_commit: float | None, grace_seconds: float) -> None:
    """Remove superseded versions once the commit that superseded them is older than ``grace_seconds``.

    Every version other than the two kept was superseded at the previous commit or earlier."""
    if previous_commit is None or time.time() - previous_commit <= grace_seconds:
        return
    kept = {os.path.normpath(k) for k in keep if k}
    for entry in os.listdir(versions):
        path = os.path.join(versions, entry)
        if os.path.normpath(path) not in kept and os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)


def remove(dest: str) -> None:
    """Drop the partition: its link (or directory) and every version; the caller holds the lock."""
    _parent, _name, versions = _split(dest)
    if os.path.islink(dest):
        os.unlink(dest)
    else:
        shutil.rmtree(dest, ignore_errors=True)
    shutil.rmtree(versions, ignore_errors=True)
