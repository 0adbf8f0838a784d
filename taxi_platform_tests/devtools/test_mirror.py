"""The loopback TLC mirror server: headers, bytes, 404/304, path traversal, republishing, fault injection."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import signal
import subprocess
import sys
import time
from datetime import date
from email.utils import parsedate_to_datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import requests

from taxi_platform.devtools.mirror import MirrorServer
from taxi_platform.devtools.sample import write_sample_mirror, write_trip_file
from taxi_platform.devtools.sample_trips import generate_month

YELLOW = "/trip-data/yellow_tripdata_2024-01.parquet"
ZONES = "/misc/taxi_zone_lookup.csv"
TIMEOUT = 5


@pytest.fixture(scope="module")
def mirror_root(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("mirror")
    (base / "secret.txt").write_text("outside the mirror root")
    root = base / "root"
    write_sample_mirror(root, [date(2024, 1, 1)], rows_per_month={"yellow": 2_000, "green": 300}, seed=1)
    return root


@pytest.fixture
def server(mirror_root):
    with MirrorServer(mirror_root) as srv:
        yield srv


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _raw_get(server: MirrorServer, raw_path: str) -> tuple[int, bytes]:
    """A request with the path sent exactly as given (``requests`` would normalise ``..``)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    try:
        conn.putrequest("GET", raw_path, skip_accept_encoding=True)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_get_serves_the_file_with_cdn_headers(server, mirror_root):
    path = mirror_root / YELLOW.lstrip("/")
    data = path.read_bytes()
    r = requests.get(server.url + YELLOW, timeout=TIMEOUT)
    assert r.status_code == 200
    assert r.content == data
    assert r.headers["Content-Length"] == str(len(data))
    assert r.headers["ETag"] == f'"{_md5(data)}"'
    assert parsedate_to_datetime(r.headers["Last-Modified"]).timestamp() == int(path.stat().st_mtime)
    assert re.fullmatch(r"\w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} GMT", r.headers["Last-Modified"])
    assert r.headers["Content-Type"] == "binary/octet-stream"
    assert pq.ParquetFile(path).metadata.num_rows == 2_000

    csv = requests.get(server.url + ZONES, timeout=TIMEOUT)
    assert csv.status_code == 200 and csv.headers["Content-Type"].startswith("text/csv")
    assert csv.content.startswith(b'"LocationID","Borough","Zone","service_zone"')
    assert server.url.startswith("http://127.0.0.1:") and server.port > 0


def test_head_has_the_same_headers_and_no_body(server):
    get = requests.get(server.url + YELLOW, timeout=TIMEOUT)
    head = requests.head(server.url + YELLOW, timeout=TIMEOUT)
    assert head.status_code == 200 and head.content == b""
    for name in ("Content-Length", "ETag", "Last-Modified", "Content-Type"):
        assert head.headers[name] == get.headers[name]
    assert server.request_count(YELLOW) == 2
    assert server.request_count(YELLOW, "HEAD") == 1 and server.request_count(YELLOW, "get") == 1


def test_missing_files_and_directories_are_404(server):
    for path in ("/trip-data/yellow_tripdata_2031-01.parquet", "/trip-data/", "/trip-data", "/", "/nope"):
        r = requests.get(server.url + path, timeout=TIMEOUT)
        assert r.status_code == 404, path
    assert requests.head(server.url + "/trip-data/missing.parquet", timeout=TIMEOUT).status_code == 404


def test_if_none_match_gives_304(server):
    etag = requests.head(server.url + YELLOW, timeout=TIMEOUT).headers["ETag"]
    r = requests.get(server.url + YELLOW, headers={"If-None-Match": etag}, timeout=TIMEOUT)
    assert r.status_code == 304 and r.content == b"" and r.headers["ETag"] == etag
    r = requests.get(server.url + YELLOW, headers={"If-None-Match": '"other"'}, timeout=TIMEOUT)
    assert r.status_code == 200


def test_path_traversal_is_impossible(server, mirror_root):
    (mirror_root / "trip-data" / "escape.parquet").symlink_to(mirror_root.parent / "secret.txt")
    try:
        for raw in ("/../secret.txt", "/trip-data/../../secret.txt", "/%2e%2e/secret.txt", "/trip-data/..%2f..%2fsecret.txt",
                    "/..%5csecret.txt", "//../secret.txt", "/trip-data/escape.parquet", "/misc/%00"):  # fmt: skip
            status, body = _raw_get(server, raw)
            assert status == 404, raw
            assert b"outside the mirror root" not in body
    finally:
        (mirror_root / "trip-data" / "escape.parquet").unlink()
    # Dot segments that stay inside the root are fine.
    status, body = _raw_get(server, "/misc/../trip-data/../misc/taxi_zone_lookup.csv")
    assert status == 200 and body.startswith(b'"LocationID"')


def test_files_added_or_republished_while_running(server, mirror_root):
    green = mirror_root / "trip-data" / "green_tripdata_2024-02.parquet"
    url = server.url + "/trip-data/green_tripdata_2024-02.parquet"
    try:
        assert requests.head(url, timeout=TIMEOUT).status_code == 404
        write_trip_file(generate_month("green", date(2024, 2, 1), 200, seed=1), green)
        os.utime(green, (1_700_000_000, 1_700_000_000))
        first = requests.get(url, timeout=TIMEOUT)
        assert first.status_code == 200 and first.content == green.read_bytes()
        assert parsedate_to_datetime(first.headers["Last-Modified"]).timestamp() == 1_700_000_000

        write_trip_file(generate_month("green", date(2024, 2, 1), 200, seed=2), green)  # the TLC republishes
        os.utime(green, (1_700_086_400, 1_700_086_400))
        second = requests.get(url, timeout=TIMEOUT)
        assert second.content == green.read_bytes() != first.content
        assert second.headers["ETag"] != first.headers["ETag"]
        assert second.headers["ETag"] == f'"{_md5(second.content)}"'
        assert parsedate_to_datetime(second.headers["Last-Modified"]).timestamp() == 1_700_086_400
    finally:
        green.unlink(missing_ok=True)


# -- fault injection -------------------------------------------------------------------------------------------
def test_fault_status(server):
    server.set_fault(YELLOW, ("status", 503))
    for _ in range(3):
        assert requests.get(server.url + YELLOW, timeout=TIMEOUT).status_code == 503
    assert requests.head(server.url + YELLOW, timeout=TIMEOUT).status_code == 503
    assert requests.get(server.url + ZONES, timeout=TIMEOUT).status_code == 200  # other paths unaffected
    server.clear_faults()
    assert requests.get(server.url + YELLOW, timeout=TIMEOUT).status_code == 200


def test_fault_status_then_ok(server, mirror_root):
    server.set_fault(YELLOW, ("status_then_ok", 500, 2))
    codes = [requests.get(server.url + YELLOW, timeout=TIMEOUT).status_code for _ in range(4)]
    assert codes == [500, 500, 200, 200]
    assert server.request_count(YELLOW, "GET") == 4
    server.set_fault(YELLOW, ("status_then_ok", 429, 1))  # setting again restarts the count
    assert requests.get(server.url + YELLOW, timeout=TIMEOUT).status_code == 429
    r = requests.get(server.url + YELLOW, timeout=TIMEOUT)
    assert r.status_code == 200 and r.content == (mirror_root / YELLOW.lstrip("/")).read_bytes()


def test_fault_truncate(server, mirror_root):
    size = (mirror_root / YELLOW.lstrip("/")).stat().st_size
    server.set_fault(YELLOW, ("truncate", 1000))
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    try:
        conn.request("GET", YELLOW)
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Length") == str(size)
        with pytest.raises(http.client.IncompleteRead) as excinfo:
            response.read()
        assert len(excinfo.value.partial) == 1000
    finally:
        conn.close()
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
        requests.get(server.url + YELLOW, timeout=TIMEOUT)
    head = requests.head(server.url + YELLOW, timeout=TIMEOUT)
    assert head.status_code == 200 and head.headers["Content-Length"] == str(size)


def test_fault_html(server):
    server.set_fault(YELLOW, ("html",))
    r = requests.get(server.url + YELLOW, timeout=TIMEOUT)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/html")
    assert r.content.startswith(b"<!DOCTYPE html>")
    assert r.headers["Content-Length"] == str(len(r.content))


def test_fault_reset(server):
    server.set_fault(YELLOW, ("reset",))
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(server.url + YELLOW, timeout=TIMEOUT)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.head(server.url + YELLOW, timeout=TIMEOUT)
    assert server.request_count(YELLOW) == 2
    assert requests.get(server.url + ZONES, timeout=TIMEOUT).status_code == 200  # the server survives


def test_fault_delay(server):
    server.set_fault(YELLOW, ("delay", 0.4))
    started = time.monotonic()
    assert requests.get(server.url + YELLOW, timeout=TIMEOUT).status_code == 200
    assert time.monotonic() - started >= 0.4
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(server.url + YELLOW, timeout=0.1)


def test_fault_headers(server, mirror_root):
    server.set_fault(YELLOW, ("headers", {"Last-Modified": "not a date", "ETag": None, "X-Extra": "1"}))
    r = requests.get(server.url + YELLOW, timeout=TIMEOUT)
    assert r.status_code == 200 and r.content == (mirror_root / YELLOW.lstrip("/")).read_bytes()
    assert r.headers["Last-Modified"] == "not a date"
    assert "ETag" not in r.headers and r.headers["X-Extra"] == "1"
    server.clear_faults(YELLOW)
    assert "ETag" in requests.head(server.url + YELLOW, timeout=TIMEOUT).headers


def test_fault_trickle(server, mirror_root):
    body = (mirror_root / YELLOW.lstrip("/")).read_bytes()
    server.set_fault(YELLOW, ("trickle", len(body) // 5 + 1, 0.1))
    started = time.monotonic()
    with requests.get(server.url + YELLOW, timeout=TIMEOUT, stream=True) as r:
        headers_after = time.monotonic() - started
        assert r.headers["Content-Length"] == str(len(body))
        received = r.content
    assert received == body
    assert (
        headers_after < 0.3 and time.monotonic() - started >= 0.38
    )  # headers at once, then 5 pieces 0.1 s apart


def test_bad_fault_specs_are_rejected(server):
    for fault in (
        ("trickle", 100),
        ("trickle", "100", 0.1),
        ("status",),
        ("explode",),
        ("delay", "1"),
        ("status_then_ok", 503),
        "status",
        ("status", 99),
    ):
        with pytest.raises(ValueError, match="fault"):
            server.set_fault(YELLOW, fault)


def test_quiet_and_stoppable(mirror_root, capfd):
    server = MirrorServer(mirror_root).start()
    url = server.url
    server.set_fault(YELLOW, ("truncate", 10))
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(url + YELLOW, timeout=TIMEOUT)
    server.set_fault(YELLOW, ("reset",))
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(url + YELLOW, timeout=TIMEOUT)
    requests.get(url + "/missing", timeout=TIMEOUT)
    requests.post(url + YELLOW, timeout=TIMEOUT)
    server.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(url + ZONES, timeout=TIMEOUT)
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.url


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="write a mirror there first"):
        MirrorServer(tmp_path / "nowhere").start()


def test_cli_serve_until_terminated(tmp_path):
    dest = tmp_path / "m"
    proc = subprocess.Popen(
        [sys.executable, "-m", "taxi_platform.cli", "sample-mirror", str(dest), "--months", "2024-03",
         "--rows-per-month", "200", "--serve", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "export TLC_BASE_URL=" in line:
                break
        match = re.search(r"export TLC_BASE_URL=(http://127\.0\.0\.1:\d+)", "".join(lines))
        assert match, "".join(lines) + proc.stderr.read() if proc.poll() is not None else "".join(lines)
        r = requests.get(match.group(1) + "/trip-data/green_tripdata_2024-03.parquet", timeout=TIMEOUT)
        assert (
            r.status_code == 200
            and r.content == (dest / "trip-data" / "green_tripdata_2024-03.parquet").read_bytes()
        )
        assert any("SYNTHETIC" in line for line in lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Stopped" in out
