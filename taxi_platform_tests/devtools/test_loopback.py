"""Waiting for a local server: ready, exited, or never answering."""

from __future__ import annotations

import subprocess
import sys

import pytest

from taxi_platform.devtools.loopback import NotReady, free_port, wait_http_ok


def test_ready_server_passes():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/", proc, timeout=30, interval=0.1)
    finally:
        proc.kill()
        proc.wait()


def test_exited_process_reports_its_code():
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    with pytest.raises(NotReady, match="exited with code 3") as info:
        wait_http_ok(f"http://127.0.0.1:{free_port()}/", proc, timeout=5)
    assert info.value.returncode == 3


def test_nothing_listening_times_out_with_the_last_error():
    with pytest.raises(NotReady, match="not ready after 1s") as info:
        wait_http_ok(f"http://127.0.0.1:{free_port()}/", None, timeout=1, interval=0.2)
    assert info.value.returncode is None and info.value.last_error
