"""cpu3: three CPU stages of different cost; is every core busy?

Stages burn 2, 4 and 6 ms of CPU per item, each declared cpus=1 (the
default), on all cores. Bound: cores / (sum of costs) items/s.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import burn, emit, machine, parser

from conveyor import Item, Pipeline

COSTS = (0.002, 0.004, 0.006)

pipe = Pipeline("cpu3")


@pipe.stage
def light(x):
    burn(COSTS[0])
    return x


@pipe.stage(after=light)
def medium(x):
    burn(COSTS[1])
    return x


@pipe.stage(after=medium)
def heavy(x):
    burn(COSTS[2])
    return x


def main() -> None:
    args = parser(__doc__).parse_args()
    n = 100 if args.quick else 2000
    cores = machine()["cpus"]
    bound = cores / sum(COSTS)
    root = Path(args.run_dir or tempfile.mkdtemp(prefix="bench-cpu3-"))
    start = time.perf_counter()
    result = pipe.run([Item(str(i), i) for i in range(n)], run_dir=root / "run",
                      executor=args.executor, cpus=cores)
    wall = time.perf_counter() - start
    assert result.ok and result.counts["heavy"]["done"] == n
    emit("cpu3", executor=args.executor, n=n, seconds=round(wall, 3),
         items_per_s=round(n / wall, 2), bound_items_per_s=round(bound, 2),
         ratio=round(n / wall / bound, 3), target=0.90)


if __name__ == "__main__":
    main()
