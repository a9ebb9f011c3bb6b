"""Every example in examples/ runs, and does what its docstring says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conveyor import open_run

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_textstats_finds_each_topic_and_reuses_everything_on_a_second_run(tmp_path):
    run_dir = tmp_path / "run"
    first = subprocess.run([sys.executable, str(EXAMPLES / "textstats.py"), str(run_dir)],
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    for query, topic in (("galaxy", "astronomy"), ("garlic", "cooking"), ("anchor", "sailing"),
                         ("magma", "geology")):
        line = next(line for line in first.stdout.splitlines() if f"'{query}'" in line)
        assert topic in line and line.count(topic) == 3, line
    assert "split: 12 done" in first.stdout and "whole: 12 done" in first.stdout
    second = subprocess.run([sys.executable, str(EXAMPLES / "textstats.py"), str(run_dir)],
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 0
    assert "worker_start" not in (run_dir / "events.jsonl").read_text().split("run_start")[-1]


@pytest.mark.ray
def test_slurm_example_pipeline_runs_on_a_ray_cluster_and_its_script_parses(ray_instance,
                                                                            tmp_path):
    script = EXAMPLES / "slurm" / "run.sbatch"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    address = ray_instance.get_runtime_context().gcs_address
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "conveyor", "run", f"{EXAMPLES / 'slurm' / 'pipeline.py'}:pipe",
         "one two", "three four five", "six", "--run-dir", str(run_dir), "--executor", "ray",
         "--address", address, "-q"], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open_run(run_dir) as result:
        summary = result.output("summary")
        assert summary["docs"] == 3 and summary["score"] == 2 * 6
        devices = {d["device"] for _, d in result.outputs("Score")}
        assert devices == {"0"}, devices  # Ray gave the GPU stage its (declared) device
