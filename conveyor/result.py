"""The view of a run directory: counts, failures and outputs, read from the ledger.

:class:`RunResult` reads the ledger read-only, so the same view works from the
process that ran the pipeline, from another process while it runs, and after.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from . import codec, rundir
from .errors import LedgerError
from .ledger.base import STATUSES
from .ledger.sqlite import SqliteLedger
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

    def close(self) -> None:
        self._ledger.close()

    def __enter__(self) -> "RunResult":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_run(run_dir: str | os.PathLike[str]) -> RunResult:
    """The result view of a run directory, from any process, during or after a run."""
    return RunResult(run_dir)
