"""Starting local servers on loopback: a free port, and waiting until a started server answers."""

from __future__ import annotations

import socket
import subprocess
import time


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class NotReady(RuntimeError):
    """The server process exited (``returncode`` set) or did not answer in time (``returncode`` None)."""

    def __init__(self, url: str, returncode: int | None, timeout: float, last_error: str | None) -> None:
        self.url = url
        self.returncode = returncode
        self.timeout = timeout
        self.last_error = last_error
        reason = (
            f"exited with code {returncode}" if returncode is not None else f"not ready after {timeout:.0f}s"
        )
        super().__init__(f"{url}: {reason}" + (f" (last error: {last_error})" if last_error else ""))


def wait_http_ok(
    url: str,
    proc: subprocess.Popen | None,
    timeout: float,
    interval: float = 0.5,
    request_timeout: float = 2.0,
    any_2xx: bool = False,
) -> None:
    """Poll ``GET url`` until it answers 200 (any 2xx with ``any_2xx``); raise :class:`NotReady` if ``proc``
    exits first or time runs out."""
    import requests

    deadline = time.monotonic() + timeout
    last_error: str | None = None
    while True:
        if proc is not None and proc.poll() is not None:
            raise NotReady(url, proc.returncode, timeout, last_error)
        try:
            response = requests.get(url, timeout=request_timeout)
            if response.ok if any_2xx else response.status_code == 200:
                return
        except requests.RequestException as exc:
            last_error = str(exc)
        if time.monotonic() >= deadline:
            raise NotReady(url, None, timeout, last_error)
        time.sleep(interval)
