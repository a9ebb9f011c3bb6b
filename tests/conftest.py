"""Shared fixtures: the executors every contract test runs on, a real S3 API server
(``s3``: moto's, over HTTP), and helpers.

The ``ray`` executor runs on one real local Ray instance shared by the whole
session (starting Ray costs seconds; a Ray instance already running in the
process is used by the executor as it is). Its tests carry the ``ray`` marker:
``-m ray`` runs only them, ``-m 'not ray'`` skips them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

EXECUTORS = ["inline", "local", pytest.param("ray", marks=pytest.mark.ray)]
RAY_CPUS = 2  # small: CI machines have two cores
RAY_GPUS = 1  # declared, so gpus= stages schedule on a machine without one


@pytest.fixture(scope="session", autouse=True)
def ray_pip_envs_removed() -> Iterator[None]:
    """Ray copies a virtual environment (about 2.5 GB here) into its session folder for
    each pip ``runtime_env`` and keeps it after the session ends. Remove those of the
    sessions this test run started, so that repeated runs do not fill the disk (they did:
    36 GB of old sessions on one machine). Their logs stay."""
    root = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray"
    before = set(root.glob("session_2*"))
    yield
    for session in set(root.glob("session_2*")) - before:
        shutil.rmtree(session / "runtime_resources", ignore_errors=True)


@pytest.fixture(scope="session")
def ray_instance() -> Iterator[object]:
    """A local Ray instance for the session (skips where Ray is not installed)."""
    ray = pytest.importorskip("ray")
    start_session_ray(ray)
    yield ray
    ray.shutdown()


def start_session_ray(ray: object) -> None:
    """Start the session's local Ray instance (again, after a test set it aside)."""
    ray.init(num_cpus=RAY_CPUS, num_gpus=RAY_GPUS, include_dashboard=False,  # type: ignore
             log_to_driver=False, logging_level="ERROR", configure_logging=False)


@pytest.fixture(params=EXECUTORS)
def executor(request: pytest.FixtureRequest) -> str:
    """Each contract test runs once per executor."""
    if request.param == "ray":
        request.getfixturevalue("ray_instance")
    return request.param


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


@pytest.fixture
def drivers() -> Iterator[list[subprocess.Popen]]:
    """Driver processes a test starts (it appends them); a failed test leaves none behind."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- object storage: a real S3 API server -------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    """moto's S3 server (its server mode: real HTTP on a free port, in a thread of this
    process), a bucket in it, and the environment a run needs to reach it."""
    s3fs = pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    port = free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()  # returns once it serves
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": env["AWS_ENDPOINT_URL"]},
                               skip_instance_cache=True)
        bucket = f"conveyor-test-{port}"  # moto's state outlives a server in this process
        fs.mkdir(bucket)
        yield {"fs": fs, "env": env, "port": port, "bucket": bucket}
    finally:
        server.stop()
