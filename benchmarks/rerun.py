"""rerun: the time to run a finished 100,000-item run again (everything reused). Target: 2 s."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import emit, machine, parser
from noop import pipe


def main() -> None:
    args = parser(__doc__).parse_args()
    n = 2_000 if args.quick else 100_000
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="bench-rerun-")) / "run"
    cpus = machine()["cpus"]
    start = time.perf_counter()
    assert pipe.run(range(n), run_dir=run_dir, cpus=cpus).ok
    first = time.perf_counter() - start
    start = time.perf_counter()
    result = pipe.run(range(n), run_dir=run_dir, cpus=cpus)
    again = time.perf_counter() - start
    assert result.ok
    emit("rerun", n=n, first_run_s=round(first, 2), rerun_s=round(again, 3), bound_s=2.0,
         ratio=round(again / 2.0, 3))


if __name__ == "__main__":
    main()
