"""overhead: three no-op stages, 20,000 items, durable ledger: items/s of the engine itself.

The bound is the issue's target, Ray Data's items/s on this kind of machine
(about 15k); peer_ray.py measures Ray Data on the same workload in the same
process run, for the ratio.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import emit, machine, parser
from noop import pipe


def run(n: int, executor: str, run_dir: Path) -> float:
    start = time.perf_counter()
    result = pipe.run(range(n), run_dir=run_dir, executor=executor, cpus=machine()["cpus"])
    wall = time.perf_counter() - start
    assert result.ok and result.counts["third"]["done"] == n
    return n / wall


def main() -> None:
    args = parser(__doc__).parse_args()
    n = 500 if args.quick else 20_000
    root = Path(args.run_dir or tempfile.mkdtemp(prefix="bench-overhead-"))
    rate = run(n, args.executor, root / "run")
    emit("overhead", executor=args.executor, n=n, items_per_s=round(rate),
         durable_ledger=True, target_items_per_s=15000, ratio=round(rate / 15000, 3))


if __name__ == "__main__":
    main()
