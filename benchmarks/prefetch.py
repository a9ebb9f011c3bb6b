"""prefetch: does a class stage's load() overlap its calls?

One worker of a batch stage (batch_size 4) whose ``load(value)`` sleeps
5 ms per value (20 ms per batch: reading files) and whose ``__call__``
sleeps 20 ms per batch (the model). With the loads running ahead in the
worker's prefetch thread, a batch takes max(load, call), not their sum.
Bound: items / max(time in load, time in calls), both as measured in the
run (a sleep on a busy machine overshoots), so an ideal overlap scores 1.
Throughput is counted between the first and the last batch done, so the
worker's start is not in it. The same work with the reading done inside
``__call__`` (no overlap possible) runs too, as a peer.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import emit, parser

from conveyor import Item, Pipeline, open_run

BATCH = 4
LOAD_S = 0.020  # per batch, spread over its values
CALL_S = 0.020  # per batch

pipe = Pipeline("prefetch")


@pipe.stage(batch_size=BATCH, concurrency=1)
class Overlapped:
    def load(self, value):
        start = time.perf_counter()
        time.sleep(LOAD_S / BATCH)
        return time.perf_counter() - start

    def __call__(self, loads):
        start = time.perf_counter()
        time.sleep(CALL_S)
        call = (time.perf_counter() - start) / len(loads)
        return [{"load": load, "call": call} for load in loads]


serial = Pipeline("prefetch-serial")


@serial.stage(batch_size=BATCH, concurrency=1)
class Serial:
    def __call__(self, values):
        for _ in values:
            time.sleep(LOAD_S / BATCH)
        time.sleep(CALL_S)
        return [None for _ in values]


def steady_rate(pipeline: Pipeline, n: int, run_dir: Path, executor: str
                ) -> tuple[float, list]:
    """Items per second between the first and the last batch done; the outputs."""
    result = pipeline.run([Item(f"{i:06d}", i) for i in range(n)], run_dir=run_dir,
                          executor=executor)
    assert result.ok and sum(c["done"] for c in result.counts.values()) == n
    with open_run(run_dir) as done:
        ends = sorted(row["ended"] for row in done.ledger.rows())
        outputs = [value for _, value in done.outputs(pipeline.root().name)]
    first = ends[BATCH - 1]  # the first batch done
    return (n - BATCH) / (ends[-1] - first), outputs


def main() -> None:
    args = parser(__doc__).parse_args()
    n = 400 if args.quick else 4000
    root = Path(args.run_dir or tempfile.mkdtemp(prefix="bench-prefetch-"))
    rate, timings = steady_rate(pipe, n, root / "overlapped", args.executor)
    peer, _ = steady_rate(serial, n, root / "serial", args.executor)
    load = sum(t["load"] for t in timings)
    call = sum(t["call"] for t in timings)
    bound = n / max(load, call)
    emit("prefetch", executor=args.executor, n=n, batch=BATCH,
         load_ms_per_batch=round(load / n * BATCH * 1000, 2),
         call_ms_per_batch=round(call / n * BATCH * 1000, 2),
         items_per_s=round(rate, 2), bound_items_per_s=round(bound, 2),
         ratio=round(rate / bound, 3), target=0.90,
         serial_items_per_s=round(peer, 2), speedup=round(rate / peer, 3))


if __name__ == "__main__":
    main()
