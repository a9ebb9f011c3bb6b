"""overhead: three no-op stages, 20,000 items, durable ledger: items/s of the engine itself.

The peer is Ray Data on the same work in the same process run (three row-wise
no-op ``map`` calls over ``range(n)``, every row materialised), measured
after conveyor's run: *cold* is its first dataset after ``ray.init`` (not
timed), *warm* the same dataset built and run again. conveyor is timed from
``pipe.run`` to its return, start-up and durable ledger included. Targets
(issue 22): at least 1.0x Ray Data cold and 0.5x warm. ``--executor ray``
runs conveyor's actors on the Ray instance the peer then uses, started
first and, as for the peer, not timed (a cluster would be up; its start is
reported as ``ray_start_s``).

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

from common import NO_RAY, RayData, emit, machine, parser
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


def noop(row):
    return row


def ray_data(n: int, peer: RayData | None = None) -> dict:
    """Ray Data's items/s on the same work, cold then warm (see the module docstring), on
    ``peer``'s Ray instance or one started now."""
    peer = peer or RayData.start(machine()["cpus"])
    if peer is None:
        return {"ray_data": NO_RAY, "ray_data_cold_items_per_s": None,
                "ray_data_warm_items_per_s": None}
    try:
        cold, warm = (peer.rate(lambda: peer.ray.data.range(n).map(noop).map(noop).map(noop))
                      for _ in range(2))
    finally:
        peer.stop()
    return {"ray_version": peer.version, "ray_data_cold_items_per_s": round(cold),
            "ray_data_warm_items_per_s": round(warm)}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--items", type=int, default=20_000)
    args = p.parse_args()
    n = 500 if args.quick else args.items
    root = Path(args.run_dir or tempfile.mkdtemp(prefix="bench-overhead-"))
    floor = ledger_floor(n, root / "floor")
    started = ray = None
    if args.executor == "ray":
        start = time.perf_counter()
        ray = RayData.start(machine()["cpus"])
        started = round(time.perf_counter() - start, 3)
    rate = run(n, args.executor, root / "run")
    peer = ray_data(n, ray)  # last: Ray's processes outlive ray.shutdown() by a few seconds
    if started is not None:
        peer["ray_start_s"] = started
    cold, warm = peer["ray_data_cold_items_per_s"], peer["ray_data_warm_items_per_s"]
    emit("overhead", executor=args.executor, n=n, items_per_s=round(rate), durable_ledger=True,
         **peer, ratio=round(rate / cold, 3) if cold else None, target_ratio=1.0,
         ratio_warm=round(rate / warm, 3) if warm else None, target_ratio_warm=0.5,
         ledger_floor_items_per_s=round(floor), of_floor=round(rate / floor, 3))


if __name__ == "__main__":
    main()
