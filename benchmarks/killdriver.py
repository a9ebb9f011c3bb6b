"""killdriver: ``kill -9`` of the driver 10 times during a 200,000-item run, then resume.

Three no-op stages (benchmarks/noop.py's, fused into one worker) that each
append "stage key pid" to an execution log (O_APPEND), run by a real driver
process. Kill k of K waits until the last stage has k/(K+1) of the items
committed done (read from the ledger, read-only) and, for every other kill,
until the driver is blocked in the fsync of the ledger's WAL, a commit written
but not yet acknowledged (``/proc/PID/task/*/syscall``); then SIGKILL, and the
same command starts again. After each kill, once the driver's workers are
gone, the committed done rows and the log's length are noted.

Figures: inputs with no output at the last stage (lost), rows done at one kill
and not at the next (done rows lost), outputs recorded twice (duplicated),
executions logged after a kill of a row committed done before it
(re-executions of done items), the other repeated executions (re-executions
of items in flight at a kill: allowed), the drivers' wall time from the first
start to the end (kills and restarts included) and items/s, and the seconds
each start took to take in the inputs (from the run's events). Target (issue
22): 0 lost, 0 duplicated, 0 re-executions of done items. The peer, same
process run: the same items run once without a kill.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil
from common import emit, machine, parser
from crashkit import log_executions, syncing_wal, unwatchable

from conveyor import Item, Pipeline, open_run
from conveyor.errors import LedgerError
from conveyor.ledger.sqlite import SqliteLedger
from conveyor.observe.events import read_events

BENCHMARKS = str(Path(__file__).resolve().parent)
LOG = os.environ.get("KILLDRIVER_LOG", "/dev/null")

pipe = Pipeline("killdriver")


@pipe.stage
def first(x, ctx):
    log_executions(LOG, "first", [ctx.key])
    return x


@pipe.stage(after=first)
def second(x, ctx):
    log_executions(LOG, "second", [ctx.key])
    return x


@pipe.stage(after=second)
def third(x, ctx):
    log_executions(LOG, "third", [ctx.key])
    return x


def inputs(n: int) -> list[Item]:
    return [Item(f"i{i:07d}", i) for i in range(n)]


def drive(n: int, run_dir: str, cpus: float) -> None:
    """What the driver process runs: the same command each time."""
    pipe.run(inputs(n), run_dir=run_dir, cpus=cpus)


def start(n: int, run_dir: Path, log: Path, cpus: float) -> subprocess.Popen:
    code = (f"import sys; sys.path.insert(0, {BENCHMARKS!r}); import killdriver; "
            f"killdriver.drive({n}, {str(run_dir)!r}, {cpus})")
    return subprocess.Popen([sys.executable, "-c", code],
                            env={**os.environ, "KILLDRIVER_LOG": str(log)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def view(ledger: Path) -> SqliteLedger | None:
    """The ledger opened read-only, or None while the driver has not written its schema."""
    try:
        return SqliteLedger(ledger, readonly=True)
    except LedgerError:
        return None


def last_done(ledger: Path) -> int:
    """Items done at the last stage (a block's row counts its items)."""
    led = view(ledger)
    if led is None:
        return 0
    with led:
        return led.counts().get("third", {}).get("done", 0)


def kill_at(proc: subprocess.Popen, ledger: Path, done: int, on_sync: bool) -> bool:
    """SIGKILL the driver once ``done`` last-stage rows are committed (and, ``on_sync``, at
    its next fsync of the WAL); False if it finished first. Returns once its workers are
    gone."""
    while True:
        asked = time.perf_counter()
        if last_done(ledger) >= done:
            break
        if proc.poll() is not None:
            return False
        # a poll, not a wait for time: the count is the event. The count reads every row
        # of the ledger: at most a fifth of a core
        time.sleep(max(0.1, 4 * (time.perf_counter() - asked)))
    while on_sync and not syncing_wal(proc.pid):  # a sync lasts about a millisecond
        if proc.poll() is not None:
            return False
    workers = psutil.Process(proc.pid).children(recursive=True)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _, alive = psutil.wait_procs(workers, timeout=60)  # they die with it (PDEATHSIG)
    assert not alive, f"workers outlived their killed driver: {alive}"
    return True


def done_rows(ledger: Path) -> set[str]:
    """"stage key" of every item done (a block's items each)."""
    led = view(ledger)
    if led is None:
        return set()
    with led:
        return {f"{r['stage']} {r['key']}" for r in led.rows() if r["status"] == "done"}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--items", type=int, default=None, help="items (default 200,000)")
    p.add_argument("--kills", type=int, default=None, help="kills of the driver (default 10)")
    args = p.parse_args()
    if args.executor != "local":
        p.error("killdriver kills a local driver and its worker processes: --executor local")
    if why := unwatchable():
        p.error(f"killdriver {why}")
    n = args.items or (3_000 if args.quick else 200_000)
    kills = args.kills if args.kills is not None else (3 if args.quick else 10)
    base = Path(args.run_dir or tempfile.mkdtemp(prefix="bench-killdriver-"))
    cpus = machine()["cpus"]
    run_dir, log = base / "killed", base / "executions.log"
    ledger = run_dir / "ledger.db"

    done_at: dict[str, int] = {}  # "stage key" -> the log's length when first seen done
    vanished = 0  # rows done at one kill and not at the next
    previous: set[str] = set()
    wall = 0.0
    landed = 0
    for k in range(1, kills + 1):
        begun = time.perf_counter()
        proc = start(n, run_dir, log, cpus)
        killed = kill_at(proc, ledger, k * n // (kills + 1), on_sync=k % 2 == 0)
        wall += time.perf_counter() - begun
        if not killed:  # it finished before this kill could land
            assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
            break
        landed += 1
        offset = log.stat().st_size if log.exists() else 0
        done = done_rows(ledger)
        vanished += len(previous - done)
        for row in done - previous:
            done_at[row] = offset
        previous = done
    else:
        begun = time.perf_counter()
        proc = start(n, run_dir, log, cpus)
        _, err = proc.communicate()
        wall += time.perf_counter() - begun
        assert proc.returncode == 0, err.decode()[-2000:]

    with open_run(run_dir) as result:
        keys = Counter(key for key, _ in result.outputs("third"))
    lost = sum(1 for item in inputs(n) if item.key not in keys)
    duplicated = sum(c - 1 for c in keys.values())
    runs: Counter[str] = Counter()
    redone = 0
    position = 0
    with open(log, "rb") as fh:
        for line in fh:
            row = line.decode().rsplit(" ", 1)[0]
            runs[row] += 1
            if position >= done_at.get(row, position + 1):
                redone += 1
            position += len(line)
    in_flight = sum(runs.values()) - len(runs) - redone
    # what each start spent taking the inputs in again (a resume compares all of them)
    prepare, starts, began = [], 0, None
    for event in read_events(run_dir):
        if event["event"] == "run_start":
            starts, began = starts + 1, event["t"]
        elif event["event"] == "inputs" and began is not None:
            prepare.append(event["t"] - began)
            began = None

    clean_dir = base / "clean"  # the peer: the same items, not killed
    begun = time.perf_counter()
    proc = start(n, clean_dir, base / "clean.log", cpus)
    _, err = proc.communicate()
    clean = time.perf_counter() - begun
    assert proc.returncode == 0, err.decode()[-2000:]

    emit("killdriver", items=n, kills=kills, kills_landed=landed, lost=lost,
         done_rows_lost=vanished, duplicated_outputs=duplicated, reexecuted_done=redone,
         reexecuted_in_flight=in_flight, executions=sum(runs.values()),
         wall_s=round(wall, 2), items_per_s=round(n / wall, 1), starts=starts,
         prepare_s_per_start=round(sum(prepare) / len(prepare), 2),
         uninterrupted_s=round(clean, 2), uninterrupted_items_per_s=round(n / clean, 1),
         target={"lost": 0, "duplicated_outputs": 0, "reexecuted_done": 0})


if __name__ == "__main__":
    main()
