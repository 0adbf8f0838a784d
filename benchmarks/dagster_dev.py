"""``dagster dev`` as ``bench_backfill.py`` drives it: started in a session of its own on a loopback port, its
GraphQL endpoint (the one the UI talks to) waited for until the code location is loaded, running sensors stopped,
and the whole process group stopped at the end."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from contextlib import suppress
from pathlib import Path

from bench_instance import DAGSTER

LOCATIONS = """
{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
    locationOrLoadError { __typename ... on PythonError { message } } } } } }"""

SENSORS = """
{ repositoriesOrError { ... on RepositoryConnection { nodes { name
    sensors { name sensorState { id status } } } } } }"""

STOP_SENSOR = """
mutation Stop($id: String!) { stopSensor(id: $id) { __typename
  ... on StopSensorMutationResult { instigationState { status } } ... on Error { message } } }"""


class BackfillError(RuntimeError):
    pass


class Graphql:
    def __init__(self, url: str):
        import requests

        self.url = url
        self.session = requests.Session()

    def __call__(self, query: str, variables: dict | None = None, timeout: float = 60) -> dict:
        response = self.session.post(
            self.url, json={"query": query, "variables": variables or {}}, timeout=timeout
        )
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise BackfillError(f"GraphQL errors: {body['errors']}")
        return body["data"]


def start_dagster_dev(env: dict, cwd: Path, port: int, log: Path) -> subprocess.Popen:
    cmd = [DAGSTER, "dev", "-m", "taxi_platform.definitions", "-h", "127.0.0.1", "-p", str(port)]
    with open(log, "w", encoding="utf-8") as out:
        return subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_process_group(proc: subprocess.Popen, grace: float = 30) -> None:
    """SIGTERM the session ``proc`` leads (``dagster dev``, its webserver, daemon, code server and run workers:
    all started by this script), then SIGKILL what is left after ``grace`` seconds."""
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def wait_loaded(gql: Graphql, proc: subprocess.Popen, timeout: float, log: Path) -> float:
    """Wait until the webserver answers and the code location is loaded; return the seconds it took."""
    import requests

    start = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise BackfillError(f"dagster dev exited with {proc.returncode}; see {log}")
        try:
            entries = gql(LOCATIONS, timeout=10)["workspaceOrError"].get("locationEntries") or []
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                errors = [e for e in entries if e["locationOrLoadError"]["__typename"] == "PythonError"]
                if errors:
                    raise BackfillError(f"code location failed to load: {errors[0]['locationOrLoadError']}")
                return time.monotonic() - start
        except (requests.RequestException, KeyError):
            pass
        if time.monotonic() - start > timeout:
            raise BackfillError(f"dagster dev not ready after {timeout:.0f}s; see {log}")
        time.sleep(1)


def stop_running_sensors(gql: Graphql) -> list[str]:
    stopped = []
    for repo in gql(SENSORS)["repositoriesOrError"].get("nodes", []):
        for sensor in repo["sensors"]:
            if sensor["sensorState"]["status"] == "RUNNING":
                result = gql(STOP_SENSOR, {"id": sensor["sensorState"]["id"]})["stopSensor"]
                if result["__typename"] != "StopSensorMutationResult":
                    raise BackfillError(f"could not stop sensor {sensor['name']}: {result}")
                stopped.append(sensor["name"])
    return stopped
