"""The TLC client (``taxi_platform.ingest.tlc``) against a real MirrorServer on loopback.

Every HTTP test talks to ``MirrorServer`` over 127.0.0.1 with injected faults; nothing is mocked.
"""

import functools
import hashlib
import http.server
import ipaddress
import os
import socket
import ssl
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taxi_platform.devtools.sample import write_sample_mirror, write_trip_file
from taxi_platform.devtools.sample_trips import generate_month
from taxi_platform.ingest.tlc import download, fetch
from taxi_platform.ingest.tlc_errors import (
    DownloadError,
    NotParquetError,
    NotPublishedError,
    TlsError,
    TooLargeError,
    UnexpectedSchemaError,
)
from taxi_platform.ingest.tlc_http import parse_http_date, plain_md5_etag
from taxi_platform.ingest.tlc_probe import probe, probe_many
from taxi_platform.ingest.tlc_urls import trip_url, zone_lookup_url
from taxi_platform.ingest.zones import ZoneLookupError, parse_zone_lookup
from taxi_platform.lake.lake import Lake
from taxi_platform_tests.support import mirror_fixtures

ROWS = 300
FAST = {"timeout": (2.0, 5.0), "backoff": 0.01}

JAN = date(2024, 1, 1)
EXTRA_COL = date(2024, 2, 1)  # yellow file with an extra, unknown column
NO_FARE = date(2024, 3, 1)  # yellow file without the required fare_amount column
CORRUPT = date(2024, 4, 1)  # PAR1 ... PAR1 around random bytes
HALF = date(2024, 5, 1)  # a real parquet file cut in half (served with a matching Content-Length)
OLD_ERA = date(2022, 6, 1)
MISSING = date(2031, 1, 1)  # not on the mirror


def _path(service: str, month: date) -> str:
    return f"/trip-data/{service}_tripdata_{month:%Y-%m}.parquet"


@pytest.fixture(scope="module")
def mirror_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mirror")
    write_sample_mirror(root, [OLD_ERA, JAN], services=("yellow", "green"), rows_per_month=ROWS, seed=1)
    trip = root / "trip-data"
    extra = generate_month("yellow", EXTRA_COL, ROWS, seed=2)
    extra = extra.append_column("new_fee", pa.array([0.5] * ROWS, pa.float64()))
    write_trip_file(extra, trip / f"yellow_tripdata_{EXTRA_COL:%Y-%m}.parquet")
    no_fare = generate_month("yellow", NO_FARE, ROWS, seed=3).drop_columns(["fare_amount"])
    write_trip_file(no_fare, trip / f"yellow_tripdata_{NO_FARE:%Y-%m}.parquet")
    (trip / f"yellow_tripdata_{CORRUPT:%Y-%m}.parquet").write_bytes(b"PAR1" + os.urandom(5000) + b"PAR1")
    whole = (trip / f"yellow_tripdata_{JAN:%Y-%m}.parquet").read_bytes()
    (trip / f"yellow_tripdata_{HALF:%Y-%m}.parquet").write_bytes(whole[: len(whole) // 2])
    return root


# One mirror of mirror_root per module; `mirror` resets its faults and counts for each test.
server = mirror_fixtures.server
mirror = mirror_fixtures.mirror


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# -- pure helpers ------------------------------------------------------------------------------------
def test_urls_follow_the_tlc_layout():
    base = "https://d37ci6vzurychx.cloudfront.net"
    assert (
        trip_url(base, "yellow", date(2024, 3, 1))
        == "https://d37ci6vzurychx.cloudfront.net/trip-data/yellow_tripdata_2024-03.parquet"
    )
    assert trip_url(base + "/", "green", date(2023, 11, 1)).endswith(
        "/trip-data/green_tripdata_2023-11.parquet"
    )
    assert "//trip-data" not in trip_url(base + "/", "green", date(2023, 11, 1))
    assert zone_lookup_url(base + "/") == "https://d37ci6vzurychx.cloudfront.net/misc/taxi_zone_lookup.csv"


def test_parse_http_date_accepts_rfc_dates_and_rejects_garbage():
    assert parse_http_date("Wed, 21 Feb 2024 18:39:01 GMT") == datetime(2024, 2, 21, 18, 39, 1, tzinfo=UTC)
    for garbage in ("yesterday", "", None, "Wed, 99 Foo 2024 99:99:99 GMT"):
        assert parse_http_date(garbage) is None


def test_parse_zone_lookup_validates_header_and_row_count(mirror_root):
    content = (mirror_root / "misc" / "taxi_zone_lookup.csv").read_bytes()
    table = parse_zone_lookup(content)
    assert table.num_rows == 265
    assert table.column_names == ["LocationID", "Borough", "Zone", "service_zone"]
    ids = table.column("LocationID").to_pylist()
    assert ids[0] == 1 and ids[-1] == 265
    row_132 = table.slice(131, 1).to_pylist()[0]
    assert row_132["Zone"] == "JFK Airport" and row_132["Borough"] == "Queens"

    with pytest.raises(ZoneLookupError, match="expected 'LocationID,Borough,Zone,service_zone'"):
        parse_zone_lookup(b"id,borough,zone\n1,EWR,Newark Airport\n")
    short = b"\n".join(content.splitlines()[:51])
    with pytest.raises(ZoneLookupError, match="has 50 zones; expected at least 200"):
        parse_zone_lookup(short)
    with pytest.raises(ZoneLookupError, match="header"):
        parse_zone_lookup(b"<!DOCTYPE html><html><body>Service Unavailable</body></html>")


# -- probe -------------------------------------------------------------------------------------------
def test_probe_published_reports_size_etag_and_last_modified(mirror, mirror_root):
    path = mirror_root / "trip-data" / f"yellow_tripdata_{JAN:%Y-%m}.parquet"
    result = probe(mirror.url + _path("yellow", JAN), timeout=FAST["timeout"])
    assert result.status == "published" and result.published
    assert result.http_status == 200
    assert result.size == path.stat().st_size
    assert result.etag == hashlib.md5(path.read_bytes()).hexdigest()
    assert result.last_modified == datetime.fromtimestamp(int(path.stat().st_mtime), tz=UTC)
    assert mirror.request_count(_path("yellow", JAN), "HEAD") == 1
    assert mirror.request_count(_path("yellow", JAN), "GET") == 0


@pytest.mark.parametrize("code", [404, 403])
def test_probe_missing_file_is_not_published(mirror, code):
    if code == 404:
        url = mirror.url + _path("yellow", MISSING)
    else:  # CloudFront answers 403 for a key that does not exist
        mirror.set_fault(_path("yellow", JAN), ("status", 403))
        url = mirror.url + _path("yellow", JAN)
    result = probe(url, timeout=FAST["timeout"])
    assert result.status == "not_published"
    assert not result.published
    assert result.http_status == code


def test_probe_server_error_is_an_error_not_a_crash(mirror):
    mirror.set_fault(_path("green", JAN), ("status", 500))
    result = probe(mirror.url + _path("green", JAN), timeout=FAST["timeout"])
    assert result.status == "error"
    assert result.http_status == 500
    assert "500" in result.message


def test_probe_garbage_last_modified_is_kept_raw(mirror):
    mirror.set_fault(_path("yellow", JAN), ("headers", {"Last-Modified": "not a date at all"}))
    result = probe(mirror.url + _path("yellow", JAN), timeout=FAST["timeout"])
    assert result.status == "published"
    assert result.last_modified is None
    assert result.last_modified_raw == "not a date at all"


def test_probe_unreachable_host_and_timeout_are_errors(mirror):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    refused = probe(f"http://127.0.0.1:{dead_port}/trip-data/x.parquet", timeout=(1.0, 1.0))
    assert refused.status == "error" and "Connection" in refused.message

    mirror.set_fault(_path("yellow", JAN), ("delay", 1.0))
    slow = probe(mirror.url + _path("yellow", JAN), timeout=(1.0, 0.2))
    assert slow.status == "error" and "timed out" in slow.message


def test_probe_many_keeps_order(mirror):
    urls = [
        mirror.url + _path("yellow", JAN),
        mirror.url + _path("green", MISSING),
        mirror.url + _path("green", JAN),
    ]
    results = probe_many(urls, max_workers=3, timeout=FAST["timeout"])
    assert [r.url for r in results] == urls
    assert [r.status for r in results] == ["published", "not_published", "published"]


# -- download ----------------------------------------------------------------------------------------
def test_download_is_byte_identical_with_hash_and_footer_facts(mirror, mirror_root, tmp_path):
    source = mirror_root / "trip-data" / f"yellow_tripdata_{JAN:%Y-%m}.parquet"
    dest = tmp_path / "lake" / "yellow.parquet"
    result = download(mirror.url + _path("yellow", JAN), dest, service="yellow", retries=0, **FAST)
    assert dest.read_bytes() == source.read_bytes()
    assert result.sha256 == _sha256(source) == _sha256(dest)
    assert result.size == source.stat().st_size
    assert result.num_rows == ROWS == pq.ParquetFile(dest).metadata.num_rows
    assert result.era == "yellow-2023-02"
    assert result.extra_columns == ()
    assert result.etag == hashlib.md5(source.read_bytes()).hexdigest()
    assert result.last_modified == datetime.fromtimestamp(int(source.stat().st_mtime), tz=UTC)
    assert result.data_source == "synthetic"
    assert result.attempts == 1
    assert result.path == str(dest)
    assert _leftovers(dest.parent) == ["yellow.parquet"]  # no temporary files left behind
    assert mirror.request_count(_path("yellow", JAN), "GET") == 1


def test_download_recognises_the_pre_2023_era(mirror, tmp_path):
    result = download(
        mirror.url + _path("green", OLD_ERA), tmp_path / "g.parquet", service="green", retries=0, **FAST
    )
    assert result.era == "green-pre-2023-02"


@pytest.mark.parametrize("code", [404, 403])
def test_download_not_published_is_not_retried(mirror, tmp_path, code):
    month = MISSING if code == 404 else JAN
    if code == 403:
        mirror.set_fault(_path("green", JAN), ("status", 403))
    dest = tmp_path / "green.parquet"
    with pytest.raises(NotPublishedError) as err:
        download(mirror.url + _path("green", month), dest, service="green", retries=3, **FAST)
    message = str(err.value)
    assert f"green trips for {month:%Y-%m} are not published yet" in message
    assert "7-8 weeks" in message and "TLC_BASE_URL" in message and f"HTTP {code}" in message
    assert err.value.http_status == code
    assert mirror.request_count(_path("green", month), "GET") == 1
    assert not dest.exists() and _leftovers(tmp_path) == []


def test_download_retries_transient_5xx_then_succeeds(mirror, mirror_root, tmp_path):
    mirror.set_fault(_path("yellow", JAN), ("status_then_ok", 503, 2))
    dest = tmp_path / "y.parquet"
    result = download(mirror.url + _path("yellow", JAN), dest, service="yellow", retries=3, **FAST)
    assert result.attempts == 3
    assert mirror.request_count(_path("yellow", JAN), "GET") == 3
    assert result.sha256 == _sha256(mirror_root / "trip-data" / f"yellow_tripdata_{JAN:%Y-%m}.parquet")


def test_download_gives_up_after_retries_on_truncated_body(mirror, tmp_path):
    mirror.set_fault(_path("yellow", JAN), ("truncate", 1000))
    dest = tmp_path / "y.parquet"
    with pytest.raises(DownloadError) as err:
        download(mirror.url + _path("yellow", JAN), dest, service="yellow", retries=2, **FAST)
    assert "truncated" in str(err.value) and "received 1000 of" in str(err.value)
    assert err.value.transient and err.value.attempts == 3
    assert mirror.request_count(_path("yellow", JAN), "GET") == 3
    assert not dest.exists() and _leftovers(tmp_path) == []


def test_failed_download_keeps_the_previous_file(mirror, tmp_path):
    dest = tmp_path / "y.parquet"
    dest.write_bytes(b"previous version")
    mirror.set_fault(_path("yellow", JAN), ("truncate", 5000))
    with pytest.raises(DownloadError):
        download(mirror.url + _path("yellow", JAN), dest, service="yellow", retries=1, **FAST)
    assert dest.read_bytes() == b"previous version"
    assert _leftovers(tmp_path) == ["y.parquet"]


def test_download_html_page_is_a_clear_error_without_retry(mirror, tmp_path):
    mirror.set_fault(_path("yellow", JAN), ("html",))
    dest = tmp_path / "y.parquet"
    with pytest.raises(NotParquetError) as err:
        download(mirror.url + _path("yellow", JAN), dest, service="yellow", retries=3, **FAST)
    message = str(err.value)
    assert "returned something that is not a Parquet file" in message
    assert "text/html" in message and "<!DOCTYPE html>" in message and "TLC_BASE_URL" in message
    assert not err.value.transient
    assert mirror.request_count(_path("yellow", JAN), "GET") == 1
    assert not dest.exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("month", "reason"), [(CORRUPT, "cannot read its footer"), (HALF, "does not end with")]
)
def test_download_corrupt_parquet_is_rejected(mirror, tmp_path, month, reason):
    dest = tmp_path / "y.parquet"
    with pytest.raises(NotParquetError, match=reason) as err:
        download(mirror.url + _path("yellow", month), dest, service="yellow", retries=2, **FAST)
    assert "not a Parquet file" in str(err.value)
    assert not dest.exists() and _leftovers(tmp_path) == []


def test_download_accepts_and_reports_extra_columns(mirror, tmp_path):
    dest = tmp_path / "y.parquet"
    result = download(mirror.url + _path("yellow", EXTRA_COL), dest, service="yellow", retries=0, **FAST)
    assert result.extra_columns == ("new_fee",)
    assert result.era == "yellow-2023-02"
    assert pq.read_schema(dest).names[-1] == "new_fee"


def test_download_missing_required_column_names_it(mirror, tmp_path):
    dest = tmp_path / "y.parquet"
    with pytest.raises(UnexpectedSchemaError, match="fare_amount") as err:
        download(mirror.url + _path("yellow", NO_FARE), dest, service="yellow", retries=0, **FAST)
    assert "missing required column" in str(err.value)
    assert not dest.exists() and _leftovers(tmp_path) == []


def test_download_wrong_service_file_is_rejected(mirror, tmp_path):
    # a green file asked for as yellow has no tpep_* columns
    with pytest.raises(UnexpectedSchemaError, match="tpep_pickup_datetime"):
        download(
            mirror.url + _path("green", JAN), tmp_path / "x.parquet", service="yellow", retries=0, **FAST
        )


def test_download_connection_reset_is_retried(mirror, tmp_path):
    mirror.set_fault(_path("green", JAN), ("reset",))
    dest = tmp_path / "g.parquet"
    with pytest.raises(DownloadError, match="after 3 attempt") as err:
        download(mirror.url + _path("green", JAN), dest, service="green", retries=2, **FAST)
    assert err.value.transient
    assert mirror.request_count(_path("green", JAN), "GET") == 3
    assert not dest.exists()
    # once the connection behaves again the same call succeeds
    mirror.clear_faults()
    assert download(mirror.url + _path("green", JAN), dest, service="green", retries=2, **FAST).attempts == 1


def test_download_read_timeout_is_retried(mirror, tmp_path):
    mirror.set_fault(_path("green", JAN), ("delay", 0.6))
    with pytest.raises(DownloadError, match="timed out"):
        download(
            mirror.url + _path("green", JAN),
            tmp_path / "g.parquet",
            service="green",
            retries=1,
            timeout=(1.0, 0.2),
            backoff=0.01,
        )
    assert mirror.request_count(_path("green", JAN), "GET") == 2


def test_download_into_a_lake_publishes_atomically(mirror, mirror_root, tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    dest = lake.raw_trips_path("green", "2024-01-01")
    result = download(mirror.url + _path("green", JAN), dest, service="green", lake=lake, retries=0, **FAST)
    assert (
        Path(dest).read_bytes()
        == (mirror_root / "trip-data" / f"green_tripdata_{JAN:%Y-%m}.parquet").read_bytes()
    )
    assert result.era == "green-2023-02"
    assert _leftovers(Path(dest).parent) == [Path(dest).name]


def test_fetch_zone_lookup(mirror, mirror_root):
    result = fetch(zone_lookup_url(mirror.url), retries=0, **FAST)
    assert result.content == (mirror_root / "misc" / "taxi_zone_lookup.csv").read_bytes()
    assert result.sha256 == hashlib.sha256(result.content).hexdigest()
    assert parse_zone_lookup(result.content).num_rows == 265
    with pytest.raises(NotPublishedError, match="TLC_BASE_URL"):
        fetch(mirror.url + "/misc/nope.csv", retries=2, **FAST)
    assert mirror.request_count("/misc/nope.csv", "GET") == 1


# -- limits: deadline, size cap, MD5, TLS --------------------------------------------------------------
def test_a_trickling_server_is_cut_off_at_the_deadline(mirror, tmp_path):
    # 100 bytes every 50 ms: every read arrives well within the 5 s read timeout, but the file would take minutes
    mirror.set_fault(_path("yellow", JAN), ("trickle", 100, 0.05))
    dest = tmp_path / "y.parquet"
    dest.write_bytes(b"previous version")
    started = time.monotonic()
    with pytest.raises(DownloadError) as err:
        download(mirror.url + _path("yellow", JAN), dest, service="yellow", retries=3, deadline=1.0, **FAST)
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 3.0
    message = str(err.value)
    assert "did not finish within its 1 s deadline" in message and "TAXI_DOWNLOAD_DEADLINE_SECONDS" in message
    assert err.value.transient and err.value.attempts == 1
    assert mirror.request_count(_path("yellow", JAN), "GET") == 1  # the deadline covers retries too
    assert dest.read_bytes() == b"previous version" and _leftovers(tmp_path) == ["y.parquet"]


def test_a_slow_but_timely_download_completes(mirror, mirror_root, tmp_path):
    source = mirror_root / "trip-data" / f"green_tripdata_{JAN:%Y-%m}.parquet"
    mirror.set_fault(_path("green", JAN), ("trickle", source.stat().st_size // 4 + 1, 0.05))
    dest = tmp_path / "g.parquet"
    download(mirror.url + _path("green", JAN), dest, service="green", retries=0, deadline=5.0, **FAST)
    assert dest.read_bytes() == source.read_bytes()


def test_a_content_length_over_the_cap_is_refused_before_downloading(mirror, mirror_root, tmp_path):
    size = (mirror_root / "trip-data" / f"yellow_tripdata_{JAN:%Y-%m}.parquet").stat().st_size
    dest = tmp_path / "y.parquet"
    with pytest.raises(TooLargeError) as err:
        download(
            mirror.url + _path("yellow", JAN), dest, service="yellow", retries=3, max_bytes=size - 1, **FAST
        )
    assert f"announces {size} bytes" in str(err.value) and "TAXI_DOWNLOAD_MAX_BYTES" in str(err.value)
    assert not err.value.transient
    assert mirror.request_count(_path("yellow", JAN), "GET") == 1
    assert _leftovers(tmp_path) == []
    # exactly at the cap is fine
    download(mirror.url + _path("yellow", JAN), dest, service="yellow", retries=0, max_bytes=size, **FAST)
    assert dest.stat().st_size == size


def test_a_body_growing_past_the_cap_is_aborted(mirror, mirror_root, tmp_path):
    # no Content-Length: the body runs until the server closes the connection
    mirror.set_fault(_path("yellow", JAN), ("headers", {"Content-Length": None, "Connection": "close"}))
    size = (mirror_root / "trip-data" / f"yellow_tripdata_{JAN:%Y-%m}.parquet").stat().st_size
    with pytest.raises(TooLargeError, match=f"sent more than the {size // 2} byte limit") as err:
        download(
            mirror.url + _path("yellow", JAN),
            tmp_path / "y.parquet",
            service="yellow",
            retries=3,
            max_bytes=size // 2,
            **FAST,
        )
    assert not err.value.transient
    assert mirror.request_count(_path("yellow", JAN), "GET") == 1
    assert _leftovers(tmp_path) == []


def test_a_body_that_differs_from_its_md5_etag_is_retried_as_corruption(mirror, tmp_path):
    wrong = hashlib.md5(b"some other content").hexdigest()
    mirror.set_fault(_path("yellow", JAN), ("headers", {"ETag": f'"{wrong}"'}))
    dest = tmp_path / "y.parquet"
    with pytest.raises(DownloadError) as err:
        download(mirror.url + _path("yellow", JAN), dest, service="yellow", retries=2, **FAST)
    message = str(err.value)
    assert "corrupted in transit" in message and f"differs from the ETag {wrong}" in message
    assert err.value.transient and err.value.attempts == 3
    assert mirror.request_count(_path("yellow", JAN), "GET") == 3
    assert _leftovers(tmp_path) == []
    # a mirror whose ETags are not MD5s can turn the check off
    result = download(
        mirror.url + _path("yellow", JAN), dest, service="yellow", retries=0, verify_md5=False, **FAST
    )
    assert result.etag == wrong


@pytest.mark.parametrize("etag", ['W/"{md5}"', '"{md5}-3"', '"{md5}x"', '"not-an-md5"'])
def test_weak_multipart_and_other_etags_are_not_compared(mirror, tmp_path, etag):
    wrong = hashlib.md5(b"some other content").hexdigest()
    mirror.set_fault(_path("green", JAN), ("headers", {"ETag": etag.format(md5=wrong)}))
    result = download(
        mirror.url + _path("green", JAN), tmp_path / "g.parquet", service="green", retries=0, **FAST
    )
    assert result.attempts == 1


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_only_plain_32_hex_etags_count_as_md5(etag):
    is_md5 = len(etag) == 32 and all(c in "0123456789abcdefABCDEF" for c in etag)
    assert plain_md5_etag(etag) == (etag.lower() if is_md5 else None)
    assert plain_md5_etag(f"W/{etag}") is None


def _self_signed_context(directory: Path) -> ssl.SSLContext:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    return context


@pytest.fixture()
def untrusted_https(mirror_root, tmp_path):
    """An HTTPS server on loopback with a self-signed certificate, serving the mirror; counts TLS handshakes."""
    context = _self_signed_context(tmp_path)
    handshakes = []

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True

        def get_request(self):
            sock, addr = super().get_request()
            handshakes.append(addr)
            return context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

        def handle_error(self, request, client_address):
            pass

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(mirror_root))
    server = Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}", handshakes
    server.shutdown()
    server.server_close()


def test_an_untrusted_certificate_is_not_retried(untrusted_https, tmp_path):
    base, handshakes = untrusted_https
    (tmp_path / "out").mkdir()
    dest = tmp_path / "out" / "y.parquet"
    started = time.monotonic()
    with pytest.raises(TlsError) as err:
        download(
            trip_url(base, "yellow", JAN), dest, service="yellow", retries=3, timeout=(2.0, 5.0), backoff=1.0
        )
    assert time.monotonic() - started < 1.0  # no backoff wait: not retried
    message = str(err.value)
    assert (
        "TLS connection to" in message
        and "CERTIFICATE_VERIFY_FAILED" in message
        and "not retrying" in message
    )
    assert not err.value.transient and err.value.attempts == 1
    assert len(handshakes) == 1
    assert _leftovers(tmp_path / "out") == []


def test_tls_to_a_plain_http_port_is_not_retried(mirror, tmp_path):
    https_url = mirror.url.replace("http://", "https://") + _path("green", JAN)
    with pytest.raises(TlsError) as err:
        download(
            https_url, tmp_path / "g.parquet", service="green", retries=3, timeout=(2.0, 5.0), backoff=1.0
        )
    assert not err.value.transient and err.value.attempts == 1


def test_a_server_that_never_answers_is_cut_off_at_the_deadline(mirror, tmp_path):
    mirror.set_fault(_path("green", JAN), ("delay", 3.0))  # headers only after 3 s; the read timeout is 5 s
    started = time.monotonic()
    with pytest.raises(DownloadError, match="did not finish within its 0.5 s deadline") as err:
        download(
            mirror.url + _path("green", JAN),
            tmp_path / "g.parquet",
            service="green",
            retries=3,
            deadline=0.5,
            **FAST,
        )
    assert time.monotonic() - started < 1.5
    assert err.value.transient and err.value.attempts == 1
