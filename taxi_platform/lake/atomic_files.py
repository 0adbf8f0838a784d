"""Atomic writes of single files and of files that belong together, for :class:`~taxi_platform.lake.lake.Lake`.

Single files (zone lookup, reports, a month's raw files) are moved into place with ``os.replace`` / a single upload;
files that belong together (a month's raw files, one per service) are published as one unit by
:meth:`AtomicFiles.staged_files`: all new, or, if any move fails, all previous (see :meth:`AtomicFiles.publish_files`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

# A writer's temporary file untouched this long belongs to a dead process (the longest write, a download, is cut
# off by TAXI_DOWNLOAD_DEADLINE_SECONDS, 30 min by default): the next write of the same file removes it.
STALE_TEMPORARY_SECONDS = 2 * 3600.0


def sweep_stale_temporaries(dest: str, older_than: float = STALE_TEMPORARY_SECONDS) -> list[str]:
    """Remove the hidden temporary files (``.<name>.*.tmp``) that killed writers of the local file ``dest`` left
    beside it, if untouched for ``older_than`` seconds; returns their paths. Readers never see them (dot-files);
    this only gives the space back. Backups (``.bak``) are kept: one left by a killed multi-file publish is the
    previous version of a file."""
    folder, name = Path(dest).parent, Path(dest).name
    removed: list[str] = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    cutoff = time.time() - older_than
    for entry in entries:
        if not (entry.name.startswith(f".{name}.") and entry.name.endswith(".tmp")):
            continue
        with contextlib.suppress(FileNotFoundError):
            if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                os.unlink(entry.path)
                removed.append(entry.path)
    return removed


class AtomicFiles:
    """The lake's file writes; a mixin of :class:`~taxi_platform.lake.lake.Lake`, which provides ``is_remote``,
    ``fs`` and ``exists``."""

    @contextmanager
    def staged_file(self, dest: str, suffix: str = "") -> Iterator[str]:
        """Yield a local temporary path; on success move it to ``dest`` atomically.

        On any exception the temporary file is removed and ``dest`` is untouched. The temporary name is a
        dot-file ending in ``.tmp``, so globs such as ``month=*/*.parquet`` never read a half-written file,
        even one left behind by a process that was killed; the next write of ``dest`` removes such leftovers
        once they are stale (:func:`sweep_stale_temporaries`).
        """
        tmp = self._temporary_for(dest, suffix)
        try:
            yield tmp
            self.publish(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _temporary_for(self, dest: str, suffix: str) -> str:
        """A new empty hidden temporary file to write ``dest`` into: beside it locally (after sweeping stale ones),
        in the system's temporary directory for a remote lake."""
        tmp_dir = None
        if not self.is_remote:
            Path(dest).parent.mkdir(parents=True, exist_ok=True)
            sweep_stale_temporaries(dest)
            tmp_dir = str(Path(dest).parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{Path(dest).name}.", suffix=f"{suffix}.tmp", dir=tmp_dir)
        os.close(fd)
        return tmp

    def publish(self, local_file: str, dest: str) -> None:
        """Move a finished local file to ``dest`` in one atomic step."""
        if not self.is_remote:
            Path(dest).parent.mkdir(parents=True, exist_ok=True)
            os.chmod(local_file, 0o644)  # mkstemp creates 0600; lake files are readable like any other output
            try:
                os.replace(local_file, dest)
            except OSError:  # different filesystem: copy next to dest, then rename
                tmp = str(Path(dest).parent / f".{Path(dest).name}.{uuid.uuid4().hex[:8]}.tmp")
                try:
                    shutil.copyfile(local_file, tmp)
                    os.replace(tmp, dest)
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
                os.unlink(local_file)
        else:
            self.fs.put_file(local_file, dest)
            os.unlink(local_file)

    @contextmanager
    def staged_files(self, dests: Sequence[str], suffix: str = "") -> Iterator[list[str]]:
        """Like :meth:`staged_file` for several files that belong together (a month's raw files, one per service).

        Yields one local temporary path per ``dests`` entry; when the block succeeds they are published as one unit
        (:meth:`publish_files`): all new files, or, if anything fails, all previous files. On any exception in the
        block nothing changes."""
        tmps: list[str] = []
        try:
            for dest in dests:
                tmps.append(self._temporary_for(dest, suffix))
            yield list(tmps)
            self.publish_files(list(zip(tmps, dests, strict=True)))
        finally:
            for tmp in tmps:
                if os.path.exists(tmp):
                    os.unlink(tmp)

    def publish_files(self, files: Sequence[tuple[str, str]]) -> None:
        """Move finished local files to their destinations as one unit: ``files`` is ``[(local_file, dest), ...]``.

        Each previous file is first kept under a hidden backup name (a hard link locally, a server-side copy on GCS),
        then every new file is moved into place. If any move fails, the files already replaced are restored from
        their backups (new files where there was none are removed) and the error is raised, so the destinations hold
        either all the new files or all the previous ones. Readers never see a destination missing; between the
        moves (milliseconds locally, one upload per file on GCS) a reader may see some new files next to old ones.
        """
        backups: list[tuple[str, str | None]] = []  # (dest, backup) for every dest prepared so far
        done: list[tuple[str, str | None]] = []
        try:
            for _local, dest in files:
                backups.append((dest, self._backup(dest)))
            for (local, dest), (_dest, backup) in zip(files, backups, strict=True):
                self.publish(local, dest)
                done.append((dest, backup))
        except BaseException:
            for dest, backup in reversed(done):
                try:
                    self._restore(dest, backup)
                except Exception:  # keep restoring the others; the original error is what the caller needs
                    continue
            raise
        finally:
            for _dest, backup in backups:
                if backup is not None:
                    self._discard(backup)

    def _backup(self, dest: str) -> str | None:
        if not self.exists(dest):
            return None
        name = dest.rsplit("/", 1)[-1]
        backup = f"{dest.rsplit('/', 1)[0]}/.{name}.{uuid.uuid4().hex[:8]}.bak"
        if self.is_remote:
            self.fs.copy(dest, backup)
            return backup
        try:
            os.link(dest, backup)
        except OSError:  # no hard links on this filesystem
            shutil.copy2(dest, backup)
        return backup

    def _restore(self, dest: str, backup: str | None) -> None:
        if self.is_remote:
            if backup is None:
                self.fs.rm(dest)
            else:
                self.fs.copy(backup, dest)
        elif backup is None:
            os.unlink(dest)
        else:
            os.replace(backup, dest)

    def _discard(self, backup: str) -> None:
        if self.is_remote:
            if self.fs.exists(backup):
                self.fs.rm(backup)
        elif os.path.exists(backup):
            os.unlink(backup)

    def write_bytes(self, dest: str, data: bytes) -> None:
        with self.staged_file(dest) as tmp:
            Path(tmp).write_bytes(data)
