"""How a worker of a stage with its own environment starts: ``python -m conveyor.worker.envshim``.

::

    driver ── Popen(driver's python -m conveyor.worker.envshim FD SLOT GROUP) ──▶ envshim
                                                                              │ ensure(): find the
                                                                              │ cached env, or build
                                                                              │ it under its lock
                                         (SETUP_FAILED, pip's output) ◀─────┤ build failed
                                                                              ▼
                                  exec: <env>/bin/python -m conveyor.worker.process FD SLOT

The local executor starts this under the driver's interpreter, with the
stage's :class:`~conveyor.envs.EnvSpec` in the environment. It builds or finds
the stage's environment, then replaces itself (``exec``) with that
environment's interpreter running :mod:`conveyor.worker.process` on the same socket
and slot, so the driver sees one worker process throughout. The build runs
here, in the worker's own process, and not in the driver: other stages keep
running meanwhile, and the build's CPU is accounted to the stage's worker.
When the build fails, or a ``python=`` interpreter lacks what a worker
needs, the driver is told as a setup failure: the stage's items fail with
that text and the rest of the pipeline goes on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import traceback
from multiprocessing.connection import Connection

from ..envs import (
    ATTEMPT_VAR,
    LABEL_VAR,
    RUNTIME,
    SPEC_VAR,
    EnvSpec,
    ensure,
    runtime_pins,
)
from ..errors import EnvError
from .protocol import SETUP_FAILED, die_with_parent


def check_runtime(python: str) -> None:
    """Raise :class:`EnvError` unless ``python`` can import what a worker needs."""
    probe = subprocess.run([python, "-c", "import " + ", ".join(RUNTIME)],
                           capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        why = (probe.stderr.strip().splitlines() or ["it failed"])[-1]
        raise EnvError(f"{python} cannot run conveyor's worker ({why}); install "
                       f"{' '.join(runtime_pins())} in it, or give requirements= to build "
                       f"an environment from it")


def main(fd: int, slot_fd: int, group: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver coordinates Ctrl-C
    die_with_parent()  # a build outlives nothing: kill -9 of the driver ends it too
    spec = EnvSpec.from_json(os.environ.pop(SPEC_VAR))
    try:
        if spec.requirements:
            env = ensure(spec, attempt=os.environ.get(ATTEMPT_VAR),
                         say=lambda line: print(line, file=sys.stderr, flush=True))
            python, label = env.python, env.key
        else:
            assert spec.python is not None
            check_runtime(spec.python)
            python, label = spec.python, spec.python
    except (EnvError, OSError) as exc:  # OSError: the cache dir cannot be written
        Connection(fd).send((SETUP_FAILED, f"stage {group!r}: {exc}", traceback.format_exc()))
        return
    os.environ[LABEL_VAR] = label
    os.execv(python, [python, "-m", "conveyor.worker.process", str(fd), str(slot_fd)])


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
