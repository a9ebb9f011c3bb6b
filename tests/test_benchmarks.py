"""Every engine benchmark runs once with --quick, so none of them rots.

The figures of a quick run mean nothing (tiny sizes, a shared machine); what
is checked is that each benchmark runs to the end and prints its one JSON
line with the fields a reader compares.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

EXPECTED = {
    "hetero": {"items_per_s", "bound_items_per_s", "ratio", "target", "ray_data_items_per_s",
               "ray_data_of_bound", "b_first_item_s"},
    "cpu3": {"items_per_s", "bound_items_per_s", "ratio", "target"},
    "prefetch": {"items_per_s", "bound_items_per_s", "ratio", "target", "serial_items_per_s"},
    "overhead": {"items_per_s", "ray_data_cold_items_per_s", "ray_data_warm_items_per_s",
                 "ratio", "ratio_warm", "target_ratio", "durable_ledger", "ledger_rows"},
    "first": {"first_done_s", "bound_s", "ratio"},
    "rerun": {"rerun_s", "bound_s", "ratio"},
    "memory": {"executor", "growth_mb", "bound_mb", "small_peak_mb", "large_peak_mb"},
    "groups": {"group_values_per_s", "reduce_values_per_s", "ray_data_values_per_s", "ratio",
               "rss_growth_mb", "killed_partition", "partitions_run_twice"},
    "dataset": {"corpus", "documents", "kept", "rejected", "failed", "docs_per_s", "stages"},
    "dedupe": {"docs", "true_pairs", "docs_per_s", "conveyor", "datatrove_docs_per_s",
               "datatrove", "ratio"},
    "docs_expand": {"archives", "per_archive_docs_per_s", "single_item_docs_per_s", "ratio"},
    "killdriver": {"kills_landed", "lost", "done_rows_lost", "duplicated_outputs",
                   "reexecuted_done", "reexecuted_in_flight", "items_per_s",
                   "uninterrupted_items_per_s"},
    "serve": {"batched", "unbatched", "batching_speedup", "direct_p50_ms", "overhead_ms",
              "ratio"},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_benchmark_runs_and_prints_its_json_lines(name, tmp_path):
    check_benchmark(name, tmp_path)


@pytest.mark.ray
def test_hetero_runs_on_ray(tmp_path):
    pytest.importorskip("ray")
    for record in check_benchmark("hetero", tmp_path, "--executor", "ray"):
        assert record["executor"] == "ray" and record["ray_start_s"] > 0


def check_benchmark(name: str, tmp_path: Path, *args: str) -> list[dict]:
    """Run a benchmark with --quick; check its JSON lines and return them."""
    out = subprocess.run([sys.executable, str(BENCHMARKS / f"{name}.py"), "--quick",
                          "--run-dir", str(tmp_path), *args], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert lines, out.stdout
    for record in lines:
        assert record["bench"] == name
        if name == "groups":  # the killed partition, and only it, ran again
            assert record["partitions_run_twice"] == [record["killed_partition"]]
        if name == "killdriver":  # the guarantee holds at any size
            assert record["kills_landed"] >= 1
            assert record["lost"] == record["done_rows_lost"] == 0
            assert record["duplicated_outputs"] == record["reexecuted_done"] == 0
        assert EXPECTED[name] <= set(record), set(record)
        assert record["machine"]["cpus"] >= 1 and record["date"]
        assert record["machine"]["bytecode"] in ("cached", "source")
    return lines
