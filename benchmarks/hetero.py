"""hetero: a CPU stage feeding a GPU stage feeding a CPU stage; can the GPU stay busy?

A burns 10 ms of CPU per item, B holds one declared GPU for 20 ms per item
(a sleep: device time costs no host CPU), C burns 5 ms. Every stage keeps
the default declaration (cpus=1). Budget: the machine's cores, one GPU.
Bound: min(1 / 20 ms, cores / 15 ms) items/s. Also with batch_size=8 on B
(20 ms per item in the batch). Prints one JSON line per variant.

B's ``time.sleep(0.02)`` itself takes longer than 20 ms (the kernel wakes a sleeper
late: about 0.2 ms here), which no schedule can win back; the same sleep is timed
before the runs, and each line also gives the ratio to the bound with B's measured
call (``ratio_of_measured_bound``). The target is judged on ``ratio``.

``b_first_item_s``: when B's first item began, counted from the call to ``pipe.run``:
start-up (worker processes, imports, ``setup()``, A's first item) that a run of this
length pays once and no schedule wins back afterwards.

The peer, in the same process run: Ray Data on the same work (three row-wise
``map`` calls, the middle one with ``num_gpus=1``), timed from building the
dataset to every row materialised; ``ray.init`` is not timed (a cluster would
be up), its start-up is reported as ``ray_start_s``.

``--executor ray`` runs the same pipelines as Ray actors on that Ray instance,
sized like the budget.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import NO_RAY, RayData, burn, emit, machine, parser

from conveyor import Item, Pipeline

A_COST, B_COST, C_COST = 0.010, 0.020, 0.005


def build(batch: int | None) -> Pipeline:
    pipe = Pipeline("hetero")

    @pipe.stage
    def a(x):
        burn(A_COST)
        return x

    if batch:
        @pipe.stage(after=a, gpus=1, batch_size=batch)
        def b(xs):
            time.sleep(B_COST * len(xs))
            return xs
    else:
        @pipe.stage(after=a, gpus=1)
        def b(x):
            time.sleep(B_COST)
            return x

    @pipe.stage(after=b)
    def c(x):
        burn(C_COST)
        return x

    return pipe


def ray_a(row):
    burn(A_COST)
    return row


def ray_b(row):
    time.sleep(B_COST)
    return row


def ray_c(row):
    burn(C_COST)
    return row


def main() -> None:
    args = parser(__doc__).parse_args()
    n = 60 if args.quick else 1000
    cores = machine()["cpus"]
    bound = min(1 / B_COST, cores / (A_COST + C_COST))
    b_call = sleep_cost(10 if args.quick else 100)
    measured = min(1 / b_call, cores / (A_COST + C_COST))
    root = Path(args.run_dir or tempfile.mkdtemp(prefix="bench-hetero-"))
    peer = started = None
    if args.executor == "ray":  # conveyor's actors run on the Ray instance the peer uses
        peer, started = start_ray(cores)
    ours = []
    for batch in (None, 8):
        pipe = build(batch)
        began, start = time.time(), time.perf_counter()
        result = pipe.run([Item(str(i), i) for i in range(n)], run_dir=root / f"b{batch or 1}",
                          executor=args.executor, cpus=cores, gpus=1)
        wall = time.perf_counter() - start
        assert result.ok and result.counts["c"]["done"] == n
        b_first = min(row["started"] for row in result.ledger.rows("b")) - began
        ours.append({"batch_size": batch or 1, "seconds": round(wall, 3),
                     "items_per_s": round(n / wall, 2), "ratio": round(n / wall / bound, 3),
                     "ratio_of_measured_bound": round(n / wall / measured, 3),
                     "b_first_item_s": round(b_first, 3)})
    # The peer runs after conveyor: Ray's processes outlive ray.shutdown() by a few
    # seconds, and would compete with conveyor's workers.
    if peer is None:
        peer, started = start_ray(cores)
    figures: dict = {"ray_data": NO_RAY, "ray_data_items_per_s": None, "ray_data_of_bound": None}
    if peer is not None:
        rate = peer.rate(lambda: peer.ray.data.range(n).map(ray_a).map(ray_b, num_gpus=1)
                         .map(ray_c))
        figures = {"ray_start_s": started, "ray_version": peer.version,
                   "ray_data_items_per_s": round(rate, 2),
                   "ray_data_of_bound": round(rate / bound, 3)}
        peer.stop()
    for figure in ours:
        emit("hetero", executor=args.executor, n=n, **figure, bound_items_per_s=round(bound, 2),
             b_call_ms=round(b_call * 1000, 3), measured_bound_items_per_s=round(measured, 2),
             target=0.95, **figures)


def sleep_cost(n: int) -> float:
    """Seconds B's ``time.sleep(B_COST)`` takes here, the mean of ``n``."""
    start = time.perf_counter()
    for _ in range(n):
        time.sleep(B_COST)
    return (time.perf_counter() - start) / n


def start_ray(cores: int) -> tuple["RayData | None", float | None]:
    """Ray, started once (not timed: a cluster would be up), and how long its start took."""
    start = time.perf_counter()
    peer = RayData.start(cores, gpus=1)
    return peer, round(time.perf_counter() - start, 3) if peer else None


if __name__ == "__main__":
    main()
