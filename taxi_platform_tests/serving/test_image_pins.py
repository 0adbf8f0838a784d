"""Base images by digest: the reference check, and every workflow image and the deploy's Bento build using it.

No digest is written in the repository (none can be looked up here, and a digest is the operator's choice):
the workflows take the references from repository variables, check them as ``name:tag@sha256:<64 hex>``
before use, and ``taxi-platform build-bento --base-image`` checks the same form.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from taxi_platform.serving import bento_build, bento_requirements, bento_store
from taxi_platform.serving.image_ref import PINNED_IMAGE_ERE, ImageRefError, require_pinned_image

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / ".github" / "workflows"
DIGEST = "sha256:" + "0123456789abcdef" * 4
GOOD = [
    f"python:3.11-slim-bookworm@{DIGEST}",
    f"python:3.11-bookworm@{DIGEST}",
    f"docker.io/library/python:3.11-slim@{DIGEST}",
    f"us-east4-docker.pkg.dev/proj-1/taxi-platform/base:v1.2_3@{DIGEST}",
    f"localhost:5000/python:3.11@{DIGEST}",
]
BAD = [
    "",
    "python:3.11-bookworm",  # a tag alone can be moved
    "python:3.11-slim-bookworm@sha256:abc",  # short digest
    f"python@{DIGEST}",  # no tag: nobody can tell what it is
    f"python:3.11@{DIGEST.upper()}",
    f"Python:3.11@{DIGEST}",
    f"python:3.11 @{DIGEST}",
    f"python:3.11@sha512:{'0' * 128}",
    f"python:3.11@{DIGEST}; rm -rf /",
]


def load(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def bash_matches(ere: str, value: str) -> bool:
    """The workflows' own test: ``[[ $value =~ $re ]]`` in bash."""
    script = "re=$1; [[ $2 =~ $re ]]"
    return subprocess.run(["bash", "-c", script, "_", ere, value], timeout=10).returncode == 0


@pytest.mark.parametrize("ref", GOOD)
def test_a_tag_and_digest_reference_is_accepted(ref: str):
    assert require_pinned_image(f"  {ref}\n") == ref
    assert bash_matches(PINNED_IMAGE_ERE, ref)


@pytest.mark.parametrize("ref", BAD)
def test_anything_else_is_rejected_with_the_expected_form(ref: str):
    with pytest.raises(ImageRefError) as err:
        require_pinned_image(ref, "BENTO_BASE_IMAGE")
    message = str(err.value)
    assert "BENTO_BASE_IMAGE" in message and "name:tag@sha256:<64 hex>" in message
    assert not bash_matches(PINNED_IMAGE_ERE, ref)


def test_a_tag_only_reference_says_a_digest_is_missing():
    with pytest.raises(ImageRefError, match=r"has no @sha256: digest"):
        require_pinned_image("python:3.11-bookworm", "PYTHON_IMAGE")
    with pytest.raises(ImageRefError, match=r"is empty"):
        require_pinned_image("  ", "PYTHON_IMAGE")


def test_the_bentofile_config_gets_the_base_image_and_drops_what_bentoml_would_ignore():
    config = bento_requirements.bentofile_config()
    assert {"distro", "python_version"} <= config["docker"].keys()
    pinned = bento_build.with_base_image(config, GOOD[0])
    assert pinned["docker"]["base_image"] == GOOD[0]
    assert not {"distro", "python_version"} & pinned["docker"].keys()
    assert config["docker"].get("base_image") is None, "the packaged config is not modified"
    with pytest.raises(bento_store.ServingBuildError, match="no @sha256: digest"):
        bento_build.with_base_image(config, "python:3.11-slim")


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--base-image", "python:3.11-slim"], {}, "--base-image 'python:3.11-slim' has no @sha256: digest"),
        (["--base-image", ""], {}, "--base-image '' is empty"),
        ([], {"TAXI_BENTO_BASE_IMAGE": "python:3.11"}, "TAXI_BENTO_BASE_IMAGE 'python:3.11' has no @sha256"),
    ],
)
def test_build_bento_refuses_an_unpinned_base_image_before_touching_mlflow(tmp_path, args, env, needle):
    # An unreachable tracking URI: the refusal must come first, with exit status 2.
    cmd = [
        sys.executable,
        "-m",
        "taxi_platform.cli",
        "build-bento",
        "--tracking-uri",
        "http://127.0.0.1:9",
        *args,
    ]
    full_env = {k: v for k, v in __import__("os").environ.items() if k != "TAXI_BENTO_BASE_IMAGE"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env={**full_env, "TAXI_DATA_DIR": str(tmp_path), **env})  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and "name:tag@sha256:<64 hex>" in proc.stderr
    assert proc.stdout == ""


# -- the workflows ---------------------------------------------------------------------------------------------


def step_regex(script: str) -> str:
    (ere,) = re.findall(r"^\s*re='([^']+)'$", script, re.M)
    return ere


def test_every_workflow_container_and_image_comes_from_a_checked_variable():
    for path in sorted(WORKFLOWS.glob("*.yml")):
        doc = yaml.safe_load(path.read_text())
        for job_name, job in doc["jobs"].items():
            images = []
            container = job.get("container")
            if container is not None:
                images.append(container if isinstance(container, str) else container["image"])
            for service in (job.get("services") or {}).values():
                images.append(service if isinstance(service, str) else service["image"])
            for image in images:
                assert image.startswith("${{") and image.endswith("}}"), (
                    f"{path.name}/{job_name}: literal image {image!r}; take it from a checked variable"
                )
            for step in job.get("steps", []):
                assert not str(step.get("uses", "")).startswith("docker://"), f"{path.name}: docker:// action"
            # Scripts start no container from a literal reference either.
            for step in job.get("steps", []):
                literal = re.search(r"docker\s+(run|pull|create)\s+(-\S+\s+)*[^$\s-]", step.get("run", ""))
                assert not literal, f"{path.name}/{job_name}: {literal.group(0)}"


def test_ci_container_is_vars_python_image_checked_in_a_job_before():
    doc = load("ci.yml")
    test = doc["jobs"]["test"]
    assert test["container"] == "${{ needs.base-image.outputs.image }}"
    assert test["needs"] == "base-image"
    check_job = doc["jobs"]["base-image"]
    assert "container" not in check_job, "the check must run before any container starts"
    assert check_job["outputs"]["image"] == "${{ steps.check.outputs.image }}"
    (step,) = [s for s in check_job["steps"] if s.get("id") == "check"]
    assert step["env"]["IMAGE"] == "${{ vars.PYTHON_IMAGE }}"
    assert step_regex(step["run"]) == PINNED_IMAGE_ERE
    assert "exit 1" in step["run"] and "::error::" in step["run"]
    # Run the step as GitHub would: a tag-only value fails with the message, a pinned one is passed on.
    for value, ok in (("python:3.11-bookworm", False), ("", False), (f"python:3.11-bookworm@{DIGEST}", True)):
        out = Path(subprocess.run(["mktemp"], capture_output=True, text=True).stdout.strip())
        proc = subprocess.run(["bash", "-e", "-c", step["run"]], capture_output=True, text=True, timeout=10,
                              env={"IMAGE": value, "GITHUB_OUTPUT": str(out), "PATH": "/usr/bin:/bin"})  # fmt: skip
        assert (proc.returncode == 0) is ok, proc.stdout + proc.stderr
        if ok:
            assert out.read_text() == f"image={value}\n"
        else:
            assert "PYTHON_IMAGE" in proc.stdout and "sha256" in proc.stdout
        out.unlink()


def test_deploy_checks_and_passes_vars_bento_base_image_to_build_bento():
    doc = load("deploy.yml")
    assert doc["env"]["BENTO_BASE_IMAGE"] == "${{ vars.BENTO_BASE_IMAGE }}"
    steps = doc["jobs"]["deploy"]["steps"]
    (check,) = [s for s in steps if s.get("name") == "Check settings"]
    assert step_regex(check["run"]) == PINNED_IMAGE_ERE
    (build,) = [s for s in steps if "taxi-platform build-bento" in s.get("run", "")]
    assert re.search(r'taxi-platform build-bento --json --base-image "\$BENTO_BASE_IMAGE"', build["run"])
    assert steps.index(check) < steps.index(build)
