"""Files that belong together (a month's raw files, one per service) are published as one unit: all new or all old.

Local lakes on disk, and the GCS lake against the real GCS emulator on loopback. Failures are injected into the one
filesystem call that moves a file into place; everything else is real.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from taxi_platform.lake.lake import Lake
from taxi_platform_tests.support import gcs_emulator as emulator

gcs_emulator = emulator.gcs_emulator
gcs_env = emulator.gcs_env
gcs_lake_root = emulator.gcs_lake_root

SERVICES = ("yellow", "green")


def _dests(lake: Lake) -> list[str]:
    return [lake.raw_trips_path(s, "2024-01-01") for s in SERVICES]


def _stage(lake: Lake, contents: list[bytes]) -> None:
    with lake.staged_files(_dests(lake), suffix=".parquet") as tmps:
        for tmp, content in zip(tmps, contents, strict=True):
            Path(tmp).write_bytes(content)


def _all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_staged_files_publish_every_file_and_leave_nothing_else(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    _stage(lake, [b"yellow v1", b"green v1"])
    _stage(lake, [b"yellow v2", b"green v2"])
    assert [Path(d).read_bytes() for d in _dests(lake)] == [b"yellow v2", b"green v2"]
    assert _all_files(tmp_path / "lake") == sorted(
        str(Path(d).relative_to(tmp_path / "lake")) for d in _dests(lake)
    )
    assert all(oct(Path(d).stat().st_mode)[-3:] == "644" for d in _dests(lake))


def test_an_error_while_staging_changes_nothing(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    _stage(lake, [b"yellow v1", b"green v1"])
    with pytest.raises(RuntimeError, match="green download failed"):
        with lake.staged_files(_dests(lake)) as tmps:
            Path(tmps[0]).write_bytes(b"yellow v2")  # yellow is staged ...
            raise RuntimeError("green download failed")  # ... green is not
    assert [Path(d).read_bytes() for d in _dests(lake)] == [b"yellow v1", b"green v1"]
    assert len(_all_files(tmp_path / "lake")) == 2


@pytest.mark.parametrize("existing", [True, False], ids=["replacing", "first-publish"])
def test_a_failed_move_restores_every_file(tmp_path, monkeypatch, existing):
    lake = Lake(str(tmp_path / "lake"))
    if existing:
        _stage(lake, [b"yellow v1", b"green v1"])
    green = _dests(lake)[1]
    real_replace = os.replace

    def replace(src, dst):  # fault injector: green can never be moved into place
        if str(dst) == green:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="No space left"):
        _stage(lake, [b"yellow v2", b"green v2"])
    monkeypatch.setattr(os, "replace", real_replace)
    if existing:
        assert [Path(d).read_bytes() for d in _dests(lake)] == [b"yellow v1", b"green v1"]
        assert len(_all_files(tmp_path / "lake")) == 2
    else:
        assert _all_files(tmp_path / "lake") == []  # yellow's new file was taken back: no half month


def test_gcs_a_failed_upload_restores_every_object(gcs_lake_root, monkeypatch):
    lake = Lake(gcs_lake_root)
    _stage(lake, [b"yellow v1", b"green v1"])
    green = _dests(lake)[1]
    real_put = lake.fs.put_file
    uploads: list[str] = []

    def put_file(lpath, rpath, *args, **kwargs):  # fault injector: the green upload fails
        uploads.append(rpath)
        if rpath == green:
            raise OSError("upload interrupted")
        return real_put(lpath, rpath, *args, **kwargs)

    monkeypatch.setattr(lake.fs, "put_file", put_file)
    with pytest.raises(OSError, match="upload interrupted"):
        _stage(lake, [b"yellow v2", b"green v2"])
    monkeypatch.setattr(lake.fs, "put_file", real_put)
    assert uploads == _dests(lake)  # yellow was replaced before green failed
    lake.fs.invalidate_cache()
    assert [lake.read_bytes(d) for d in _dests(lake)] == [b"yellow v1", b"green v1"]
    month_dirs = {d.rsplit("/", 1)[0] for d in _dests(lake)}
    names = sorted(n for d in month_dirs for n in lake.listdir(d))
    assert names == sorted(d.rsplit("/", 1)[1] for d in _dests(lake))  # no backups left behind


def _killed_writer(lake_root: Path, dest: str) -> str:
    """A process SIGKILLed while writing ``dest`` through staged_file: returns the temporary file it left."""
    import signal
    import subprocess
    import sys

    code = (
        "import os, signal, sys; from pathlib import Path; from taxi_platform.lake.lake import Lake\n"
        "with Lake(sys.argv[1]).staged_file(sys.argv[2]) as tmp:\n"
        "    Path(tmp).write_bytes(b'half a file'); print(tmp, flush=True); os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(lake_root), dest], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = proc.stdout.strip()
    assert Path(left).exists() and Path(left).name.startswith(".") and left.endswith(".tmp")
    return left


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write_once_stale(tmp_path):
    from taxi_platform.lake.atomic_files import STALE_TEMPORARY_SECONDS

    lake = Lake(str(tmp_path / "lake"))
    dest, other = _dests(lake)
    stale, fresh = _killed_writer(tmp_path / "lake", dest), _killed_writer(tmp_path / "lake", dest)
    other_left = _killed_writer(tmp_path / "lake", other)
    old = time.time() - STALE_TEMPORARY_SECONDS - 60
    for path in (stale, other_left):
        os.utime(path, (old, old))
    backup = (
        Path(dest).parent / f".{Path(dest).name}.0123abcd.bak"
    )  # a killed multi-file publish's previous file
    backup.write_bytes(b"previous version")
    os.utime(backup, (old, old))

    lake.write_bytes(dest, b"yellow v1")
    assert Path(dest).read_bytes() == b"yellow v1"
    assert not Path(stale).exists()  # stale: gone
    assert Path(fresh).exists()  # may still be a live writer's: kept
    assert Path(other_left).exists()  # another file's: swept by that file's next write
    assert backup.exists()
    _stage(lake, [b"yellow v2", b"green v2"])
    assert not Path(other_left).exists() and Path(fresh).exists()
