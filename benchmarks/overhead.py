"""overhead: three no-op stages, 20,000 items, durable ledger: items/s of the engine itself.

The bound is the issue's target, Ray Data's items/s on this kind of machine
(about 15k); peer_ray.py measures Ray Data on the same workload in the same
process run, for the ratio.

Also measured in the same process run: the *ledger floor*, the items/s of the
SQLite ledger alone writing what this run writes (each input, its claim, and
per item the three rows of the fused chain in batches, committed in groups)
with no workers and no engine. It is the most the engine could reach on this
machine while it keeps a durable row per (stage, item); ``of_floor`` is how
close it comes.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import emit, machine, parser
from noop import pipe

from conveyor.items import input_items
from conveyor.ledger.base import Output, Record, Status
from conveyor.ledger.sqlite import SqliteLedger
from conveyor.store import Store

CLAIM = 512  # about what one worker's window holds on this workload


def run(n: int, executor: str, run_dir: Path) -> float:
    start = time.perf_counter()
    result = pipe.run(range(n), run_dir=run_dir, executor=executor, cpus=machine()["cpus"])
    wall = time.perf_counter() - start
    assert result.ok and result.counts["third"]["done"] == n
    return n / wall


def ledger_floor(n: int, run_dir: Path) -> float:
    """items/s of the ledger alone doing this run's writes (see the module docstring)."""
    run_dir.mkdir(parents=True)
    store = Store(run_dir, fsync=False)
    ledger = SqliteLedger(run_dir / "ledger.db")
    start = time.perf_counter()
    ledger.add_inputs("first", ((key, store.put(data, digest))
                                for key, data, digest in input_items(range(n))))
    ledger.commit()
    done = 0
    while claims := ledger.claim("first", CLAIM, "w1", time.time()):
        records = []
        for c in claims:
            now = time.time()
            value = store.put(c.data or b"")
            records += [
                Record("first", c.key, c.id, Status.DONE, c.attempt, now, now,
                       [Output(c.key, value, ("second",))]),
                Record("second", c.key, None, Status.DONE, 1, now, now,
                       [Output(c.key, value, ("third",))]),
                Record("third", c.key, None, Status.DONE, 1, now, now, [Output(c.key, value)]),
            ]
        ledger.record(records, "w1")
        ledger.commit()
        done += len(claims)
    wall = time.perf_counter() - start
    assert done == n and ledger.counts()["third"]["done"] == n
    ledger.close()
    return n / wall


def main() -> None:
    args = parser(__doc__).parse_args()
    n = 500 if args.quick else 20_000
    root = Path(args.run_dir or tempfile.mkdtemp(prefix="bench-overhead-"))
    rate = run(n, args.executor, root / "run")
    floor = ledger_floor(n, root / "floor")
    emit("overhead", executor=args.executor, n=n, items_per_s=round(rate),
         durable_ledger=True, target_items_per_s=15000, ratio=round(rate / 15000, 3),
         ledger_floor_items_per_s=round(floor), of_floor=round(rate / floor, 3))


if __name__ == "__main__":
    main()
