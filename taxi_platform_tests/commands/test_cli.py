"""The ``taxi-platform`` command as a user meets it: help written for users, and ``ui`` opening the UIs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from taxi_platform.devtools.loopback import free_port, wait_http_ok

CLI = [sys.executable, "-m", "taxi_platform.cli"]


def test_top_level_help_is_for_users_and_lists_every_command():
    out = subprocess.run([*CLI, "--help"], capture_output=True, text=True, check=True, timeout=60).stdout
    assert "fare-quote model" in out and "taxi-platform demo" in out
    for command in ("demo", "sample-mirror", "serve", "ui"):
        assert f"\n    {command}" in out, out
    assert "dispatcher" not in out and "``" not in out


@pytest.mark.parametrize("command", ["demo", "sample-mirror", "serve", "ui"])
def test_each_command_has_a_user_facing_help(command):
    out = subprocess.run(
        [*CLI, command, "--help"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    description = out.split("\n\n")[1]
    assert description[:1].isupper(), out  # a sentence, not "``taxi-platform x``: ..."
    assert "``" not in out and "**" not in out


@pytest.mark.e2e
def test_ui_starts_dagster_mlflow_and_the_report_server_and_stops_them_on_ctrl_c(tmp_path):
    data = tmp_path / "data"
    report = data / "lake" / "drift_report" / "month=2024-03" / "report.html"
    report.parent.mkdir(parents=True)
    report.write_text("<html><body>drift 2024-03</body></html>")
    ports = {"dagster": free_port(), "mlflow": free_port(), "reports": free_port()}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DAGSTER_", "TAXI_"))}
    env["TAXI_DATA_DIR"] = str(data)
    proc = subprocess.Popen(
        [*CLI, "ui", "--dagster-port", str(ports["dagster"]), "--mlflow-port", str(ports["mlflow"]),
         "--reports-port", str(ports["reports"])],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 240
        while not any(line.startswith("Ctrl-C stops") for line in lines):
            assert time.monotonic() < deadline, "".join(lines)
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "".join(lines)
            lines.append(line)
        text = "".join(lines)
        assert f"Dagster  http://127.0.0.1:{ports['dagster']}" in text
        assert f"MLflow   http://127.0.0.1:{ports['mlflow']}" in text
        assert f"Reports  http://127.0.0.1:{ports['reports']}/drift_report/" in text
        wait_http_ok(f"http://127.0.0.1:{ports['dagster']}/server_info", proc, 30)
        assert requests.get(f"http://127.0.0.1:{ports['mlflow']}/health", timeout=10).status_code == 200
        page = requests.get(
            f"http://127.0.0.1:{ports['reports']}/drift_report/month=2024-03/report.html", timeout=10
        )
        assert page.status_code == 200 and "drift 2024-03" in page.text
        assert (
            data / "dagster_home" / "dagster.yaml"
        ).is_file()  # the project's instance, not a throw-away one
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=90) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    for port in ports.values():
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/", timeout=5)
