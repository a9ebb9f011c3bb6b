"""first: time from pipe.run to the first item done at the last stage (durably). Target: 1 s.

A reader thread polls the ledger read-only, as `conveyor status` would, so
the figure includes the commit that makes the item durable.
"""

from __future__ import annotations

import sqlite3
import tempfile
import threading
import time
from pathlib import Path

from common import emit, machine, parser
from noop import pipe


def watch(ledger: Path, start: float, found: list[float], stop: threading.Event) -> None:
    while not stop.is_set():
        if ledger.exists():
            try:
                db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
                row = db.execute("SELECT 1 FROM items WHERE stage='third' AND status='done' "
                                 "LIMIT 1").fetchone()
                db.close()
                if row:
                    found.append(time.perf_counter() - start)
                    return
            except sqlite3.Error:
                pass
        time.sleep(0.002)


def main() -> None:
    args = parser(__doc__).parse_args()
    n = 200 if args.quick else 1000
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="bench-first-")) / "run"
    found: list[float] = []
    stop = threading.Event()
    start = time.perf_counter()
    thread = threading.Thread(target=watch, args=(run_dir / "ledger.db", start, found, stop))
    thread.start()
    result = pipe.run(range(n), run_dir=run_dir, executor=args.executor,
                      cpus=machine()["cpus"])
    stop.set()
    thread.join()
    assert result.ok and found
    emit("first", executor=args.executor, n=n, first_done_s=round(found[0], 3), bound_s=1.0,
         ratio=round(found[0] / 1.0, 3))


if __name__ == "__main__":
    main()
