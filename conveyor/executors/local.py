"""The local executor: worker processes on this machine.

::

     driver process                                    worker processes
    ┌──────────────────────────────┐                 ┌─────────────────────────┐
    │ Driver loop (one thread)     │  socketpair     │ python -m conveyor.worker… │
    │   send(tasks) ───────────────┼────────────────▶│  reader thread: decode   │
    │   poll(): wait() on sockets ◀┼─────────────────┤  main thread: setup once,│
    │     results / ready / EOF    │  per worker     │  call stage, send results│
    └──────────────────────────────┘                 └─────────────────────────┘

Each worker is a fresh interpreter started with ``subprocess`` (never fork: the
driver holds SQLite handles and threads), with the environment the driver
computed (pinned thread counts, ``CUDA_VISIBLE_DEVICES``, the stage's ``env``)
so native libraries see it before they load. The stage is sent over the socket
with cloudpickle and the source lines of its code (see
:mod:`conveyor.worker.shipping`, so tracebacks show the line that raised),
along with the driver's ``sys.path`` so the user's modules import the same way.
A stage with its own Python environment starts through
:mod:`conveyor.worker.envshim` (which builds or finds the environment, then
execs its interpreter) and gets the driver's ``sys.path`` without the driver's
installed packages, which would shadow the environment's. A worker's stdout and
stderr go to ``<run_dir>/logs/<group>.log`` (a group is a stage, or stages
fused together). A worker dies with its driver (PDEATHSIG), so a ``kill -9`` of
the driver leaves no process behind. End of file on a worker's socket means it
exited; its exit status says how.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Mapping

from .. import envs, rundir
from ..ledger.base import Claim
from ..worker import shipping
from ..worker.protocol import (
    INIT,
    READY,
    RESULTS,
    SETUP_FAILED,
    STOP,
    TASKS,
    Running,
    Slot,
    from_wire,
)
from ..worker.runner import WorkerSpec
from .base import Event, Executor, Exited, Ready, Results, SetupFailed

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


@dataclass
class _Worker:
    proc: subprocess.Popen[bytes]
    conn: Connection
    slot: Slot


class LocalExecutor(Executor):
    """Worker processes on this machine; see the module docstring."""

    name = "local"
    knows_running = True

    def __init__(self, python: str | None = None) -> None:
        self.python = python or sys.executable  # for stages without an environment of their own
        self._attempt = uuid.uuid4().hex  # a stage's failed env build is not repeated in a run
        self._workers: dict[int, _Worker] = {}
        self._next_id = 0
        self._wake_r, self._wake_w = socket.socketpair()  # wakeup() from other threads
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    def start(self, spec: WorkerSpec, env: Mapping[str, str]) -> int:
        log = rundir.log(spec.run_dir, spec.group)
        log.parent.mkdir(parents=True, exist_ok=True)
        ours, theirs = socket.socketpair()
        slot, slot_fd = Slot.make()
        full_env = dict(os.environ)
        full_env.update(env)
        fds = [str(theirs.fileno()), str(slot_fd)]
        own = spec.python_env
        if own is None:
            command = [self.python, "-m", "conveyor.worker.process", *fds]
            path = list(sys.path)
            full_env["PYTHONPATH"] = os.pathsep.join(
                p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")) if p)
        else:  # see conveyor.worker.envshim: build or find the env, then exec its interpreter
            command = [sys.executable, "-m", "conveyor.worker.envshim", *fds, spec.group]
            path = envs.forwarded_path(sys.path)
            full_env["PYTHONPATH"] = envs.package_dir()
            full_env[envs.SPEC_VAR] = own.to_json()
            full_env[envs.ATTEMPT_VAR] = self._attempt
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                command, pass_fds=(theirs.fileno(), slot_fd), env=full_env,
                stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        theirs.close()
        os.close(slot_fd)  # the mapping stays
        conn = Connection(ours.detach())
        worker_id = self._next_id
        self._next_id += 1
        self._workers[worker_id] = _Worker(proc, conn, slot)
        self._send(worker_id, (INIT, shipping.dumps(spec), path, spec.targets()))
        return worker_id

    def send(self, worker: int, tasks: list[Claim]) -> None:
        self._send(worker, (TASKS, [tuple(task) for task in tasks]))  # see to_wire

    def _send(self, worker: int, msg: object) -> None:
        try:
            self._workers[worker].conn.send(msg)
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass  # it died; poll() reports the exit with its reason

    def wakeup(self) -> None:
        try:
            self._wake_w.send(b"!")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already pending

    def poll(self, timeout: float) -> list[Event]:
        by_conn = {w.conn: wid for wid, w in self._workers.items()}
        events: list[Event] = []
        for conn in wait([*by_conn, self._wake_r], timeout):
            if conn is self._wake_r:
                try:
                    while self._wake_r.recv(4096):
                        pass
                except (BlockingIOError, OSError):
                    pass
                continue
            wid = by_conn[conn]  # type: ignore[index]
            try:
                while conn.poll():  # type: ignore[union-attr]
                    events.append(_event(wid, conn.recv()))  # type: ignore[union-attr]
            except (EOFError, OSError):
                events.append(self._reap(wid))
        return events

    def _reap(self, wid: int) -> Exited:
        worker = self._workers.pop(wid)
        worker.conn.close()
        try:
            code = worker.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            worker.proc.kill()
            code = worker.proc.wait()
        return Exited(wid, describe_exit(code), worker.slot.read())

    def stop(self, worker: int, kill: bool = False) -> None:
        if worker not in self._workers:
            return
        if kill:
            try:
                self._workers[worker].proc.kill()
            except ProcessLookupError:
                pass
        else:
            self._send(worker, (STOP,))

    def pid(self, worker: int) -> int | None:
        w = self._workers.get(worker)
        return w.proc.pid if w else None

    def running(self, worker: int) -> Running | None:
        w = self._workers.get(worker)
        return w.slot.read() if w else None

    def workers(self) -> list[int]:
        return list(self._workers)


def _event(wid: int, msg: tuple) -> Event:  # type: ignore[type-arg]
    kind = msg[0]
    if kind == RESULTS:
        return Results(wid, from_wire(msg[1]), msg[2], msg[3])
    if kind == READY:
        return Ready(wid, msg[2])
    if kind == SETUP_FAILED:
        return SetupFailed(wid, msg[1], msg[2])
    raise ValueError(f"unknown message from worker {wid}: {kind!r}")


def describe_exit(code: int) -> str:
    """A person's words for a process exit status."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    if code == 0:
        return "exited"
    return f"exited with code {code}"
