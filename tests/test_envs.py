"""Stages with their own Python environment, and native tools: real venvs, real pip, real workers.

The tests that build environments use a temporary ``CONVEYOR_CACHE`` and
``six==1.16.0``, older than the driver's six, so a stage that reports its
version proves which environment it ran in. Stage code lives in
``tests/pipelines`` (this module imports pytest, which the built
environments do not have).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest

from conveyor import Pipeline, StageDefinitionError
from conveyor.envs import (CACHE_VAR, MARKER, EnvSpec, base_of, ensure, env_key, forwarded_path,
                           requirements_of, runtime_env)
from conveyor.engine.fingerprint import fingerprints
from conveyor.engine.fusion import fuse

PIPELINES = Path(__file__).parent / "pipelines"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(PIPELINES))  # workers get the driver's sys.path (minus its packages)
sys.path.insert(0, str(EXAMPLES))

import envstages  # noqa: E402
import needs_typer  # noqa: E402
import pinned_env  # noqa: E402

SIX = "six==1.16.0"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh environment cache for this test (workers inherit the variable)."""
    path = tmp_path / "envs"
    monkeypatch.setenv(CACHE_VAR, str(path))
    return path


@pytest.fixture(scope="session")
def six_env(tmp_path_factory) -> Path:
    """A cache holding a built six==1.16.0 environment, shared by tests that only use it."""
    path = tmp_path_factory.mktemp("six-envs")
    code = ("import json; from conveyor.envs import EnvSpec, ensure; "
            f"e = ensure(EnvSpec(({SIX!r},))); print(json.dumps(str(e.path)))")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, CACHE_VAR: str(path)},
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return path


# -- declaring --------------------------------------------------------------------------------

def test_spellings_of_one_requirement_set_are_one_environment(tmp_path):
    a = requirements_of(["Six==1.16.0", "  attrs >= 22  # for the parser", "", "six==1.16.0"])
    b = requirements_of(["attrs>=22", "six == 1.16.0"])
    assert a == b == ("attrs>=22", "six==1.16.0")
    assert requirements_of(["Typing_Extensions >4 ;python_version < '3.12' and os_name=='posix'"]) \
        == ("typing-extensions>4; python_version < '3.12' and os_name=='posix'",)
    assert env_key(EnvSpec(a), ("/py", "3.11.7")) == env_key(EnvSpec(b), ("/py", "3.11.7"))
    assert env_key(EnvSpec(a), ("/py", "3.11.7")) != env_key(EnvSpec(a), ("/py", "3.12.1"))
    assert env_key(EnvSpec(a), ("/py", "3.11.7")) != env_key(EnvSpec(a[:1]), ("/py", "3.11.7"))


def test_a_requirements_file_is_read_when_the_stage_is_declared(tmp_path):
    (tmp_path / "more.txt").write_text("attrs\n")
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("# pinned for the OCR model\nsix==1.16.0\n-r more.txt\n")
    pipe = Pipeline("file")
    pipe.stage(envstages.same, requirements=reqs)
    assert pipe["same"].requirements == (f"-r {tmp_path / 'more.txt'}", "six==1.16.0")
    with pytest.raises(StageDefinitionError, match="stage 'same': cannot read requirements file"):
        Pipeline("missing").stage(envstages.same, requirements=tmp_path / "nope.txt")
    with pytest.raises(StageDefinitionError, match="is not an interpreter"):
        Pipeline("bad").stage(envstages.same, python=tmp_path / "nope")


def test_the_environment_is_part_of_the_fingerprint():
    def build(requirements=None, python=None):
        pipe = Pipeline("fp")
        pipe.stage(envstages.same, name="first")
        pipe.stage(envstages.which_six, after="first", requirements=requirements, python=python)
        pipe.stage(envstages.same, name="last", after="which_six")
        return fingerprints(pipe)

    base = build([SIX])
    for other in (build(["six==1.15.0"]), build(), build([SIX], python=sys.executable)):
        assert {n for n in base if base[n] != other[n]} == {"which_six", "last"}
    assert build(["Six == 1.16.0"]) == base  # the same set, spelled differently


def test_stages_in_different_environments_are_not_fused():
    pipe = Pipeline("fuse")
    pipe.stage(envstages.same)
    pipe.stage(envstages.which_six, after="same", requirements=[SIX])
    assert [g.stages for g in fuse(pipe)] == [("same",), ("which_six",)]


def test_ray_runtime_env_fields():
    pipe = Pipeline("ray")
    pipe.stage(envstages.same)
    pipe.stage(envstages.which_six, after="same", requirements=[SIX], python=sys.executable)
    assert runtime_env(pipe["same"]) == {}
    assert runtime_env(pipe["which_six"]) == {"pip": [SIX], "py_executable": sys.executable}


def test_the_forwarded_path_keeps_the_users_modules_and_drops_the_drivers_packages():
    site_packages = Path(metadata.distribution("orjson").locate_file(""))
    kept = forwarded_path([str(PIPELINES), str(site_packages), os.path.dirname(os.__file__)])
    assert kept == [str(PIPELINES)]


# -- running ----------------------------------------------------------------------------------

def run_example(run_dir: Path) -> list[dict]:
    out = subprocess.run([sys.executable, str(EXAMPLES / "pinned_env.py"), str(run_dir)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines()]


@pytest.mark.slow
def test_the_example_runs_its_stage_with_its_own_six_built_once_then_reused(tmp_path, cache):
    lines = run_example(tmp_path / "first" / "run")
    words, driver = [x for x in lines if x["stage"] == "words"], lines[-1]
    assert driver == {"stage": "driver", "six": metadata.version("six"),
                      "python": sys.executable}
    assert metadata.version("six") != "1.16.0"  # else this test proves nothing
    (env,) = [p for p in cache.iterdir() if (p / MARKER).is_file()]
    assert [w["six"] for w in words] == ["1.16.0", "1.16.0"]
    assert {w["python"] for w in words} == {str(env / "bin" / "python")}
    assert [w["text"] for w in words] == ["Pinned environments keep old code running",
                                          "Native tools come from the system"]
    marker = json.loads((env / MARKER).read_text())
    inode = env.stat().st_ino

    lines = run_example(tmp_path / "second" / "run")  # a new run dir: the stage runs again
    assert [w["six"] for w in lines if w["stage"] == "words"] == ["1.16.0", "1.16.0"]
    assert json.loads((env / MARKER).read_text()) == marker  # the same build
    assert env.stat().st_ino == inode
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [env.name, f"{env.name}.lock", "runtime"])  # no second environment, no leftovers


ENSURE = """
import json, sys, time
from conveyor.envs import EnvSpec, ensure
env = ensure(EnvSpec(({req!r},)))
print(json.dumps({{"built": env.built, "path": str(env.path), "done": time.time()}}))
"""


def lock_waiters(lock_file: Path) -> set[int]:
    """Pids of processes blocked in flock() on ``lock_file`` (the ``->`` lines of
    /proc/locks name the waiters, by the file's inode)."""
    inode = str(lock_file.stat().st_ino)
    waiters = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if fields[1] == "->" and fields[2] == "FLOCK" and fields[6].rsplit(":", 1)[1] == inode:
            waiters.add(int(fields[5]))
    return waiters


@pytest.mark.slow
def test_concurrent_builders_wait_on_the_lock_and_build_once(cache):
    spec = EnvSpec((SIX,))
    key = env_key(spec, base_of(spec))
    cache.mkdir(parents=True)
    lock_file = cache / f"{key}.lock"
    with open(lock_file, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # hold it: both builders must wait
        procs = [subprocess.Popen([sys.executable, "-c", ENSURE.format(req=SIX)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        deadline = time.monotonic() + 120  # generous: two interpreters importing conveyor
        while lock_waiters(lock_file) != {p.pid for p in procs}:
            exited = [p for p in procs if p.poll() is not None]
            assert not exited, f"a builder did not wait on the lock: {exited[0].communicate()}"
            assert time.monotonic() < deadline, f"waiting: {lock_waiters(lock_file)}"
            time.sleep(0.01)
        # both are blocked in flock() on the lock we hold, so neither has built anything
        assert not list(cache.glob(f"{key}*tmp*")) and not (cache / key).exists()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out))
    assert sorted(r["built"] for r in results) == [False, True]  # one build between them
    assert {r["path"] for r in results} == {str(cache / key)}
    built_at = json.loads((cache / key / MARKER).read_text())["built_at"]
    assert all(r["done"] >= built_at for r in results)


@pytest.mark.slow
def test_a_requirement_that_does_not_exist_fails_its_stage_with_pips_message(run_dir, cache):
    pipe = Pipeline("badreq")
    pipe.stage(envstages.same, name="first")
    pipe.stage(envstages.which_six, after="first", requirements=["conveyor-no-such-package-zq"])
    pipe.stage(envstages.same, name="fine", after="first")
    result = pipe.run([f"x{i}" for i in range(4)], run_dir=run_dir)
    assert result.counts["first"]["done"] == 4
    assert result.counts["fine"]["done"] == 4
    failures = result.failures("which_six")
    assert len(failures) == 4
    said = ("conveyor-no-such-package-zq was not found in the package registry"  # uv's words
            if shutil.which("uv") else
            "No matching distribution found for conveyor-no-such-package-zq")  # pip's
    for failure in failures:
        assert failure["error"].startswith("stage 'which_six': building the environment")
        assert said in failure["error"]
    log = (run_dir / "logs" / "which_six.log").read_text()
    assert log.count("conveyor: building environment") == 1  # not once per worker
    assert log.count("failed to build") == 1
    assert not [p for p in cache.iterdir() if (p / MARKER).exists()]  # nothing half-built kept
    assert not list(cache.glob("*.tmp-*"))


@pytest.mark.slow
def test_uv_builds_the_environment_when_it_is_on_path(cache, monkeypatch):
    # The dev extra installs uv next to this interpreter; the tests above build with
    # venv+pip unless the venv is activated.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    assert shutil.which("uv"), "uv is missing: pip install -e '.[dev]' installs it"
    env = ensure(EnvSpec((SIX,)), cache)
    assert env.built and json.loads((env.path / MARKER).read_text())["tool"] == "uv"
    out = subprocess.run([env.python, "-c", "import six, orjson; print(six.__version__)"],
                         capture_output=True, text=True)
    assert out.stdout.strip() == "1.16.0", out.stderr


@pytest.mark.slow
def test_a_stage_whose_module_does_not_import_in_its_env_fails_clearly(run_dir, monkeypatch,
                                                                       six_env):
    monkeypatch.setenv(CACHE_VAR, str(six_env))
    pipe = Pipeline("noimport")
    pipe.stage(envstages.same, name="first")
    pipe.stage(needs_typer.uses_typer, after="first", requirements=[SIX])
    pipe.stage(envstages.same, name="fine", after="first")
    result = pipe.run(["a", "b"], run_dir=run_dir)
    assert result.counts["fine"]["done"] == 2
    (key,) = [p.name for p in six_env.iterdir() if (p / MARKER).is_file()]
    assert [f["error"] for f in result.failures("uses_typer")] == [
        f"stage 'uses_typer': cannot import needs_typer.uses_typer in env {key}: "
        f"No module named 'typer'"] * 2


@pytest.mark.slow
def test_python_names_the_interpreter_a_stage_runs_under(run_dir, six_env):
    (env,) = [p for p in six_env.iterdir() if (p / MARKER).is_file()]
    pipe = Pipeline("python")
    pipe.stage(envstages.which_six, python=env)  # a venv directory
    result = pipe.run(["a"], run_dir=run_dir)
    assert result.output("which_six") == {"value": "a", "six": "1.16.0",
                                          "python": str(env / "bin" / "python")}


def test_an_interpreter_without_the_worker_runtime_fails_items_saying_what_to_install(run_dir):
    bare = "/usr/bin/python3"
    if not os.access(bare, os.X_OK) or subprocess.run(
            [bare, "-c", "import cloudpickle"], capture_output=True).returncode == 0:
        pytest.skip("needs a system python without cloudpickle")
    pipe = Pipeline("bare")
    pipe.stage(envstages.same, name="first")
    pipe.stage(envstages.which_six, after="first", python=bare)
    result = pipe.run(["a"], run_dir=run_dir)
    assert result.counts["first"]["done"] == 1
    (failure,) = result.failures("which_six")
    assert failure["error"] == (
        f"stage 'which_six': {bare} cannot run conveyor's worker (ModuleNotFoundError: No "
        f"module named 'cloudpickle'); install cloudpickle=={metadata.version('cloudpickle')} "
        f"orjson=={metadata.version('orjson')} psutil=={metadata.version('psutil')} "
        f"pydantic=={metadata.version('pydantic')} in it, or give requirements= to build an "
        f"environment from it")


# -- native tools -------------------------------------------------------------------------------

def test_a_missing_native_tool_fails_the_item_saying_what_to_install(run_dir, tmp_path):
    pdf = tmp_path / "doc.pdf"
    pinned_env.write_pdf(pdf, "hello tools")
    empty = tmp_path / "nobin"
    empty.mkdir()
    pipe = Pipeline("tools")
    pipe.stage(pinned_env.pdftext, env={"PATH": str(empty)})
    result = pipe.run([str(pdf)], run_dir=run_dir)
    (failure,) = result.failures("pdftext")
    assert failure["error"] == "ToolNotFound: pdftotext not found: install poppler-utils"


def test_a_native_tool_on_path_is_called(run_dir, tmp_path):
    if shutil.which("pdftotext") is None:
        pytest.fail("pdftotext is missing: run scripts/system-deps.sh")
    pdf = tmp_path / "doc.pdf"
    pinned_env.write_pdf(pdf, "hello tools")
    pipe = Pipeline("tools")
    pipe.stage(pinned_env.pdftext)
    result = pipe.run([str(pdf)], run_dir=run_dir)
    assert result.output("pdftext") == {"path": str(pdf), "text": "hello tools"}


def test_the_inline_executor_refuses_a_stage_with_its_own_environment(run_dir, cache):
    pipe = Pipeline("inline")
    pipe.stage(envstages.same, name="first")
    pipe.stage(envstages.which_six, after="first", requirements=[SIX])
    pipe.stage(envstages.same, name="fine", after="first")
    result = pipe.run(["a", "b"], run_dir=run_dir, executor="inline")
    assert result.counts["fine"]["done"] == 2
    assert [f["error"] for f in result.failures("which_six")] == [
        "stage 'which_six' declares its own Python environment (requirements=/python=), "
        "which the inline executor cannot give it: use the local executor"] * 2
    assert not cache.exists()  # nothing was built
