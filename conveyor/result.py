"""The view of a run directory: counts, failures and outputs, read from the ledger.

:class:`RunResult` reads the ledger read-only, so the same view works from the
process that ran the pipeline, from another process while it runs, and after.
It is also the handle of a detached run (``pipe.run(detach=True)``): its
driver's state, ``wait()`` and ``stop()``, from any process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from . import codec, rundir, runstate
from .errors import LedgerError
from .ledger.base import STATUSES
from .ledger.sqlite import SqliteLedger
from .observe.usage import StageUsage, read_usage
from .observe.usage import warnings as usage_warnings
from .store import Store

SPILLED = "spilled:"  # ledger meta: bytes a group's partition files took, last time
SETUPS = "setups:"  # ledger meta: [workers set up, their setup() seconds] of a stage, last run


class RunResult:
    """What a run produced. Obtain one from :meth:`Pipeline.run` or :func:`open_run`."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        if not rundir.is_run(self.run_dir):
            raise LedgerError(f"{self.run_dir} is not a conveyor run directory "
                              f"(no {rundir.LEDGER})")
        self._ledger = SqliteLedger(rundir.ledger(self.run_dir), readonly=True)
        self._store = Store(self.run_dir)

    def __repr__(self) -> str:
        return f"RunResult({str(self.run_dir)!r}, ok={self.ok})"

    @property
    def ledger(self) -> SqliteLedger:
        """The run's ledger, opened read-only."""
        return self._ledger

    @property
    def inputs(self) -> dict[str, Any] | None:
        """What the last run found of its inputs: added, changed, unchanged, missing."""
        raw = self._ledger.get_meta("inputs")
        return json.loads(raw) if raw else None

    @property
    def pipeline(self) -> str | None:
        """The name of the pipeline that ran here."""
        return self._ledger.get_meta("pipeline")

    @property
    def stages(self) -> list[str]:
        """Stage names in the order the pipeline declares them."""
        order = self._ledger.get_meta("stages")
        return order.split(",") if order else sorted(self._ledger.stage_fingerprints())

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        """Items per status per stage, every status present (zeros included)."""
        raw = self._ledger.counts()
        return {stage: {status: raw.get(stage, {}).get(status, 0) for status in STATUSES}
                for stage in self.stages}

    @property
    def spilled(self) -> dict[str, int]:
        """Bytes each group stage's partition files took when it last ran."""
        found = {}
        for name in self.stages:
            raw = self._ledger.get_meta(SPILLED + name)
            if raw is not None:
                found[name] = int(raw)
        return found

    @property
    def setups(self) -> dict[str, dict[str, Any]]:
        """Per stage, how many workers ran its ``setup()`` in the last run and the mean
        seconds it took (``setup_s``; a fused group's workers set up all its stages)."""
        found = {}
        for name in self.stages:
            raw = self._ledger.get_meta(SETUPS + name)
            if raw is not None:
                count, seconds = json.loads(raw)
                found[name] = {"setups": count,
                               "setup_s": round(seconds / count, 3) if count else None}
        return found

    @property
    def ok(self) -> bool:
        """True when every item reached ``done`` or ``routed-out``."""
        return all(c["failed"] == c["pending"] == c["running"] == 0
                   for c in self.counts.values())

    def usage(self) -> dict[str, StageUsage]:
        """Per stage, what it declared (``cpus``, ``ram``) and what the last run's calls
        used (mean cores while busy, peak RSS); see :mod:`conveyor.observe.usage`."""
        return read_usage(self.run_dir)

    @property
    def warnings(self) -> list[str]:
        """Stages whose declarations the last run outgrew, with the figure and what to
        declare instead (``cpus`` too low, or a peak near ``ram``)."""
        return usage_warnings(self.usage())

    def failures(self, stage: str | None = None) -> list[dict[str, Any]]:
        """Failed items: ``stage``, ``key``, ``error``, ``traceback``, ``attempts``."""
        return self._ledger.failures(stage)

    def outputs(self, stage: str) -> Iterator[tuple[str, Any]]:
        """``(key, value)`` of every output of ``stage``, ordered by key."""
        if stage not in self.stages:
            raise KeyError(f"this run has no stage {stage!r}; it has {', '.join(self.stages)}")
        for key, data, ref in self._ledger.outputs(stage):
            yield key, codec.decode(self._store.get(data, ref))

    def output(self, stage: str) -> Any:
        """The single output of ``stage`` (a reduce); raises if it has not exactly one."""
        values = [value for _, value in self.outputs(stage)]
        if len(values) != 1:
            raise LookupError(f"stage {stage!r} has {len(values)} outputs, not one")
        return values[0]

    def summary(self) -> str:
        """One line per stage: done, failed, routed-out, pending."""
        lines = []
        for stage, c in self.counts.items():
            parts = [f"{c['done']} done"]
            for status in ("routed-out", "failed", "pending", "running"):
                if c[status]:
                    parts.append(f"{c[status]} {status}")
            lines.append(f"{stage}: {', '.join(parts)}")
        return "\n".join(lines)

    # -- the driver: a detached run's handle, or any run seen from another process ---------

    @property
    def pid(self) -> int | None:
        """The pid of the run's driver: the live one, else the last detached one."""
        live = runstate.driver(self.run_dir)
        return live["pid"] if live else runstate.read_json(self.run_dir / rundir.DRIVER).get("pid")

    def status(self) -> dict[str, Any]:
        """Whether the run is running (its driver's pid, host and since), stopped,
        finished (ok or not) or crashed, and its exit code; see :mod:`conveyor.runstate`."""
        return runstate.state(self.run_dir, lambda: self.ok)

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait until the run's driver has exited; its exit code (0 ok, 1 failed items,
        2 an error, 130 stopped or crashed: rerun to resume).

        Raises:
            TimeoutError: the driver still runs after ``timeout`` seconds.
        """
        if not runstate.wait(self.run_dir, timeout):
            raise TimeoutError(f"the run in {self.run_dir} is still running after "
                               f"{timeout:g} s")
        return self.status()["exit_code"]

    def stop(self, timeout: float | None = None) -> int | None:
        """Stop the run as Ctrl-C does (nothing lost; running it again resumes) and wait
        until its driver has exited; the exit code as :meth:`wait`'s."""
        runstate.stop(self.run_dir, timeout)
        return self.status()["exit_code"]

    def close(self) -> None:
        self._ledger.close()

    def __enter__(self) -> "RunResult":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_run(run_dir: str | os.PathLike[str]) -> RunResult:
    """The result view of a run directory, from any process, during or after a run."""
    return RunResult(run_dir)
