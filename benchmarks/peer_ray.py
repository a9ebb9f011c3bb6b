"""peer_ray: the hetero and overhead workloads on Ray Data and on conveyor, in one process run.

Ray is started once (``ray.init``, not timed); each Ray Data pipeline is timed
from building the dataset to having every row materialised. conveyor is timed
from ``pipe.run`` to its return, startup and durable ledger included. Prints
one JSON line per workload with both rates and conveyor/Ray Data.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import burn, emit, machine, parser

import hetero
import overhead

A_COST, B_COST, C_COST = hetero.A_COST, hetero.B_COST, hetero.C_COST


def ray_a(row):
    burn(A_COST)
    return row


def ray_b(row):
    time.sleep(B_COST)
    return row


def ray_c(row):
    burn(C_COST)
    return row


def ray_noop(row):
    return row


def timed(build) -> float:
    start = time.perf_counter()
    ds = build()
    count = ds.materialize().count()
    wall = time.perf_counter() - start
    return count / wall


def main() -> None:
    args = parser(__doc__).parse_args()
    n_hetero, n_overhead = (60, 500) if args.quick else (1000, 20_000)
    cores = machine()["cpus"]
    root = Path(args.run_dir or tempfile.mkdtemp(prefix="bench-peer-"))

    import ray
    import ray.data

    ray.init(num_cpus=cores, num_gpus=1, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        ray_hetero = timed(lambda: ray.data.range(n_hetero).map(ray_a)
                           .map(ray_b, num_gpus=1).map(ray_c))
        ray_overhead = timed(lambda: ray.data.range(n_overhead).map(ray_noop).map(ray_noop)
                             .map(ray_noop))
    finally:
        ray.shutdown()

    start = time.perf_counter()
    result = hetero.build(None).run(range(n_hetero), run_dir=root / "hetero", cpus=cores, gpus=1)
    ours_hetero = n_hetero / (time.perf_counter() - start)
    assert result.ok
    ours_overhead = overhead.run(n_overhead, "local", root / "overhead")

    bound = min(1 / B_COST, cores / (A_COST + C_COST))
    emit("peer_ray", workload="hetero", n=n_hetero, conveyor_items_per_s=round(ours_hetero, 2),
         ray_data_items_per_s=round(ray_hetero, 2), ratio=round(ours_hetero / ray_hetero, 3),
         conveyor_of_bound=round(ours_hetero / bound, 3),
         ray_data_of_bound=round(ray_hetero / bound, 3), ray_version=ray.__version__)
    emit("peer_ray", workload="overhead", n=n_overhead, conveyor_items_per_s=round(ours_overhead),
         ray_data_items_per_s=round(ray_overhead), ratio=round(ours_overhead / ray_overhead, 3),
         target_ratio=1.0, ray_version=ray.__version__)


if __name__ == "__main__":
    main()
