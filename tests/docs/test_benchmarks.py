"""Every docs benchmark runs once in --quick mode and prints its one JSON line, so none rots.

Only the shape is checked here: timing targets live in the benchmarks, never in tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name,rate", [("docs_extract", "pages_per_s"),
                                       ("docs_ocr", "pages_per_s"),
                                       ("docs_embed", "chunks_per_s"),
                                       ("docs_onnx", "chunks_per_s")])
def test_benchmark_quick_prints_one_json_line(name, rate):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / f"{name}.py"), "--quick"],
                         capture_output=True, text=True, env=env, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1, out.stdout
    record = json.loads(lines[0])
    assert record["bench"] == name and record["quick"] is True
    assert record[f"conveyor_{rate}"] > 0 and record[f"peer_{rate}"] > 0
    assert record["peer"] and record["target_ratio"] > 0
    assert record["ratio"] == pytest.approx(record[f"conveyor_{rate}"] / record[f"peer_{rate}"],
                                            rel=0.02)
