"""Whether a run is running, and how it ended, read from its run directory alone.

Any process can tell, on any run directory, with no driver to ask:

* **running**: the run's lock (:mod:`conveyor.engine.lock`) records a driver
  that is alive; or a detached driver (:mod:`conveyor.detached`) is alive and
  has not recorded its exit yet (it is still starting: imports, Ray).
* **crashed**: the driver is gone without ending the run: the lock still
  records it (a clean end clears the record), or the last ``run_start`` event
  has no ``run_end``. The same command resumes; nothing done is lost.
* **stopped**: the last run ended by a signal (Ctrl-C, ``conveyor stop``).
* **finished**: the last run ended; ``ok`` when every item is done.

A detached driver records its exit code (:data:`~conveyor.rundir.EXIT`); a
run in the foreground does not, and its code follows from how it ended: 0
finished ok, 1 finished with failed (or pending) items, 2 a fatal error, 130
stopped or crashed (run the same command again to resume).

A driver on another host cannot be looked at from here: its lock record is
taken at its word.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any, Callable

from . import rundir
from .errors import ConveyorError
from .observe.events import latest

#: 0 the run is ok; 1 some items failed (or are left pending); 2 a usage,
#: definition or input error (nothing ran); 130 interrupted (rerun to resume).
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

RUNNING, STOPPED, FINISHED, CRASHED = "running", "stopped", "finished", "crashed"
POLL = 0.1  # seconds between looks while waiting for a driver to go


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file of the run directory; {} where it is missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def write_json(path: Path, record: dict[str, Any]) -> None:
    """Write ``record`` whole or not at all: a reader never sees half of it."""
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(record), encoding="utf-8")
    os.replace(part, path)


def _alive(pid: Any, host: Any, started: float | None) -> bool:
    """Whether process ``pid`` of ``host`` still runs (one of another host is taken as
    alive), and is the one that started at ``started``, not a later one with its pid."""
    import psutil

    if host != socket.gethostname():
        return True
    if not isinstance(pid, int):
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or proc.create_time() <= started + 1.0
    except psutil.NoSuchProcess:
        return False


def _since(record: dict[str, Any]) -> float | None:
    """The unix time of a lock record's ``since`` (local time, to the second)."""
    try:
        return time.mktime(time.strptime(record["since"], "%Y-%m-%d %H:%M:%S"))
    except (KeyError, TypeError, ValueError):
        return None


def _detached(run_dir: Path) -> dict[str, Any]:
    return read_json(run_dir / rundir.DRIVER)


def exit_record(run_dir: str | os.PathLike[str], pid: Any) -> dict[str, Any] | None:
    """The exit record of detached driver ``pid``, if it wrote one."""
    record = read_json(Path(run_dir) / rundir.EXIT)
    return record if record and record.get("pid") == pid else None


def driver(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The live driver of ``run_dir`` (``pid``, ``host``, ``since``, ``detached``), or None."""
    run_dir = Path(run_dir)
    holder = read_json(run_dir / rundir.LOCK)
    detached = _detached(run_dir)
    if holder and _alive(holder.get("pid"), holder.get("host"), _since(holder)):
        return {"pid": holder["pid"], "host": holder.get("host"), "since": holder.get("since"),
                "detached": holder.get("pid") == detached.get("pid")}
    if (detached and exit_record(run_dir, detached.get("pid")) is None
            and _alive(detached.get("pid"), detached.get("host"), detached.get("started"))):
        return {"pid": detached["pid"], "host": detached.get("host"),
                "since": detached.get("since"), "detached": True}
    return None


def state(run_dir: str | os.PathLike[str], ok: Callable[[], bool]) -> dict[str, Any]:
    """The run's state (see the module docstring) as a JSON-ready dict: ``state``,
    ``ok``, ``exit_code``, ``pid``, ``host``, ``since``, ``detached``, ``log`` (a
    detached driver's output) and, while running, ``taking_inputs`` (how many inputs a
    run still taking them in has read; None once they are in). ``ok`` tells whether
    every item is done."""
    run_dir = Path(run_dir)
    detached = _detached(run_dir)
    log = str(run_dir / rundir.DRIVER_LOG) if detached else None
    live = driver(run_dir)
    if live is not None:
        return {"state": RUNNING, "ok": None, "exit_code": None, **live, "log": log,
                "taking_inputs": intake(run_dir)}
    found = {"pid": detached.get("pid"), "host": detached.get("host"),
             "since": detached.get("since"), "detached": bool(detached), "log": log}
    return {**found, **_ended(run_dir, detached, ok)}


def intake(run_dir: str | os.PathLike[str]) -> int | None:
    """How many inputs a running driver still taking them in has read (its
    ``intake.json``); None once they are in."""
    return read_json(Path(run_dir) / rundir.INTAKE).get("taken")


def taking(taken: int) -> str:
    """How status, attach and the driver's console say it."""
    return f"taking inputs in: {taken:,} read"


def _ended(run_dir: Path, detached: dict[str, Any], ok: Callable[[], bool]) -> dict[str, Any]:
    """How the last run ended: ``state``, ``ok``, ``exit_code``."""
    last = latest(run_dir, "run_start", "run_end")  # a run_end before run_start: none
    start, end = last.get("run_start"), last.get("run_end")
    exited = exit_record(run_dir, detached.get("pid"))
    if exited is not None and (start is None or start["t"] <= exited.get("ended", 0)):
        code = exited.get("code")
        name = {EXIT_OK: FINISHED, EXIT_FAILED: FINISHED, EXIT_INTERRUPTED: STOPPED}.get(
            code, FINISHED)
        return {"state": name, "ok": code == EXIT_OK, "exit_code": code}
    crashed = {"state": CRASHED, "ok": False, "exit_code": EXIT_INTERRUPTED}
    if read_json(run_dir / rundir.LOCK):  # a clean end clears the record; a kill cannot
        return crashed
    if start is not None and (end is None or end["t"] < start["t"]):
        return crashed
    if detached and (end is None or end["t"] < detached.get("started", 0)):
        return crashed  # a detached driver that died before it began
    if end is None:
        return {"state": STOPPED, "ok": False, "exit_code": None}
    if end.get("interrupted"):
        return {"state": STOPPED, "ok": False, "exit_code": EXIT_INTERRUPTED}
    if end.get("fatal"):
        return {"state": FINISHED, "ok": False, "exit_code": EXIT_USAGE}
    done = ok()
    return {"state": FINISHED, "ok": done, "exit_code": EXIT_OK if done else EXIT_FAILED}


def describe(found: dict[str, Any]) -> str:
    """One line for people: ``running (pid N on HOST since …)``, ``finished ok`` ..."""
    name = found["state"]
    if name == RUNNING:
        how = "detached, " if found["detached"] else ""
        text = f"running ({how}pid {found['pid']} on {found['host']} since {found['since']})"
        if found.get("taking_inputs") is not None:
            text += f", {taking(found['taking_inputs'])}"
        return text
    if name == FINISHED:
        text = "finished ok" if found["ok"] else "finished failed"
        return text if found["exit_code"] in (EXIT_OK, EXIT_FAILED) else \
            f"{text} (exit {found['exit_code']})"
    if name == CRASHED:
        return "crashed (driver gone); run the same command again to resume"
    return "stopped; run the same command again to resume"


def wait(run_dir: str | os.PathLike[str], timeout: float | None = None,
         seen: dict[str, Any] | None = None) -> bool:
    """Wait until ``run_dir`` has no live driver, and the process of the last one seen
    here (or ``seen`` by the caller before: it may have ended the run since) has exited
    too (it ends the run, then the interpreter); False if one is still there after
    ``timeout`` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    last = seen
    while True:
        live = driver(run_dir)
        last = live or last
        if live is None and (last is None or last["host"] != socket.gethostname()
                             or not _alive(last["pid"], last["host"], None)):
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(POLL)


def stop(run_dir: str | os.PathLike[str], timeout: float | None = None) -> dict[str, Any] | None:
    """Stop the run's driver as Ctrl-C does (SIGTERM: it stops its workers, records what
    they finished, and the same command resumes); return once it has exited.

    Returns the driver that was stopped, or None if none was running.

    Raises:
        ConveyorError: the driver runs on another host.
        TimeoutError: it is still running ``timeout`` seconds after SIGTERM.
    """
    live = driver(run_dir)
    if live is None:
        return None
    if live["host"] != socket.gethostname():
        raise ConveyorError(f"the driver of {run_dir} runs on {live['host']} (pid "
                            f"{live['pid']}): stop it there")
    try:
        os.kill(live["pid"], signal.SIGTERM)
    except ProcessLookupError:  # it ended meanwhile
        pass
    if not wait(run_dir, timeout):
        raise TimeoutError(f"the driver of {run_dir} (pid {live['pid']}) is still running "
                           f"{timeout:g} s after SIGTERM")
    return live
