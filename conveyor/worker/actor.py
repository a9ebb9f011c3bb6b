"""The worker side of the Ray executor (:mod:`conveyor.executors.ray`): a Ray actor.

Ray creates the actor where it has room (``placed()`` answers then); ``setup()``
comes when the driver has leased it a CPU, and loads the group (the user's modules
import then, after the pinned thread variables are set); ``run()`` takes a block of
tasks per call. The class is kept apart from the executor so that an actor's process
imports only what the worker side needs.

The stage's code (``setup()`` and every call) runs on one thread of the actor's own,
in the order the driver numbered the calls, not on the thread Ray hands a call to.
Ray spends 1-5 ms between one call of an actor and the next (the result sent back,
the next call taken in and decoded: benchmarks/hetero.py, B's calls on a busy
machine), during which a plain actor runs nothing; here Ray does that while the
thread runs the next call, which the driver has already queued. Ray's threads only
hand calls over, so Ray may take calls in and answer them in any order (an async
actor), while the stage's code still sees one thread and the order sent, as in a
local worker. A second thread loads each call's inputs as soon as it is handed over
(decodes them, runs a class stage's ``load()``) into a bounded inbox, as a local
worker's loader thread does, so the stage's thread finds them ready.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
import time
import traceback
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Mapping

from .. import rundir
from ..ledger.base import Claim
from . import shipping
from .inbox import Inbox
from .meter import Usage, peak_rss
from .protocol import READY, SETUP_FAILED, pin_torch
from .runner import GroupRunner


class Actor:
    """A GroupRunner held by a Ray actor: placed first, set up when the driver says."""

    def __init__(self, path: list[str]) -> None:
        sys.path[:0] = [p for p in path if p not in sys.path]  # the user's modules import
        self.broken = True  # until setup() has run: nothing is loaded or called
        self.calls = InOrder("conveyor-stage")  # setup() and the stage's calls
        self.ahead = InOrder("conveyor-prefetch")  # the calls' inputs, loaded ahead
        self.set_up = threading.Event()

    async def placed(self) -> None:
        """Answers once the actor has its place and process (see RayExecutor.start)."""

    async def setup(self, spec: bytes, env: Mapping[str, str]) -> tuple[Any, ...]:
        """Load the group and run the stages' setup(): the driver's call 0."""
        return await self.calls.run(0, self._setup, spec, env)

    async def run(self, number: int, block: list[list[Claim]]
                  ) -> tuple[list[Any], bool, Usage | None, float]:
        """Run the driver's call ``number`` (1, 2, ...): a block of tasks. Its inputs are
        loaded (decoded, the stage's ``load()`` run) while the calls before it run."""
        self.ahead.run(number - 1, self._load, block)
        return await self.calls.run(number, self._run, block)

    def _setup(self, spec: bytes, env: Mapping[str, str]) -> tuple[Any, ...]:
        """(READY, pid, seconds, host) or (SETUP_FAILED, error, traceback)."""
        try:
            os.environ.update(env)  # pinned threads: before any module reading them imports
            self.runner = GroupRunner(shipping.loads(spec))
            log_to(rundir.log(self.runner.spec.run_dir, self.runner.spec.group))
            try:
                seconds = self.runner.setup()  # the stages' setup() alone, as locally
            except BaseException as exc:
                return (SETUP_FAILED, *self.runner.setup_failed(exc))
            pin_torch(self.runner.spec.resources.threads)
            self.inbox = Inbox.ahead_of(self.runner)
            if not self.runner.loads:  # decoding inputs is conveyor's work, not the stage's
                self.runner.meter.exclude(self.ahead.thread)
            self.broken = False
            return (READY, os.getpid(), seconds, socket.gethostname())
        finally:
            self.set_up.set()

    def _load(self, block: list[list[Claim]]) -> None:
        """Load a call's tasks into the inbox, in order, within its bound."""
        self.set_up.wait()
        if self.broken:
            return
        try:
            for tasks in block:
                for task in tasks:
                    self.inbox.load(self.runner, task)
        except BaseException:  # not a task's error (those are in its Loaded): conveyor's
            traceback.print_exc()  # into the group's log
            self.inbox.put(None)  # the stage's thread fails the call, not waits for ever

    def _run(self, block: list[list[Claim]]) -> tuple[list[Any], bool, Usage | None, float]:
        """Records of a block of tasks (each list one call of the stage), in order, their
        files already durable; what the calls cost and the seconds they took."""
        if self.broken:
            return [], False, None, 0.0  # the driver already failed these with the setup error
        began = time.monotonic()
        records = []
        for tasks in block:
            loaded = [self.inbox.get() for _ in tasks]
            if None in loaded:
                raise RuntimeError("loading a call's inputs failed: see the group's log")
            assert [item.task.id for item in loaded] == [task.id for task in tasks]
            records.extend(self.runner.run(loaded))
        if self.runner.store.take_wrote():
            # Values are fsynced as written; files a stage wrote in its item folder are
            # not, and the driver may be on another machine: flush them here.
            self.runner.store.sync()
        return (records, False, (self.runner.meter.take(), peak_rss()),
                time.monotonic() - began)


class InOrder:
    """Calls run one at a time on a thread of their own, in the order of their numbers
    (0, 1, 2, ...), whatever order they are handed over in."""

    def __init__(self, name: str) -> None:
        self._handed = threading.Condition()
        self._waiting: dict[int, tuple[Callable[..., Any], tuple[Any, ...], Future]] = {}
        self._next = 0
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    def run(self, number: int, call: Callable[..., Any], *args: Any) -> asyncio.Future:
        """``call(*args)`` once the calls numbered before it have run; its outcome."""
        outcome: Future = Future()
        with self._handed:
            self._waiting[number] = (call, args, outcome)
            self._handed.notify()
        return asyncio.wrap_future(outcome)

    def _loop(self) -> None:
        while True:
            with self._handed:
                self._handed.wait_for(lambda: self._next in self._waiting)
                call, args, outcome = self._waiting.pop(self._next)
                self._next += 1
            try:
                outcome.set_result(call(*args))
            except BaseException as exc:  # the actor's code broke: the driver drops it
                outcome.set_exception(exc)


def log_to(path: Path) -> None:
    """Send this process's stdout and stderr to ``path``, as a local worker's are: the
    stage's prints end up in the run directory, whichever node the actor is on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
