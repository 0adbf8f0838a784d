"""A child process that runs the Evidently half of the drift report while its parent reads MLflow and predicts.

Importing Evidently costs about as much CPU as everything the report does before it (the MLflow registry, the
champion's load and predictions), and neither needs the other until the two frames exist. :class:`EvidentlyWorker`
starts the child as soon as it is created; the child imports Evidently on the second core, then serves requests
over a socket: ``run`` (:func:`taxi_platform.monitoring.drift_evidently.run_drift_report` on the frames it is sent;
the summary comes back, the snapshot stays in the child) and ``html`` (the snapshot's HTML into a path the parent
chose). One worker serves any number of months; it keeps only the latest snapshot (a report's plots are large),
so save a month's HTML before reporting the next.

How the child starts: a fork of the caller while that is safe, else ``python -m taxi_platform.monitoring.drift_worker``
(a fresh interpreter). A fork inherits pandas, NumPy and pyarrow already imported (about a second less before
the child is ready), and is safe while no OpenMP runtime is loaded: the child only imports and runs Evidently,
never touches the parent's files or connections, and leaves with ``os._exit``. A process that has loaded
scikit-learn (whose OpenMP pool a forked child must not use) gets the fresh interpreter; that is the case when
an earlier step of the same process trained or predicted, as in a test or the demo, never in a run worker that
starts with ``drift_report``.

Errors travel back as the exception raised in the child: a
:class:`~taxi_platform.monitoring.drift_samples.DriftInputError` keeps its type and message; anything else becomes
:class:`DriftWorkerError` with the child's traceback. A child that dies mid-request is reported with its exit code.
The child exits when the parent closes the socket (or dies), so it never outlives the step.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from taxi_platform.monitoring.drift_samples import DriftInputError

CLOSE_TIMEOUT_S = 10.0


class DriftWorkerError(RuntimeError):
    """The Evidently worker process failed (an error in the report, or the process died)."""


class RemoteSnapshot:
    """An Evidently snapshot held by the worker; :meth:`save_html` has the worker render it into ``path``."""

    def __init__(self, worker: EvidentlyWorker, token: int, month: str) -> None:
        self._worker, self.token, self.month = worker, token, month

    def save_html(self, path: str) -> None:
        self._worker.request("html", self.month, token=self.token, path=str(path))


class EvidentlyWorker:
    """The child process; created once per step, it starts importing Evidently at once."""

    def __init__(self, start: str = "auto") -> None:
        """``start``: "fork", "spawn" (a fresh interpreter) or "auto" (fork when :func:`fork_is_safe`)."""
        if start not in ("auto", "fork", "spawn"):
            raise ValueError(f"start must be auto, fork or spawn, not {start!r}")
        self.start = "fork" if start == "fork" or (start == "auto" and fork_is_safe()) else "spawn"
        parent, child = socket.socketpair()
        try:
            self._proc = _fork(parent, child) if self.start == "fork" else _spawn(child)
        finally:
            child.close()
        self._conn = Connection(parent.detach())
        self._closed = False

    @property
    def pid(self) -> int:
        return self._proc.pid

    def returncode(self) -> int | None:
        return self._proc.poll()

    def request(self, op: str, what: str, /, **kwargs: Any) -> Any:
        """Send one request and wait for its answer; re-raise what the child raised."""
        if self._closed:
            raise DriftWorkerError(f"the Evidently worker is closed (asked to {op} for {what})")
        try:
            self._conn.send((op, kwargs))
            status, payload = self._conn.recv()
        except (EOFError, OSError) as exc:
            code = (
                self._proc.wait(timeout=CLOSE_TIMEOUT_S) if self._proc.poll() is None else self._proc.poll()
            )
            self._closed = True
            raise DriftWorkerError(
                f"the Evidently worker process (pid {self._proc.pid}) exited with code {code} while asked to "
                f"{op} for {what}; its error output is in the step's logs"
            ) from exc
        if status == "ok":
            return payload
        exc, text = payload
        if isinstance(exc, DriftInputError):
            raise exc
        raise DriftWorkerError(f"drift report for {what} failed in the Evidently worker: {text}") from exc

    def run_report(self, month: str, **kwargs: Any) -> tuple[Any, RemoteSnapshot]:
        """``run_drift_report(**kwargs)`` in the child: ``(summary, snapshot handle)``."""
        summary, token = self.request("run", month, month=month, **kwargs)
        return summary, RemoteSnapshot(self, token, month)

    def close(self) -> None:
        """Ask the child to exit and wait for it (killed if it does not end in time)."""
        if not self._closed:
            self._closed = True
            try:
                self._conn.send(("close", {}))
            except OSError:
                pass
        self._conn.close()
        try:
            self._proc.wait(timeout=CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def __enter__(self) -> EvidentlyWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def fork_is_safe() -> bool:
    """Whether this process may fork the worker: a POSIX fork, and no OpenMP runtime loaded (see the module doc)."""
    return hasattr(os, "fork") and "sklearn" not in sys.modules


def _spawn(child: socket.socket) -> subprocess.Popen:
    root = str(Path(__file__).resolve().parents[2])  # the directory holding the taxi_platform package
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return subprocess.Popen(
        [sys.executable, "-m", "taxi_platform.monitoring.drift_worker", str(child.fileno())],
        pass_fds=(child.fileno(),),
        stdin=subprocess.DEVNULL,
        env=env,
        close_fds=True,
    )


class _ForkedChild:
    """The forked worker, with the part of :class:`subprocess.Popen`'s interface the worker uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"drift worker (pid {self.pid})", timeout)
            time.sleep(0.01)
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)


def _fork(parent: socket.socket, child: socket.socket) -> _ForkedChild:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: serve, then leave without running the parent's exit handlers or finalizers
        code = 1
        try:
            parent.close()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_DFL)  # not the step's handlers
            code = serve(Connection(child.detach()))
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return _ForkedChild(pid)


# -- the child -------------------------------------------------------------------------------------------
def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _failure(exc: BaseException) -> tuple[str, tuple[BaseException, str]]:
    text = f"{type(exc).__name__}: {exc}\n\nworker traceback:\n{''.join(traceback.format_exception(exc))}"
    return "error", (_picklable(exc), text)


def serve(conn: Connection) -> int:
    """Import Evidently, then answer requests until the parent closes the connection."""
    from taxi_platform.monitoring import drift_evidently

    import_error: BaseException | None = None
    try:
        drift_evidently.import_report_modules()
    except Exception as exc:  # reported on the first request: the parent is not listening yet
        import_error = exc
    snapshot: Any = None
    token = 0
    while True:
        try:
            op, kwargs = conn.recv()
        except (EOFError, OSError):
            return 0
        if op == "close":
            return 0
        try:
            if import_error is not None:
                raise import_error
            if op == "run":
                snapshot = None  # the previous month's plots go before the next report is built
                summary, snapshot = drift_evidently.run_drift_report(**kwargs)
                token += 1
                reply: Any = ("ok", (summary, token))
            elif op == "html":
                if kwargs["token"] != token or snapshot is None:
                    raise ValueError(
                        "this snapshot was replaced by a later report: save a month's HTML before reporting the next"
                    )
                snapshot.save_html(kwargs["path"])
                reply = ("ok", None)
            elif op == "crash":  # tests: a child that dies mid-request
                os._exit(int(kwargs.get("code", 3)))
            else:
                raise ValueError(f"unknown request {op!r}")
        except Exception as exc:
            reply = _failure(exc)
        conn.send(reply)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isdigit():
        print("usage: python -m taxi_platform.monitoring.drift_worker <socket fd>", file=sys.stderr)
        return 2
    conn = Connection(int(args[0]))
    try:
        return serve(conn)
    finally:
        conn.close()


if __name__ == "__main__":
    code = main()
    # Nothing is left to save: skip the interpreter's teardown of pandas, scikit-learn and Evidently (over a second
    # that the step would spend waiting for this process to end).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
