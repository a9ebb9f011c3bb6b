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

Since issue 22 a run this large is taken in as blocks of items
(:mod:`conveyor.ledger.blocks`): once the fused chain's pace is known, a
worker runs a block of hundreds of items per task and the ledger writes a row
per (stage, block). ``ledger_rows`` counts the ledger's rows at the end, to show it.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from contextlib import closing
from pathlib import Path

from common import NO_RAY, RayData, emit, machine, parser
from noop import pipe


def run(n: int, executor: str, run_dir: Path) -> tuple[float, int]:
    """items/s of the run, and the rows its ledger holds at the end."""
    start = time.perf_counter()
    result = pipe.run(range(n), run_dir=run_dir, executor=executor, cpus=machine()["cpus"])
    wall = time.perf_counter() - start
    assert result.ok and result.counts["third"]["done"] == n
    with closing(sqlite3.connect(run_dir / "ledger.db")) as db:
        (rows,) = db.execute("SELECT count(*) FROM items").fetchone()
    return n / wall, rows


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
    started = ray = None
    if args.executor == "ray":
        start = time.perf_counter()
        ray = RayData.start(machine()["cpus"])
        started = round(time.perf_counter() - start, 3)
    rate, rows = run(n, args.executor, root / "run")
    peer = ray_data(n, ray)  # last: Ray's processes outlive ray.shutdown() by a few seconds
    if started is not None:
        peer["ray_start_s"] = started
    cold, warm = peer["ray_data_cold_items_per_s"], peer["ray_data_warm_items_per_s"]
    emit("overhead", executor=args.executor, n=n, items_per_s=round(rate), durable_ledger=True,
         **peer, ratio=round(rate / cold, 3) if cold else None, target_ratio=1.0,
         ratio_warm=round(rate / warm, 3) if warm else None, target_ratio_warm=0.5,
         ledger_rows=rows)


if __name__ == "__main__":
    main()
