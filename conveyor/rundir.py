"""The run directory: every file and folder name it holds, in one place.

::

    RUN_DIR/
      ledger.db                the SQLite ledger (ledger.db-wal, -shm beside it)
      lock                     flock of the driver that holds the run
      events.jsonl             the event stream (start, workers, ticks, failures, end)
      events.last              where in it the last run began (byte offset, start time)
      store.url                where large values live, if not here (--store)
      values/ab/<digest>.json  values too large to keep inline in the ledger
      artifacts/STAGE/KEY/     an item's own files (ctx.output_dir)
      gather/STAGE.jsonl       a reduce's input, written when it runs
      gather/STAGE/part-N.tsv  a group's partition: group key <tab> value, sorted by key
      side/STAGE.db            a stage read as a side input: key -> value, for lookups
      logs/GROUP.log           a worker group's stdout and stderr
      logs/GROUP.log.1         the piece before, once GROUP.log grew past 64 MiB
      bench.json               per-stage figures of a --bench run
      driver.json              a detached driver: pid, host, since, its command
      driver.log               a detached driver's stdout and stderr (driver.log.1 too)
      exit.json                a detached driver's exit code, written as it ends
      intake.json              while a run takes its inputs in: how many it has read
      detached.pkl             what pipe.run(detach=True) hands its detached driver
      report.html              `conveyor report`'s default output

Only names live here, and the helpers that build their paths; what each file
holds is the business of the module that writes it. A run directory written
by an earlier version of conveyor has the same names.
"""

from __future__ import annotations

import os
from pathlib import Path

LEDGER = "ledger.db"
LOCK = "lock"
EVENTS = "events.jsonl"
EVENTS_LAST = "events.last"
STORE_URL = "store.url"
VALUES = "values"
ARTIFACTS = "artifacts"
GATHER = "gather"
SIDE = "side"
LOGS = "logs"
BENCH = "bench.json"
REPORT = "report.html"
DRIVER = "driver.json"
DRIVER_LOG = "driver.log"
EXIT = "exit.json"
INTAKE = "intake.json"
DETACHED = "detached.pkl"

PathLike = str | os.PathLike[str]


def ledger(run_dir: PathLike) -> Path:
    return Path(run_dir) / LEDGER


def is_run(run_dir: PathLike) -> bool:
    """Whether ``run_dir`` holds a run (its ledger)."""
    return ledger(run_dir).exists()


def value_ref(digest: str) -> str:
    """A large value's reference, relative to the run dir (or the store URL)."""
    return f"{VALUES}/{digest[:2]}/{digest}.json"


def gather_ref(stage: str) -> str:
    """The reference of reduce ``stage``'s input file, relative to the run dir."""
    return f"{GATHER}/{stage}.jsonl"


def group_dir(stage: str) -> str:
    """The folder of a group stage's partition files, relative to the run dir."""
    return f"{GATHER}/{stage}"


def partition_ref(stage: str, part: int) -> str:
    """The reference of partition ``part`` of group ``stage``, relative to the run dir."""
    return f"{group_dir(stage)}/part-{part}.tsv"


def side_ref(stage: str) -> str:
    """The lookup file of ``stage`` read as a side input, relative to the run dir."""
    return f"{SIDE}/{stage}.db"


def artifacts(run_dir: PathLike, stage: str, name: str) -> Path:
    """An item's folder for its own files (``name`` already made safe for a path)."""
    return Path(run_dir) / ARTIFACTS / stage / name


def log(run_dir: PathLike, group: str) -> Path:
    """The log file of a worker group's processes."""
    return Path(run_dir) / LOGS / f"{group}.log"
