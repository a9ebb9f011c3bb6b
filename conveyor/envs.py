"""Per-stage Python environments: declared, keyed, built once, cached, reused.

A stage that declares ``requirements=[...]`` (or a requirements file) runs in a
virtual environment of its own; one that declares ``python=PATH`` runs under
that interpreter (with ``requirements=`` too: in an environment built from it).

::

    Stage(requirements, python) ──▶ EnvSpec (normalised) ──▶ key = hash(requirements,
                                                             runtime pins, base interpreter)
    ensure(spec):  $CONVEYOR_CACHE/<key>/          a finished environment: use it
                   $CONVEYOR_CACHE/<key>.lock      flock: one builder at a time
                   $CONVEYOR_CACHE/<key>.tmp-PID/  being built; renamed to <key>/ when complete

An environment is built into a temporary directory and renamed into place
only once everything is installed, so a half-built one is never used; the
lock makes a second builder (another worker, another run) wait and then find
the finished environment. Besides the stage's requirements, the environment
gets the packages a worker needs (cloudpickle, orjson, psutil, pydantic),
pinned to the driver's versions so that pickles and encoded values match.
``uv`` builds it when it is on PATH, else ``python -m venv`` and pip.

Workers reach these environments through :mod:`conveyor.worker.envshim`; on Ray
the same declaration becomes a ``runtime_env`` (:func:`runtime_env`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from .errors import EnvError, StageDefinitionError

if TYPE_CHECKING:
    from .stage import Stage

CACHE_VAR = "CONVEYOR_CACHE"
SPEC_VAR = "CONVEYOR_ENV_SPEC"  # how the local executor hands a worker its EnvSpec
ATTEMPT_VAR = "CONVEYOR_ENV_ATTEMPT"  # one per executor: a failed build is not rerun within it
LABEL_VAR = "CONVEYOR_ENV"  # set in a worker: the environment it runs in, for messages
MARKER = "conveyor-env.json"  # written last inside a built environment
RUNTIME = ("cloudpickle", "orjson", "psutil", "pydantic")  # what conveyor.worker.process imports
BUILD_SECONDS = 1800  # the longest one build may take
ERROR_LINES = 40  # lines of pip's or uv's output kept in a build error

_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(.*)$")


@dataclass(frozen=True)
class EnvSpec:
    """A stage's environment as declared: requirement lines and a base interpreter."""

    requirements: tuple[str, ...] = ()  # normalised (see requirements_of)
    python: str | None = None  # an interpreter path; None: the driver's

    @classmethod
    def of(cls, stage: "Stage") -> "EnvSpec | None":
        """The stage's environment, or None when it shares the driver's."""
        if not stage.requirements and stage.python is None:
            return None
        return cls(tuple(stage.requirements), stage.python)

    def to_json(self) -> str:
        return json.dumps({"requirements": list(self.requirements), "python": self.python})

    @classmethod
    def from_json(cls, text: str) -> "EnvSpec":
        data = json.loads(text)
        return cls(tuple(data["requirements"]), data["python"])


@dataclass(frozen=True)
class Env:
    """A finished environment: where it is, its interpreter, and whether this call built it."""

    key: str
    path: Path
    python: str
    built: bool


# -- declaring ------------------------------------------------------------------------------

def requirements_of(value: str | os.PathLike[str] | Iterable[str] | None) -> tuple[str, ...]:
    """Normalised requirement lines from a list of pip requirement strings or a file path.

    Comments and blank lines go, whitespace is collapsed, project names are
    lower-cased with ``-``, and the lines are sorted and deduplicated: two
    spellings of one set are one environment. A file is read now, so that its
    content (not its name) is what the stage's fingerprint and key see;
    ``-r``/``-c`` paths in it are made absolute.
    """
    if value is None:
        return ()
    if isinstance(value, (str, os.PathLike)):
        return _normalise(_read_file(Path(value)))
    lines = list(value)
    for line in lines:
        if not isinstance(line, str):
            raise StageDefinitionError(
                f"requirements must be pip requirement strings or a file path, got {line!r}")
    return _normalise(lines)


def _read_file(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StageDefinitionError(f"cannot read requirements file {str(path)!r}: "
                                   f"{exc.strerror or exc}") from None
    lines = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("-r", "--requirement", "-c", "--constraint"):
            line = f"{parts[0]} {(path.parent / parts[1]).resolve()}"
        lines.append(line)
    return lines


def _normalise(lines: Iterable[str]) -> tuple[str, ...]:
    found = set()
    for line in lines:
        line = " ".join(re.sub(r"(^|\s)#.*$", "", line).split())
        if not line:
            continue
        match = _NAME.match(line)
        if match and "://" not in line and "/" not in match.group(1):
            name, rest = match.groups()
            spec, semi, marker = rest.partition(";")  # spaces matter in a marker ("and")
            line = (re.sub(r"[-_.]+", "-", name).lower() + spec.replace(" ", "")
                    + (f"; {marker.strip()}" if semi else ""))
        found.add(line)
    return tuple(sorted(found))


def interpreter(python: str | os.PathLike[str] | None) -> str | None:
    """The interpreter ``python=`` names: an executable, or a venv directory's ``bin/python``."""
    if python is None:
        return None
    path = Path(python).expanduser()
    if path.is_dir():
        path = path / "bin" / "python"
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise StageDefinitionError(f"python={str(python)!r} is not an interpreter or a "
                                   f"virtual environment directory")
    return str(path.absolute())  # not resolved: a venv's python is a symlink that matters


def identity(stage: "Stage") -> str:
    """What the stage's fingerprint takes from its environment ("" for the driver's)."""
    spec = EnvSpec.of(stage)
    return "" if spec is None else spec.to_json()


def runtime_env(stage: "Stage") -> dict[str, Any]:
    """The Ray ``runtime_env`` fields for the stage's ``requirements``/``python``.

    Ray builds the ``pip`` environment on top of the cluster's own (so Ray and
    conveyor's runtime stay importable) and runs workers under ``py_executable``.
    """
    spec = EnvSpec.of(stage)
    fields: dict[str, Any] = {}
    if spec is None:
        return fields
    if spec.requirements:
        fields["pip"] = list(spec.requirements)
    if spec.python is not None:
        fields["py_executable"] = spec.python
    return fields


# -- building -------------------------------------------------------------------------------

def cache_dir() -> Path:
    """Where environments live: ``$CONVEYOR_CACHE``, else ``~/.cache/conveyor/envs``."""
    return Path(os.environ.get(CACHE_VAR) or Path.home() / ".cache" / "conveyor" / "envs")


def runtime_pins() -> tuple[str, ...]:
    """The worker's own dependencies, pinned to the versions installed here."""
    from importlib import metadata  # here: ~15 ms, and every worker imports this module

    return tuple(f"{name}=={metadata.version(name)}" for name in RUNTIME)


def base_of(spec: EnvSpec) -> tuple[str, str]:
    """(path, version) of the interpreter an environment is built from."""
    if spec.python is None:
        return sys.executable, platform.python_version()
    python = spec.python
    out = subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise EnvError(f"cannot run {python}: {out.stderr.strip()[-500:]}")
    return python, out.stdout.strip()


def env_key(spec: EnvSpec, base: tuple[str, str]) -> str:
    """The cache key: the requirement set, the runtime pins and the base interpreter."""
    text = json.dumps([list(spec.requirements), list(runtime_pins()), list(base)])
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def ensure(spec: EnvSpec, cache: Path | None = None, attempt: str | None = None,
           say: Callable[[str], None] = lambda line: None) -> Env:
    """The environment for ``spec``, built now if no finished one is cached.

    Builders of the same key take turns on a lock next to it; whoever comes
    second finds the finished environment and uses it. ``attempt`` names the
    caller's run: a build that failed for that same attempt fails again at
    once with the same error instead of running pip again. ``say`` is told
    when a build starts and ends (a worker writes it to its log).

    Raises:
        EnvError: the build failed; the message carries pip's or uv's output.
    """
    cache = cache or cache_dir()
    base = base_of(spec)
    key = env_key(spec, base)
    final = cache / key
    if (final / MARKER).is_file():
        return Env(key, final, str(final / "bin" / "python"), built=False)
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        if (final / MARKER).is_file():
            return Env(key, final, str(final / "bin" / "python"), built=False)
        failed = cache / f"{key}.failed"
        if attempt and failed.is_file():
            record = json.loads(failed.read_text())
            if record["attempt"] == attempt:
                raise EnvError(record["error"])
        for stale in cache.glob(f"{key}.tmp-*"):  # left by a builder that died
            shutil.rmtree(stale, ignore_errors=True)
        tmp = cache / f"{key}.tmp-{os.getpid()}"
        say(f"conveyor: building environment {key} ({', '.join(spec.requirements)}) "
            f"from {base[0]} (Python {base[1]}) in {tmp}")
        try:
            tool = _build(tmp, base[0], spec.requirements + runtime_pins())
        except EnvError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            failed.write_text(json.dumps({"attempt": attempt, "error": str(exc)}))
            say(f"conveyor: environment {key} failed to build: {exc}")
            raise
        _fix_scripts(tmp, final)
        (tmp / MARKER).write_text(json.dumps({
            "key": key, "requirements": list(spec.requirements), "runtime": list(runtime_pins()),
            "base": {"path": base[0], "version": base[1]}, "tool": tool,
            "built_at": time.time(), "build_id": uuid.uuid4().hex}, indent=1))
        os.rename(tmp, final)
        failed.unlink(missing_ok=True)
        say(f"conveyor: environment {key} built with {tool} in {final}")
    return Env(key, final, str(final / "bin" / "python"), built=True)


def _build(path: Path, base: str, requirements: tuple[str, ...]) -> str:
    """Create a venv at ``path`` from ``base`` and install ``requirements``; return the tool."""
    path.mkdir(parents=True)
    reqs = path / "conveyor-requirements.txt"
    reqs.write_text("\n".join(requirements) + "\n")
    python = str(path / "bin" / "python")
    uv = shutil.which("uv")
    if uv:
        steps = [[uv, "venv", "--quiet", "--allow-existing", "--python", base, str(path)],
                 [uv, "pip", "install", "--quiet", "--python", python, "-r", str(reqs)]]
    else:
        steps = [[base, "-m", "venv", str(path)],
                 [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                  "--no-input", "-r", str(reqs)]]
    for step in steps:
        try:
            out = subprocess.run(step, capture_output=True, text=True, timeout=BUILD_SECONDS,
                                 stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise EnvError(f"{Path(step[0]).name} took more than {BUILD_SECONDS} s "
                                f"installing {', '.join(requirements)}") from None
        if out.returncode != 0:
            lines = (out.stderr.strip() or out.stdout.strip()).splitlines()[-ERROR_LINES:]
            raise EnvError(f"building the environment for {', '.join(requirements)} "
                                f"failed ({Path(step[0]).name} exited {out.returncode}):\n"
                                + "\n".join(lines))
    return "uv" if uv else "venv+pip"


def _fix_scripts(tmp: Path, final: Path) -> None:
    """Point the scripts' ``#!`` lines at where the environment will live, not its build dir."""
    old, new = f"#!{tmp}/".encode(), f"#!{final}/".encode()
    for script in (tmp / "bin").iterdir():
        if script.is_symlink() or not script.is_file():
            continue
        data = script.read_bytes()
        if data.startswith(old):
            script.write_bytes(new + data[len(old):])


# -- what a worker in another environment may import from the driver --------------------------

def forwarded_path(path: Iterable[str]) -> list[str]:
    """The driver's ``sys.path`` without its own installation (stdlib, site-packages).

    The user's modules (the script's directory, PYTHONPATH, editable checkouts)
    stay importable in the worker; the driver's packages do not shadow the
    environment's own versions.
    """
    import site
    import sysconfig

    own = {sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages(),
           site.getusersitepackages(), *sysconfig.get_paths().values()}
    own = {os.path.realpath(p) for p in own if p}
    kept = []
    for entry in path:
        real = os.path.realpath(entry or os.getcwd())
        if not any(real == o or real.startswith(o + os.sep) for o in own):
            kept.append(entry)
    return kept


def package_dir(cache: Path | None = None) -> str:
    """A directory holding only the ``conveyor`` package (a link), for a worker's PYTHONPATH.

    Where conveyor is installed in site-packages, its parent directory would
    bring all of the driver's packages along; this brings conveyor alone.
    """
    package = Path(__file__).resolve().parent
    digest = hashlib.blake2b(str(package).encode(), digest_size=8).hexdigest()
    root = (cache or cache_dir()) / "runtime" / digest
    link = root / "conveyor"
    if not link.exists():
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f"conveyor.tmp-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(package, target_is_directory=True)
        os.replace(tmp, link)  # atomic: concurrent workers agree
    return str(root)
