"""Every example in examples/ runs, and does what its docstring says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
