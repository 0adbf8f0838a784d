"""The fare service under abuse, served for real (``taxi-platform serve`` → ``bentoml serve``) with API keys on.

Each check is a request a hostile or careless client can send: oversized and chunked bodies by the hundred,
batches six times the limit, 10,000 bad quotes, no key, a wrong key, a key past its rate. The server must answer
each quickly and cheaply while ``/livez`` keeps answering.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import yaml

from taxi_platform.devtools.loopback import free_port
from taxi_platform.serving import bento_build, bento_store
from taxi_platform.serving.quote_limits import MAX_BATCH_SIZE
from taxi_platform.serving.quotes import EXAMPLE_QUOTE
from taxi_platform_tests.serving.test_service import _stop, _wait_ready, start_server
from taxi_platform_tests.support.sample_champion import ensure_sample_champion

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
LOAD_KEYS = 100  # one key per concurrent client, so the rate limit does not stop them before their bodies
RATE = 5  # requests per second per key (burst 5) for the rate-limit test


def _hash(key: str) -> str:
    import hashlib

    return hashlib.sha256(key.encode()).hexdigest()


def _memory_limit_bytes() -> int:
    manifest = yaml.safe_load((ROOT / "deploy/k8s/fare-service/deployment.yaml").read_text())
    limit = manifest["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
    units = {"Gi": 1024**3, "Mi": 1024**2}
    return int(float(limit[:-2]) * units[limit[-2:]])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    champion = ensure_sample_champion(tmp_path_factory.getbasetemp() / "sample-champion")
    work = tmp_path_factory.mktemp("hardened")
    data_dir = work / "data"
    home = data_dir / "bentoml"
    info = bento_build.champion_info(champion.tracking_uri)
    bento_store.import_champion(home, info, champion.tracking_uri)
    bento_build.build_bento(home, info)
    keys = {f"client-{i}": f"secret-key-{i}-{os.urandom(8).hex()}" for i in range(LOAD_KEYS + 2)}
    keys_file = work / "api-keys"
    keys_file.write_text("# name:sha256\n" + "".join(f"{n}:{_hash(k)}\n" for n, k in keys.items()))
    port = free_port()
    log = work / "server.log"
    env = {
        **os.environ,
        "TAXI_DATA_DIR": str(data_dir),
        "MLFLOW_TRACKING_URI": champion.tracking_uri,
        "TAXI_PREDICTION_LOG": "off",
        "TAXI_API_KEYS_FILE": str(keys_file),
        "TAXI_RATE_LIMIT": str(RATE),
        "TAXI_RATE_BURST": str(RATE),
    }
    proc, url = start_server(env, port, work, log)
    try:
        _wait_ready(url, proc, log)
        yield url, list(keys.values()), proc
    finally:
        _stop(proc)


def _auth(key: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}


def _group_peak_rss(pgid: int) -> int:
    """The largest peak resident set (VmHWM) of any process in the server's process group."""
    peak = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except (OSError, ValueError, IndexError):
            continue
    return peak


def _livez_ms(url: str) -> float:
    start = time.perf_counter()
    assert requests.get(f"{url}/livez", timeout=10).status_code == 200
    return (time.perf_counter() - start) * 1000


def _upload(url: str, key: str, size: int, chunked: bool) -> int | None:
    """Send an ``size``-byte JSON body by hand (Content-Length or chunked); the server's status, if it answers."""
    host, port = url.removeprefix("http://").split(":")
    head = f"POST /predict_batch HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    head += f"Authorization: Bearer {key}\r\nConnection: close\r\n"
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {size}\r\n\r\n"
    piece = b" " * (256 * 1024)
    frame = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
    try:
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(head.encode())
            sent = 0
            while sent < size:
                sock.sendall(frame)
                sent += len(piece)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
            reply = sock.recv(64)
    except OSError:  # the server answered 413 and closed while we were still sending: that's the point
        return None
    return int(reply.split()[1]) if reply.startswith(b"HTTP/1.1") else None


def _upload_all(url: str, keys: list[str], results) -> None:
    with ThreadPoolExecutor(len(keys)) as pool:
        statuses = list(
            pool.map(lambda i: _upload(url, keys[i], 8 * 1024 * 1024, chunked=i % 2 == 1), range(len(keys)))
        )
    results.put(statuses)


def _burst(url: str, keys: list[str]) -> tuple[list[int | None], list[float]]:
    """100 concurrent 8 MiB uploads (half chunked) while /livez is probed every 20 ms: (statuses, probe ms)."""
    livez: list[float] = []
    done = threading.Event()

    def probe() -> None:
        while not done.is_set():
            livez.append(_livez_ms(url))
            time.sleep(0.02)

    # The 100 clients run in another process, so their threads do not compete with the probe for this
    # process's GIL: the probe measures the server, not the test.
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    clients = ctx.Process(target=_upload_all, args=(url, keys[:100], results))
    prober = threading.Thread(target=probe)
    clients.start()
    prober.start()
    try:
        statuses = results.get(timeout=300)
        clients.join(30)
    finally:
        done.set()
        prober.join()
    return statuses, livez


def test_100_concurrent_8mib_bodies_stay_under_the_memory_limit_and_livez_stays_fast(server):
    url, keys, proc = server
    limit = _memory_limit_bytes()
    bursts = []
    for _ in range(3):  # best of three bursts: the machine is shared with other test runs
        statuses, livez = _burst(url, keys)
        assert {s for s in statuses if s is not None} <= {411, 413}, statuses
        peak = _group_peak_rss(proc.pid)  # the high-water mark since the server started
        assert 0 < peak < limit, f"peak RSS {peak / 2**20:.0f} MiB, limit {limit / 2**20:.0f} MiB"
        bursts.append(sorted(livez))
        if livez and max(livez) < 100:
            break
    assert min(max(b) for b in bursts if b) < 100, [b[-3:] for b in bursts]
    ok = requests.post(f"{url}/predict", json=EXAMPLE_QUOTE, headers=_auth(keys[0]), timeout=10)
    assert ok.status_code == 200, ok.text


def test_10000_invalid_quotes_answer_fast_with_a_capped_error_list(server):
    url, keys, _ = server
    body = json.dumps({"quotes": [{**EXAMPLE_QUOTE, "pickup_zone": 999}] * MAX_BATCH_SIZE})
    timings = []
    for _ in range(3):  # best of three: the machine is shared
        start = time.perf_counter()
        resp = requests.post(f"{url}/predict_batch", data=body, headers=_auth(keys[LOAD_KEYS]), timeout=30)
        timings.append((time.perf_counter() - start) * 1000)
        time.sleep(1 / RATE)
    assert resp.status_code == 400, resp.text
    assert len(resp.content) < 64 * 1024
    detail = resp.json()["detail"]
    assert len(detail) == 21
    assert [d["loc"] for d in detail[:20]] == [["quotes", i, "pickup_zone"] for i in range(20)]
    assert "the first 20 listed" in detail[-1]["msg"] and "not checked" in detail[-1]["msg"]
    assert min(timings) < 100, timings


@pytest.mark.parametrize("item", [EXAMPLE_QUOTE, {}], ids=["real-quotes-413", "empty-objects-400"])
def test_60000_quote_batch_is_refused_fast(server, item):
    url, keys, _ = server
    body = json.dumps({"quotes": [item] * 60_000}, separators=(",", ":"))
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        resp = requests.post(
            f"{url}/predict_batch", data=body, headers=_auth(keys[LOAD_KEYS + 1]), timeout=30
        )
        timings.append((time.perf_counter() - start) * 1000)
        time.sleep(1 / RATE)
    if item:  # 7 MiB: over the body limit, refused from its Content-Length
        assert resp.status_code == 413, resp.text
    else:  # 120 KB: under the body limit, refused on its length before any quote is validated
        assert resp.status_code == 400, resp.text
        assert [d["loc"] for d in resp.json()["detail"]] == [["quotes"]]
        assert f"at most {MAX_BATCH_SIZE}" in resp.json()["detail"][0]["msg"]
    assert min(timings) < 50, timings


def test_api_keys_are_required_on_the_prediction_routes_only(server):
    url, keys, _ = server
    for headers in ({}, {"Authorization": "Bearer not-a-key"}, {"X-API-Key": "nope"}):
        resp = requests.post(f"{url}/predict", json=EXAMPLE_QUOTE, headers=headers, timeout=10)
        assert resp.status_code == 401, resp.text
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert requests.post(f"{url}/predict_batch", json={"quotes": []}, timeout=10).status_code == 401
    assert requests.post(f"{url}/predict", json=EXAMPLE_QUOTE, headers={"X-API-Key": keys[1]}, timeout=10).ok
    batch = requests.post(
        f"{url}/predict_batch",
        json={"quotes": [EXAMPLE_QUOTE] * MAX_BATCH_SIZE},
        headers=_auth(keys[1]),
        timeout=30,
    )
    assert batch.status_code == 200, batch.text
    assert len(batch.json()["predictions"]) == MAX_BATCH_SIZE
    for path in ("/livez", "/readyz", "/metrics"):
        assert requests.get(f"{url}{path}", timeout=10).status_code == 200, path


def test_rate_limit_per_key_answers_429_with_retry_after(server):
    url, keys, _ = server
    statuses = [
        requests.post(f"{url}/predict", json=EXAMPLE_QUOTE, headers=_auth(keys[2]), timeout=10)
        for _ in range(3 * RATE)
    ]
    codes = [r.status_code for r in statuses]
    assert codes[:RATE].count(200) >= RATE - 1 and 429 in codes, codes
    limited = next(r for r in statuses if r.status_code == 429)
    assert int(limited.headers["Retry-After"]) >= 1
    # another key is not affected by this one's limit
    other = requests.post(f"{url}/predict", json=EXAMPLE_QUOTE, headers=_auth(keys[3]), timeout=10)
    assert other.status_code == 200
    time.sleep(1.5)  # the bucket refills
    again = requests.post(f"{url}/predict", json=EXAMPLE_QUOTE, headers=_auth(keys[2]), timeout=10)
    assert again.status_code == 200
