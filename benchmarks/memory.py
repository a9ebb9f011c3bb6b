"""memory: the driver's peak RSS for the no-op pipeline at 100,000 vs 1,000,000 items.

Each size runs in a fresh process (so peaks do not mix) that reports its own
peak resident set size; the figure is the growth between the two sizes.
Target (issue 22): at most 100 MB. ``--small``/``--large`` choose other sizes.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from common import emit, machine, parser

BOUND_MB = 100  # growth from the small run to the large one (issue 22)


def child(n: int, run_dir: str, executor: str) -> None:
    from noop import pipe

    result = pipe.run(range(n), run_dir=run_dir, cpus=machine()["cpus"], executor=executor)
    assert result.ok
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"n": n, "peak_mb": peak_kb / 1024}))


def measure(n: int, root: Path, executor: str) -> float:
    out = subprocess.run([sys.executable, __file__, "--child", str(n), str(root / f"n{n}"),
                          executor], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(int(sys.argv[2]), sys.argv[3], sys.argv[4])
        return
    p = parser(__doc__)
    p.add_argument("--small", type=int, default=None, help="items of the small run (100,000)")
    p.add_argument("--large", type=int, default=None,
                   help="items of the large run (1,000,000)")
    args = p.parse_args()
    small, large = (1_000, 10_000) if args.quick else (100_000, 1_000_000)
    small, large = args.small or small, args.large or large
    root = Path(args.run_dir or tempfile.mkdtemp(prefix="bench-memory-"))
    a, b = measure(small, root, args.executor), measure(large, root, args.executor)
    emit("memory", executor=args.executor, small_n=small, large_n=large, small_peak_mb=round(a, 1),
         large_peak_mb=round(b, 1), growth_mb=round(b - a, 1), bound_mb=BOUND_MB,
         ok=b - a <= BOUND_MB)


if __name__ == "__main__":
    main()
