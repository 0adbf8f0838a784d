"""A local HTTP server that serves a TLC-layout directory like the CDN does, with fault injection.

``MirrorServer(root)`` serves ``root/trip-data/…`` and ``root/misc/…`` on loopback. Files are read from
disk on every request, so a test can add or republish files while it runs; the ETag is the quoted MD5 of
the content (as S3/CloudFront do), cached per (path, mtime, size). ``Last-Modified`` is the file mtime.

Fault injection, per URL path, for download tests::

    server.set_fault("/trip-data/yellow_tripdata_2024-01.parquet", ("status_then_ok", 503, 2))

=============================== ==================================================================
``("status", code)``            always answer ``code``
``("status_then_ok", code, n)`` answer ``code`` to the first ``n`` requests, then serve normally
``("truncate", nbytes)``        GET: real headers and Content-Length, only ``nbytes`` of body, then close
``("html",)``                   200 with an HTML page (what a captive portal or error page looks like)
``("reset",)``                  close the connection (TCP reset) without any response
``("delay", seconds)``          wait, then serve normally
``("trickle", nbytes, seconds)`` GET: real headers, then the body ``nbytes`` at a time, ``seconds`` apart
``("headers", {...})``          serve normally with headers overridden (a ``None`` value removes one)
=============================== ==================================================================
"""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import struct
import threading
import time
from collections import Counter
from email.utils import formatdate
from pathlib import Path
from urllib.parse import unquote, urlsplit

_CONTENT_TYPES = {
    ".parquet": "binary/octet-stream",
    ".csv": "text/csv",
    ".txt": "text/plain; charset=utf-8",
    ".json": "application/json",
    ".html": "text/html; charset=utf-8",
}
_FAULT_KINDS = {"status", "status_then_ok", "truncate", "html", "reset", "delay", "headers", "trickle"}
_HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Service Unavailable</title></head>"
    b"<body><h1>Service Unavailable</h1><p>The requested file is temporarily unavailable.</p></body></html>\n"
)
_CHUNK = 1 << 20


def _normalise_path(path: str) -> str:
    path = unquote(urlsplit(path).path)
    return "/" + path.lstrip("/")


def _validate_fault(fault: tuple) -> tuple:
    if not isinstance(fault, tuple) or not fault or fault[0] not in _FAULT_KINDS:
        raise ValueError(
            f"fault {fault!r}: expected a tuple whose first item is one of {sorted(_FAULT_KINDS)}"
        )
    kind, args = fault[0], fault[1:]
    shapes = {
        "status": (int,),
        "status_then_ok": (int, int),
        "truncate": (int,),
        "html": (),
        "reset": (),
        "delay": ((int, float),),
        "headers": (dict,),
        "trickle": (int, (int, float)),
    }[kind]
    if len(args) != len(shapes) or not all(isinstance(a, t) for a, t in zip(args, shapes, strict=True)):
        raise ValueError(f"fault {fault!r}: {kind!r} takes arguments of types {shapes}")
    if kind in ("status", "status_then_ok") and not 100 <= args[0] <= 599:
        raise ValueError(f"fault {fault!r}: status code must be 100-599")
    return fault


class _Fault:
    def __init__(self, spec: tuple):
        self.spec = spec
        self.hits = 0


class MirrorServer:
    """Serve ``root`` over HTTP on ``host:port`` (port 0 = a free port) from a daemon thread."""

    def __init__(self, root: Path | str, host: str = "127.0.0.1", port: int = 0):
        self.root = Path(root).resolve()
        self.host = host
        self.port = port
        self._httpd: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._faults: dict[str, _Fault] = {}
        self._counts: Counter[tuple[str, str]] = Counter()
        self._etags: dict[tuple[str, int, int], str] = {}

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> MirrorServer:
        if self._httpd is not None:
            return self
        if not self.root.is_dir():
            raise FileNotFoundError(f"mirror root {self.root} is not a directory: write a mirror there first")
        handler = type("_BoundHandler", (_Handler,), {"mirror": self})
        httpd = _QuietThreadingHTTPServer((self.host, self.port), handler)
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, name=f"mirror-{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, thread = self._httpd, self._thread
        self._httpd = self._thread = None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> MirrorServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (use as ``TLC_BASE_URL``)."""
        if self._httpd is None:
            raise RuntimeError("MirrorServer is not running: call start() or use it as a context manager")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # -- faults and counters -------------------------------------------------------------------------------
    def set_fault(self, url_path: str, fault: tuple) -> None:
        """Inject ``fault`` (see module docstring) for requests to ``url_path``; replaces any earlier one."""
        with self._lock:
            self._faults[_normalise_path(url_path)] = _Fault(_validate_fault(fault))

    def clear_faults(self, url_path: str | None = None) -> None:
        """Remove the fault on ``url_path``, or all faults."""
        with self._lock:
            if url_path is None:
                self._faults.clear()
            else:
                self._faults.pop(_normalise_path(url_path), None)

    def request_count(self, path: str, method: str | None = None) -> int:
        """Requests received for ``path`` (any method, or only ``GET``/``HEAD``), faulted ones included."""
        key = _normalise_path(path)
        with self._lock:
            if method is not None:
                return self._counts[(key, method.upper())]
            return sum(c for (p, _), c in self._counts.items() if p == key)

    def reset_counts(self) -> None:
        with self._lock:
            self._counts.clear()

    # -- used by the handler -------------------------------------------------------------------------------
    def _record(self, path: str, method: str) -> tuple | None:
        """Count the request; return the fault to apply to it, if any."""
        with self._lock:
            self._counts[(path, method)] += 1
            fault = self._faults.get(path)
            if fault is None:
                return None
            fault.hits += 1
            if fault.spec[0] == "status_then_ok":
                return fault.spec if fault.hits <= fault.spec[2] else None
            return fault.spec

    def _resolve(self, url_path: str) -> Path | None:
        """The file for ``url_path`` inside ``root``, or ``None`` (missing, a directory, or outside root)."""
        if "\x00" in url_path or "\\" in url_path:
            return None
        relative = url_path.lstrip("/")
        if not relative:
            return None
        candidate = (self.root / relative).resolve()
        if not candidate.is_relative_to(self.root) or candidate == self.root:
            return None
        return candidate if candidate.is_file() else None

    def _etag(self, path: Path, fh, st: os.stat_result) -> str:
        key = (str(path), st.st_mtime_ns, st.st_size)
        with self._lock:
            cached = self._etags.get(key)
        if cached is not None:
            return cached
        digest = hashlib.md5(usedforsecurity=False)
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
        fh.seek(0)
        etag = f'"{digest.hexdigest()}"'
        with self._lock:
            if len(self._etags) >= 4096:
                self._etags.clear()
            self._etags[key] = etag
        return etag


class _QuietThreadingHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address) -> None:  # no tracebacks on client disconnects
        pass


class _Handler(http.server.BaseHTTPRequestHandler):
    mirror: MirrorServer
    protocol_version = "HTTP/1.1"
    server_version = "taxi-platform-mirror"
    sys_version = ""

    def log_message(self, format, *args) -> None:  # quiet: tests run many requests
        pass

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    # -- responses ----------------------------------------------------------------------------------------
    def _simple(self, code: int, body: bytes, content_type: str, send_body: bool) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _reset(self) -> None:
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.connection.close()

    def _serve(self, body: bool) -> None:
        url_path = _normalise_path(self.path)
        fault = self.mirror._record(url_path, self.command)
        if fault is not None and self._answered_by_fault(fault, url_path, body):
            return
        header_overrides, truncate_to, trickle = _fault_options(fault)

        path = self.mirror._resolve(url_path)
        if path is None:
            self._simple(404, f"404 Not Found: {url_path}\n".encode(), "text/plain; charset=utf-8", body)
            return
        try:
            fh = open(path, "rb")
        except OSError:
            self._simple(404, f"404 Not Found: {url_path}\n".encode(), "text/plain; charset=utf-8", body)
            return
        with fh:
            st = os.fstat(fh.fileno())
            etag = self.mirror._etag(path, fh, st)
            headers = _file_headers(path, st, etag, header_overrides)
            if self._not_modified(etag, headers):
                return
            self.send_response(200)
            for name, value in headers.items():
                self.send_header(name, value)
            if truncate_to is not None:
                self.send_header("Connection", "close")
            self.end_headers()
            if not body:
                return
            self._send_body(fh, st.st_size, truncate_to, trickle)

    def _answered_by_fault(self, fault: tuple, url_path: str, body: bool) -> bool:
        """Apply the faults that replace the response (status, html, reset): ``True`` when one has answered.
        A ``delay`` waits here, then the request is served."""
        kind = fault[0]
        if kind in ("status", "status_then_ok"):
            code = fault[1]
            text = f"{code} injected fault for {url_path}\n".encode()
            self._simple(code, text, "text/plain; charset=utf-8", body and code not in (204, 304))
            return True
        if kind == "html":
            self._simple(200, _HTML_PAGE, "text/html; charset=utf-8", body)
            return True
        if kind == "reset":
            self._reset()
            return True
        if kind == "delay":
            time.sleep(float(fault[1]))
        return False

    def _not_modified(self, etag: str, headers: dict[str, str]) -> bool:
        """Answer 304 when the request's ``If-None-Match`` matches ``etag``."""
        if_none_match = self.headers.get("If-None-Match")
        if if_none_match and etag in [t.strip() for t in if_none_match.split(",")] + ["*"]:
            self.send_response(304)
            for name in ("ETag", "Last-Modified"):
                if name in headers:
                    self.send_header(name, headers[name])
            self.end_headers()
            return True
        return False

    def _send_body(self, fh, size: int, truncate_to: int | None, trickle: tuple[int, float] | None) -> None:
        """The file's body: whole, cut at ``truncate_to`` bytes (then the connection closes), or trickled."""
        remaining = size if truncate_to is None else min(truncate_to, size)
        step = _CHUNK if trickle is None else trickle[0]
        while remaining > 0:
            chunk = fh.read(min(step, remaining))
            if not chunk:
                break
            try:
                self.wfile.write(chunk)
                if trickle is not None:
                    self.wfile.flush()
                    time.sleep(trickle[1])
            except OSError:  # the client gave up (a download deadline): stop sending
                self.close_connection = True
                return
            remaining -= len(chunk)
        if truncate_to is not None:
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_WR)
            except OSError:
                pass


def _fault_options(fault: tuple | None) -> tuple[dict, int | None, tuple[int, float] | None]:
    """What a fault that lets the file be served changes: header overrides, a truncation, a trickle."""
    header_overrides: dict = {}
    truncate_to: int | None = None
    trickle: tuple[int, float] | None = None
    kind = fault[0] if fault is not None else None
    if kind == "headers":
        header_overrides = dict(fault[1])
    elif kind == "truncate":
        truncate_to = max(0, int(fault[1]))
    elif kind == "trickle":
        trickle = (max(1, int(fault[1])), float(fault[2]))
    return header_overrides, truncate_to, trickle


def _file_headers(path: Path, st: os.stat_result, etag: str, header_overrides: dict) -> dict[str, str]:
    """The response headers for a file, with a ``headers`` fault's overrides (``None`` removes one)."""
    headers = {
        "Content-Type": _CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream"),
        "Content-Length": str(st.st_size),
        "ETag": etag,
        "Last-Modified": formatdate(st.st_mtime, usegmt=True),
    }
    for name, value in header_overrides.items():
        match = next((k for k in headers if k.lower() == name.lower()), name)
        headers.pop(match, None)
        if value is not None:
            headers[name] = str(value)
    return headers
