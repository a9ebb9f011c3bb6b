"""rerun: the time to run a finished 1,000,000-item run again (everything reused).

Target (issue 22): 3 s. ``--items`` chooses another size.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import emit, machine, parser
from noop import pipe

BOUND_S = 3.0  # a rerun of 1,000,000 reused items (issue 22)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--items", type=int, default=None, help="items of the run (1,000,000)")
    args = p.parse_args()
    n = args.items or (2_000 if args.quick else 1_000_000)
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="bench-rerun-")) / "run"
    cpus = machine()["cpus"]
    start = time.perf_counter()
    assert pipe.run(range(n), run_dir=run_dir, cpus=cpus).ok
    first = time.perf_counter() - start
    start = time.perf_counter()
    result = pipe.run(range(n), run_dir=run_dir, cpus=cpus)
    again = time.perf_counter() - start
    assert result.ok
    emit("rerun", n=n, first_run_s=round(first, 2), rerun_s=round(again, 3), bound_s=BOUND_S,
         ratio=round(again / BOUND_S, 3))


if __name__ == "__main__":
    main()
