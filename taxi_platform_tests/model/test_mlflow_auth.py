"""MLflow's own authentication, as the cluster runs it: a real ``mlflow server --app-name basic-auth`` on loopback.

The users are the deploy's (docs/deploy.md, "MLflow users"): the admin from the auth config file, ``dagster``
(writes: trains and registers the champion) and ``deployer`` (read-only: builds the Bento), both created
through the auth REST API. Every client reads ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` itself,
so the platform's own code works unchanged once they are set, and fails without them.

The server needs MLflow's ``auth`` extra (Flask-WTF), as deploy/Dockerfile.mlflow installs it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from taxi_platform.core.settings import MODEL_NAME
from taxi_platform.model.champion_lookup import current_champion
from taxi_platform.serving import bento_build, bento_store
from taxi_platform_tests.support.mlflow_server import BasicAuth, MlflowServer
from taxi_platform_tests.support.sample_champion import Champion, train_in_subprocess

pytestmark = pytest.mark.slow

AUTH = BasicAuth(admin_username="admin", admin_password="admin-pw-for-tests-0123", default_permission="READ")
DAGSTER = ("dagster", "dagster-pw-for-tests-4567")
DEPLOYER = ("deployer", "deployer-pw-for-tests-89ab")
HTTP_TIMEOUT = 60  # a loaded 2-core machine: password hashing and sqlite writes share it
BASE_IMAGE = "python:3.11-slim-bookworm@sha256:" + "0123456789abcdef" * 4


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> MlflowServer:
    with MlflowServer(tmp_path_factory.mktemp("mlflow-auth"), auth=AUTH) as srv:
        admin = (AUTH.admin_username, AUTH.admin_password)
        for username, password in (DAGSTER, DEPLOYER):
            r = requests.post(f"{srv.url}/api/2.0/mlflow/users/create",
                              json={"username": username, "password": password}, auth=admin, timeout=HTTP_TIMEOUT)  # fmt: skip
            assert r.status_code == 200, r.text
        yield srv


def signed_in(monkeypatch: pytest.MonkeyPatch, user: tuple[str, str] | None) -> None:
    """Set (or clear) the variables the MLflow client reads, for this process and its subprocesses."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)
    if user is None:
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user[0])
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", user[1])


@pytest.fixture(scope="module")
def champion(server, tmp_path_factory) -> Champion:
    """The champion trained and registered by the ``dagster`` user, through the platform's training code."""
    with pytest.MonkeyPatch.context() as mp:
        signed_in(mp, DAGSTER)
        return train_in_subprocess(tmp_path_factory.mktemp("champion-data"), server.url)


def test_rest_calls_without_or_with_wrong_credentials_get_401(server):
    url = f"{server.url}/api/2.0/mlflow/registered-models/search"
    assert requests.get(url, timeout=HTTP_TIMEOUT).status_code == 401
    assert requests.get(url, auth=(AUTH.admin_username, "wrong"), timeout=HTTP_TIMEOUT).status_code == 401
    assert requests.get(url, auth=(DAGSTER[0], DEPLOYER[1]), timeout=HTTP_TIMEOUT).status_code == 401
    assert requests.get(url, auth=("nobody", "x"), timeout=HTTP_TIMEOUT).status_code == 401
    assert (
        requests.get(url, auth=(AUTH.admin_username, AUTH.admin_password), timeout=HTTP_TIMEOUT).status_code
        == 200
    )
    # The probes' path stays open: the kubelet has no MLflow user.
    assert requests.get(f"{server.url}/health", timeout=HTTP_TIMEOUT).status_code == 200


def test_the_platform_code_needs_the_credentials(server, champion, monkeypatch):
    from mlflow import MlflowClient

    signed_in(monkeypatch, None)
    with pytest.raises(bento_store.ServingBuildError):
        bento_build.champion_info(server.url)

    signed_in(monkeypatch, DEPLOYER)
    info = bento_build.champion_info(server.url)
    assert (info.name, info.version, info.run_id) == (MODEL_NAME, champion.version, champion.run_id)
    client = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
    assert [m.name for m in client.search_registered_models()] == [MODEL_NAME]
    assert str(current_champion(client, MODEL_NAME).version) == champion.version


def test_the_read_only_user_cannot_change_the_registry(server, champion, monkeypatch):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    signed_in(monkeypatch, DEPLOYER)
    client = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
    with pytest.raises(MlflowException) as moved:
        client.set_registered_model_alias(MODEL_NAME, "champion", champion.version)
    assert moved.value.get_http_status_code() == 403
    with pytest.raises(MlflowException) as tagged:
        client.set_model_version_tag(MODEL_NAME, champion.version, "tampered", "yes")
    assert tagged.value.get_http_status_code() == 403
    r = requests.delete(f"{server.url}/api/2.0/mlflow/registered-models/delete", json={"name": MODEL_NAME},
                        auth=DEPLOYER, timeout=HTTP_TIMEOUT)  # fmt: skip
    assert r.status_code == 403
    r = requests.post(f"{server.url}/api/2.0/mlflow/users/create", json={"username": "x", "password": "y" * 12},
                      auth=DEPLOYER, timeout=HTTP_TIMEOUT)  # fmt: skip
    assert r.status_code == 403, "only the admin manages users"
    # The writer still can: the champion is the dagster user's.
    signed_in(monkeypatch, DAGSTER)
    MlflowClient(tracking_uri=server.url, registry_uri=server.url).set_model_version_tag(
        MODEL_NAME, champion.version, "checked_by", "test"
    )


def test_deploy_job_builds_the_bento_as_the_read_only_user_on_a_pinned_base_image(
    server, champion, tmp_path, monkeypatch
):
    """What deploy.yml runs: ``taxi-platform build-bento --json --base-image REF`` as ``deployer``."""
    signed_in(monkeypatch, DEPLOYER)
    monkeypatch.setenv("TAXI_DATA_DIR", str(tmp_path / "data"))
    cmd = [sys.executable, "-m", "taxi_platform.cli", "build-bento", "--json", "--tracking-uri", server.url,
           "--bento-home", str(tmp_path / "bentoml"), "--base-image", BASE_IMAGE]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout)
    assert info["model_version"] == champion.version and info["base_image"] == BASE_IMAGE
    dockerfile = Path(info["dockerfile"]).read_text()
    assert re.findall(r"^FROM (\S+)", dockerfile, re.M) == [BASE_IMAGE], dockerfile[:2000]
    # Without credentials the same command fails and says why, building nothing.
    signed_in(monkeypatch, None)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "taxi_fare_model@champion" in proc.stderr, proc.stderr[-2000:]
