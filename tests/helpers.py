"""Helpers for tests; importable from worker processes too (they get the driver's sys.path)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import psutil
import pytest

from conveyor.errors import LedgerError
from conveyor.ledger.sqlite import SqliteLedger

# crashkit is shared with benchmarks/killdriver.py; appended, not put first, so that no
# benchmark module shadows another of the same name
sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))
from crashkit import syncing_wal, unwatchable  # noqa: E402


def read_log(path: Path) -> list[str]:
    """Lines a stage appended to an execution log (one line per call)."""
    if not path.exists():
        return []
    return path.read_text().splitlines()


def append_log(path: str | os.PathLike[str], line: str) -> None:
    """Append one line atomically (O_APPEND), safe from several worker processes."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


class TcpProxy:
    """Forwards connections on a local port to ``target``; :meth:`cut` drops them all and
    refuses new ones (a store that went away mid-transfer), :meth:`restore` lets them in.

    ``cut_at=(b"PUT ", 2)`` cuts by itself when the second request starting with
    ``PUT`` arrives, before forwarding it: a failure at a known point of a transfer.
    """

    def __init__(self, target: tuple[str, int], cut_at: tuple[bytes, int] | None = None) -> None:
        self.target = target
        self.cut_at = cut_at
        self.requests = 0  # those that started with cut_at's prefix
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._open: list = []
        self._cut = False
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                if self._cut:
                    _drop(client)
                    continue
                upstream = socket.create_connection(self.target)
                self._open += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False),
                             daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, outbound: bool) -> None:
        try:
            while data := src.recv(65536):
                if outbound and self._trips(data):
                    self.cut()
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:  # shut down, not only closed: a close does not wake the other pump's recv,
            for s in (src, dst):  # and the peer would never see its connection end
                _drop(s)

    def _trips(self, data: bytes) -> bool:
        if self.cut_at is None or not data.startswith(self.cut_at[0]):
            return False
        with self._lock:
            self.requests += 1
            return self.requests >= self.cut_at[1]

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            for s in self._open:
                _drop(s)
            self._open = []

    def restore(self) -> None:
        with self._lock:
            self._cut, self.cut_at = False, None

    def close(self) -> None:
        self.cut()
        self._server.close()


def _drop(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


# -- killing a driver at a moment chosen by an event ---------------------------------------------

needs_wal_syncs = pytest.mark.skipif(unwatchable() is not None, reason=unwatchable() or "")


def done_count(ledger: Path, stage: str) -> int:
    """Rows ``stage`` has committed done, as any reader sees them."""
    try:
        with SqliteLedger(ledger, readonly=True) as view:
            return view.counts().get(stage, {}).get("done", 0)
    except LedgerError:  # the driver has not created the ledger's tables yet
        return 0


def done_rows(ledger: Path) -> set[tuple[str, str]]:
    """The (stage, key) rows committed done (or routed out: never to run), as any reader sees them."""
    try:
        with SqliteLedger(ledger, readonly=True) as view:
            return {(r["stage"], r["key"]) for r in view.rows()
                    if r["status"] in ("done", "routed-out")}
    except LedgerError:
        return set()


def gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for(check: Callable[[], bool], what: str, proc: subprocess.Popen, stderr: Path,
             pause: float) -> None:
    """Poll ``check`` until it holds; fail if the driver ``proc`` ends first."""
    while not check():
        if proc.poll() is not None:
            pytest.fail(f"the driver ended (exit {proc.returncode}) before {what}:\n"
                        f"{stderr.read_text()[-2000:]}")
        time.sleep(pause)


def kill_driver(proc: subprocess.Popen, stderr: Path, sync: bool) -> None:
    """SIGKILL the driver ``proc`` (if ``sync``, once it is inside a commit's fsync of the
    ledger's WAL), then wait until its workers are gone too."""
    if sync:  # a sync lasts a millisecond or so: look without pausing
        wait_for(lambda: syncing_wal(proc.pid), "a commit was caught", proc, stderr, pause=0)
    workers = psutil.Process(proc.pid).children(recursive=True)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 60  # a guard: they die with it (PDEATHSIG) at once
    while not all(gone(w.pid) for w in workers):
        assert time.monotonic() < deadline, "the killed driver's workers outlived it"
        time.sleep(0.01)


def log_offset(log: Path) -> int:
    """The execution log's length: lines past it were written later."""
    return log.stat().st_size if log.exists() else 0


class DoneAtKills:
    """What a run's kills found committed done, noted after each (see :meth:`note`)."""

    def __init__(self, ledger: Path, log: Path) -> None:
        self.ledger, self.log = ledger, log
        self.done: set[tuple[str, str]] = set()  # at the last kill
        self.lost: list[tuple[str, str]] = []  # done at one kill and not at the next
        self.done_at: dict[tuple[str, str], int] = {}  # row -> log length when first seen done

    def note(self) -> set[tuple[str, str]]:
        """Once a killed driver's workers are gone: note the execution log's length and the
        rows committed done, those no longer done as lost, and the log's length as the
        ``done_at`` of those newly done; returns the rows done."""
        offset = log_offset(self.log)
        done = done_rows(self.ledger)
        self.lost += sorted(self.done - done)
        for row in done - self.done:
            self.done_at[row] = offset
        self.done = done
        return done


def executions(log: Path, done_at: dict[tuple[str, str], int]
               ) -> tuple[dict[tuple[str, str], int], list[tuple[str, str]]]:
    """Count each (stage, key)'s executions in ``log`` (lines "stage key ..."), and list
    those that ran at or past the offset ``done_at`` gives for their row: the log's
    length when the row was first seen committed done."""
    runs: dict[tuple[str, str], int] = {}
    redone = []
    position = 0
    for line in log.read_bytes().splitlines(keepends=True):
        stage, key = line.decode().split()[:2]
        runs[(stage, key)] = runs.get((stage, key), 0) + 1
        if position >= done_at.get((stage, key), position + 1):
            redone.append((stage, key))
        position += len(line)
    return runs, redone
