"""Runs that outlive their caller: ``conveyor run --detach`` and ``pipe.run(detach=True)``.

The detached process is the run's driver itself, started as ``python -m
conveyor.detached RUN_DIR ...`` in a session of its own (closing the terminal
sends it nothing), reading nothing, writing to ``RUN_DIR/driver.log``. The
caller records its pid, host and command in ``RUN_DIR/driver.json`` and
returns; the driver writes its exit code to ``RUN_DIR/exit.json`` as it ends.
:mod:`conveyor.runstate` reads both (with the run's lock) to tell running from
stopped, finished or crashed; ``conveyor attach`` and ``RunResult.wait()``
return that exit code. A driver killed with ``-9`` writes none: the run is
crashed, and the same command resumes it (its workers died with it).

What the driver runs comes one of two ways:

* ``cli ARGS...``: the same ``conveyor`` command line without ``--detach``, in
  the caller's working directory, so it builds the same pipeline the same way;
* ``pickle``: ``pipe.run(detach=True)`` sends the pipeline, its inputs and
  options in ``RUN_DIR/detached.pkl``, pickled as stage code is for workers
  (:mod:`conveyor.worker.shipping`: a pipeline of a script's ``__main__`` or a
  notebook travels by value), with the caller's ``sys.path`` to import the rest.

A ``SIGTERM`` before the run has begun (still importing, joining Ray) stops the
driver as one during the run does: exit 130, recorded.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from . import rundir, runstate
from .errors import ConveyorError, LedgerError, RunInterrupted, RunLockedError
from .items import Listing
from .result import RunResult
from .runstate import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE

if TYPE_CHECKING:
    from .pipeline import Pipeline

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])
LOG_TAIL = 20  # lines of driver.log quoted when a detached driver fails to start


def launch(run_dir: str | os.PathLike[str], args: list[str]) -> int:
    """Start a detached driver on ``run_dir`` running ``args`` (see the module
    docstring); return its pid.

    Raises:
        RunLockedError: a driver already runs there.
    """
    run_dir = Path(run_dir).absolute()
    live = runstate.driver(run_dir)
    if live is not None:
        raise RunLockedError(f"run directory {run_dir} is in use by another driver (pid "
                             f"{live['pid']} on {live['host']} since {live['since']}); "
                             f"wait for it or stop it first")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / rundir.EXIT).unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")) if p)}
    since = time.strftime("%Y-%m-%d %H:%M:%S")
    with open(run_dir / rundir.DRIVER_LOG, "ab") as log:  # a resumed run's log follows on
        log.write(f"--- {since} detached driver: {' '.join(args)}\n".encode())
        log.flush()
        proc = subprocess.Popen([sys.executable, "-m", "conveyor.detached", str(run_dir), *args],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    runstate.write_json(run_dir / rundir.DRIVER, {
        "pid": proc.pid, "host": socket.gethostname(), "since": since, "started": time.time(),
        "command": args})
    return proc.pid


def started(run_dir: str | os.PathLike[str], pid: int, within: float | None) -> int | None:
    """Wait until detached driver ``pid`` holds the run (None) or has exited (its exit
    code), for at most ``within`` seconds (None: as long as that takes)."""
    deadline = None if within is None else time.monotonic() + within
    while deadline is None or time.monotonic() < deadline:
        exited = runstate.exit_record(run_dir, pid)
        if exited is not None:
            return int(exited.get("code", EXIT_FAILED))
        live = runstate.driver(run_dir)
        if live is None:  # gone without a word: killed while it started
            return EXIT_INTERRUPTED
        holder = runstate.read_json(Path(run_dir) / rundir.LOCK)
        if holder.get("pid") == pid and _ledger_ready(run_dir):
            return None
        time.sleep(runstate.POLL)
    return None


def _ledger_ready(run_dir: str | os.PathLike[str]) -> bool:
    """Whether the run's ledger exists with its tables (a view of it can be opened)."""
    try:
        with RunResult(run_dir) as result:
            result.ledger.get_meta("pipeline")
        return True
    except (LedgerError, sqlite3.Error):
        return False


def log_tail(run_dir: str | os.PathLike[str], lines: int = LOG_TAIL) -> str:
    """The last ``lines`` lines of the detached driver's log."""
    try:
        text = (Path(run_dir) / rundir.DRIVER_LOG).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def detach(pipeline: "Pipeline", inputs: Iterable[Any] | None,
           run_dir: str | os.PathLike[str], options: dict[str, Any]) -> "RunResult":
    """``pipeline.run(inputs, run_dir=run_dir, **options)`` in a detached driver; see
    :meth:`conveyor.Pipeline.run`. Returns once that driver holds the run."""
    # cloudpickle: loaded only where a run is detached from Python
    from .worker import shipping

    pipeline.validate()  # a definition that cannot run fails here, not in a log
    run_dir = Path(run_dir).absolute()
    if runstate.driver(run_dir) is None:  # else launch() refuses, naming the holder
        run_dir.mkdir(parents=True, exist_ok=True)
        listed = (None if inputs is None else  # a listing keeps its roots, read now
                  Listing(list(inputs), inputs.roots) if isinstance(inputs, Listing)
                  else list(inputs))
        payload = shipping.dumps((pipeline, listed, options))
        part = run_dir / (rundir.DETACHED + ".part")
        part.write_bytes(pickle.dumps((list(sys.path), payload)))
        os.replace(part, run_dir / rundir.DETACHED)
    pid = launch(run_dir, ["pickle"])
    code = started(run_dir, pid, None)
    if code is not None and not _ledger_ready(run_dir):
        raise ConveyorError(f"the detached run on {run_dir} ended before it began (exit "
                            f"{code}):\n{log_tail(run_dir)}")
    return RunResult(run_dir)


# -- the detached driver ------------------------------------------------------------------------

def _interrupted(signum: int, frame: Any) -> None:
    raise RunInterrupted(f"stopped by {signal.Signals(signum).name} before the run began")


def _run_cli(args: list[str]) -> int:
    # the CLI imports this module (for --detach): so it is imported here, not at the top
    from .cli.app import app

    try:
        app(args=args, prog_name="conveyor")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_OK if exc.code is None \
            else EXIT_FAILED
    return EXIT_OK


def _run_pickled(run_dir: Path) -> int:
    # as in detach()
    from .worker import shipping

    path, payload = pickle.loads((run_dir / rundir.DETACHED).read_bytes())
    sys.path[:0] = [p for p in path if p not in sys.path]  # before by-reference code loads
    pipeline, inputs, options = shipping.loads(payload)
    try:
        result = pipeline.run(inputs, run_dir=run_dir, **options)
    except RunInterrupted as exc:
        print(exc, file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ConveyorError, KeyError, ValueError) as exc:  # as the CLI: nothing ran
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with result:
        print(result.summary(), file=sys.stderr)
        return EXIT_OK if result.ok else EXIT_FAILED


def main(argv: list[str]) -> int:
    """The detached driver: run ``argv`` (``RUN_DIR cli ARGS...`` or ``RUN_DIR pickle``),
    record its exit code, and return it."""
    run_dir, how, *args = argv
    signal.signal(signal.SIGTERM, _interrupted)  # the run's own handler replaces it
    code = EXIT_FAILED
    try:
        code = _run_cli(args) if how == "cli" else _run_pickled(Path(run_dir))
    except RunInterrupted as exc:
        print(exc, file=sys.stderr)
        code = EXIT_INTERRUPTED
    except ConveyorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = EXIT_USAGE
    except Exception:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        runstate.write_json(Path(run_dir) / rundir.EXIT, {
            "pid": os.getpid(), "code": code, "ended": time.time()})
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
