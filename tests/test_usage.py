"""Declared versus used: a stage that burns more CPU than it declares, or nears its ram,
is named at the end of the run, in ``conveyor status --json`` and in the report."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from rich.console import Console

from conveyor import Pipeline
from conveyor.observe.progress import ProgressModel, plain_lines, render_table
from conveyor.observe.usage import StageUsage, suggest_cpus, suggest_ram

MiB = 2**20

# burn: fixed pure-Python work per item (CPU time, not sleep) while declaring a quarter CPU;
# rest: sleeps while declaring a whole one; grow: raises its RSS to 95 % of its ram.
PIPELINE = textwrap.dedent("""
    import time
    from conveyor import Pipeline

    pipe = Pipeline("usage")

    @pipe.stage(cpus=0.25)
    def burn(n):
        x = 0
        for i in range(2_500_000):
            x += i * i
        return n

    @pipe.stage(after=burn, cpus=1)
    def rest(n):
        time.sleep(0.1)
        return n

    @pipe.stage(after=rest, ram="192MiB")
    def grow(n):
        if n == 0:
            with open("/proc/self/statm") as fh:
                rss = int(fh.read().split()[1]) * 4096
            held = b"x" * (int(0.95 * 192 * 2**20) - rss)  # every page written: resident
            del held
        return n
""")


def conveyor(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "conveyor", *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})


@pytest.fixture(scope="module")
def made_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("usage")
    (root / "usagepipe.py").write_text(PIPELINE)
    run_dir = root / "run"
    proc = conveyor("run", f"{root / 'usagepipe.py'}:pipe", "--inputs-file",
                    str(_inputs(root)), "--run-dir", str(run_dir), "--cpus", "1", "-q")
    assert proc.returncode == 0, proc.stderr
    return run_dir, proc


def _inputs(root: Path) -> Path:
    path = root / "inputs.jsonl"
    path.write_text("".join(f"{n}\n" for n in range(12)))
    return path


def test_a_stage_that_burns_a_core_while_declaring_a_quarter_is_named(made_run):
    run_dir, proc = made_run
    status = json.loads(conveyor("status", str(run_dir), "--json").stdout)
    burn, rest = status["stages"]["burn"], status["stages"]["rest"]
    assert burn["declared"] == {"cpus": 0.25, "ram": None}
    # a busy loop runs > 1.25 × 0.25 cores even with two workers on each core
    assert burn["used"]["cores"] > 0.31 and burn["used"]["busy_s"] >= 1.0
    warned = [w for w in status["warnings"] if "'burn'" in w]
    assert len(warned) == 1 and "while declaring cpus=0.25" in warned[0]
    suggested = float(warned[0].rsplit("declare cpus=", 1)[1])
    assert suggested > 0.25
    # at the end of the run, on stderr, the same line: the figure and what to declare
    # (not re-formatted from the JSON's cores, which are rounded to 3 places first:
    # 0.99549 prints 1.00 on stderr and 0.995 -> 0.99 from the JSON)
    assert warned[0] in proc.stderr
    printed = float(warned[0].split(" used ", 1)[1].split(" cores", 1)[0])
    assert abs(printed - burn["used"]["cores"]) <= 0.0051
    # the sleeping stage was busy long enough to be judged, used next to nothing, is not named
    assert rest["used"]["busy_s"] >= 1.0 and rest["used"]["cores"] < 0.5
    assert not any("'rest'" in w for w in status["warnings"])
    assert "'rest'" not in proc.stderr


def test_a_stage_near_its_ram_is_named_with_a_bigger_ram(made_run):
    run_dir, proc = made_run
    grow = json.loads(conveyor("status", str(run_dir), "--json").stdout)["stages"]["grow"]
    assert grow["declared"]["ram"] == 192 * MiB
    assert 0.9 * 192 * MiB <= grow["used"]["peak_rss"] <= 192 * MiB
    assert "stage 'grow' peaked at" in proc.stderr and "declare ram=256MiB" in proc.stderr


def test_the_table_and_the_report_show_declared_next_to_used(made_run):
    run_dir, _ = made_run
    table = conveyor("status", str(run_dir)).stdout
    assert "cpu used/decl" in table and "/0.25" in table and "/ 192 MiB" not in table
    assert "192 MiB" in table
    report = json.loads(conveyor("report", str(run_dir), "--json").stdout)
    assert "overcommitted" in report["verdict"] and "stage 'burn' used" in report["verdict"]
    assert "stage 'rest'" not in report["verdict"]
    burn = next(s for s in report["stages"] if s["stage"] == "burn")
    assert burn["used"]["cores"] > 0.31 and burn["declared"]["cpus"] == 0.25
    html = (run_dir / "report.html").read_text()
    assert "CPUs used/declared" in html


def test_a_workers_peak_is_its_own_not_the_drivers(tmp_path):
    """Linux carries the parent's peak into ru_maxrss across exec; the worker's own
    high-water mark must not show the 300 MiB the driver holds."""
    held = b"x" * (300 * MiB)
    pipe = Pipeline("peak")

    @pipe.stage(cpus=1)
    def small(n: int) -> int:
        return n

    result = pipe.run([1, 2, 3], run_dir=tmp_path / "run", cpus=1)
    peak = result.usage()["small"].peak_rss
    assert peak is not None and 10 * MiB < peak < 200 * MiB
    assert result.warnings == []
    del held


def test_suggestions_round_to_what_a_person_would_declare():
    assert suggest_cpus(0.98, 0.25) == 1.0
    assert suggest_cpus(0.45, 0.25) == 0.5
    assert suggest_cpus(0.33, 0.25) == 0.5  # never the declaration that was too low
    assert suggest_cpus(3.4, 2) == 3.0
    assert suggest_ram(180 * MiB) == "256MiB"
    assert suggest_ram(int(1.9 * 2**30)) == "2.5GiB"


def test_only_enough_busy_time_is_judged():
    short = StageUsage("s", cpus=0.25, ram=0, call_s=0.5, cpu_s=0.5)
    assert short.cores == 1.0 and short.warnings() == []
    long = StageUsage("s", cpus=0.25, ram=0, call_s=2.0, cpu_s=2.0)
    assert long.warnings() == ["stage 's' used 1.00 cores while declaring cpus=0.25 (4.0×): "
                               "declare cpus=1"]
    within = StageUsage("s", cpus=1, ram=256 * MiB, call_s=9.0, cpu_s=10.0,
                        peak_rss=200 * MiB)
    assert within.warnings() == []


def test_the_live_table_and_lines_show_cpu_used_next_to_declared():
    model = ProgressModel(["burn", "rest"], cpus={"burn": 0.25, "rest": 1.0})
    model.update("burn", done=3, pending=9, running=4, failed=0, workers=4, cores=0.98)
    model.update("rest", done=3, pending=0, running=0, failed=0, workers=1)
    out = io.StringIO()
    Console(file=out, force_terminal=True, width=160, color_system=None).print(
        render_table(model))
    text = out.getvalue()
    assert "cpu used/decl" in text and "0.98/0.25" in text and "-/1" in text
    lines = plain_lines(model)
    assert "cpu used/declared 0.98/0.25" in lines[0] and "cpu used/declared -/1" in lines[1]


@pytest.mark.ray
def test_ray_actors_report_what_their_calls_used(ray_instance, tmp_path):
    pipe = Pipeline("ray-usage")

    @pipe.stage(cpus=0.25)
    def burn(n: int) -> int:
        x = 0
        for i in range(2_500_000):
            x += i * i
        return n

    result = pipe.run(list(range(12)), run_dir=tmp_path / "run", executor="ray")
    used = result.usage()["burn"]
    assert used.cores is not None and used.cores > 0.31 and used.call_s >= 1.0
    assert used.peak_rss is not None and used.peak_rss > 10 * MiB
    assert any("stage 'burn' used" in w for w in result.warnings)
