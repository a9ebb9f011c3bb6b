"""``conveyor report`` as a user runs it: real runs, the real command in a subprocess.

README, "Seeing a run": "``conveyor report DIR`` writes one self-contained
HTML file: ... the cost per stage and per 1,000 items at prices per CPU-hour,
GB-hour and GPU-hour (defaults 0.04, 0.005 and 2.50; ``--price cpu=...
--price gpu=...``)". The report (conveyor/report.py) prices each worker's
declared resources for as long as it lived (``worker_start`` to
``worker_exit`` in events.jsonl); the expected costs here are computed from
those events and the prices given.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from html import unescape
from pathlib import Path

import pytest

from conveyor.observe.events import read_events

PIPELINE = textwrap.dedent("""
    from conveyor import Pipeline

    pipe = Pipeline("reportpipe")

    @pipe.stage(cpus=0.5, ram="256MiB")
    def prep(word):
        if word == "bad":
            raise ValueError("bad word")
        return word.upper()

    @pipe.stage(after=prep, cpus=1, gpus=1, ram="1GiB")
    def infer(word):
        return len(word)
""")
DEFAULTS = {"cpu": 0.04, "ram": 0.005, "gpu": 2.50}


def conveyor(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "1000"}  # rich wraps long paths at 80 columns otherwise
    return subprocess.run([sys.executable, "-m", "conveyor", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def made_run(tmp_path_factory) -> tuple[Path, Path]:
    """One run, with --bench: three words finish, "bad" fails at prep. (root, run_dir)"""
    root = tmp_path_factory.mktemp("report")
    (root / "reportpipe.py").write_text(PIPELINE)
    proc = conveyor("run", "reportpipe.py:pipe", "a", "bb", "ccc", "bad", "--run-dir", "run",
                    "--cpus", "2", "--gpus", "1", "--bench", "-q", cwd=root)
    assert proc.returncode == 1, proc.stderr  # one item failed
    return root, root / "run"


def expected_costs(run_dir: Path, prices: dict[str, float]) -> dict[str, float]:
    """Per stage: each of its workers' declared resources for its life, at ``prices``."""
    events = list(read_events(run_dir))
    start = max(i for i, e in enumerate(events) if e["event"] == "run_start")
    events = events[start:]
    end = next(e["t"] for e in reversed(events) if e["event"] == "run_end")
    lives: dict[int, dict] = {}
    for e in events:
        if e["event"] == "worker_start":
            lives[e["worker"]] = {**e, "end": end}
        elif e["event"] == "worker_exit" and e["worker"] in lives:
            lives[e["worker"]]["end"] = e["t"]
    costs: dict[str, float] = {}
    for w in lives.values():
        assert "+" not in w["group"]  # the two stages do not fuse: a group is a stage
        hourly = w["cpus"] * prices["cpu"] + w["ram"] / 2 ** 30 * prices["ram"] \
            + w["gpus"] * prices["gpu"]
        costs[w["group"]] = costs.get(w["group"], 0.0) + (w["end"] - w["t"]) / 3600 * hourly
    return costs


def money(x: float) -> str:
    return f"${x:,.4f}" if x < 1 else f"${x:,.2f}"


def stages_table(html: str) -> list[list[str]]:
    """The cells of the report's per-stage table, row by row (header first)."""
    section = html.split("<h2>Stages</h2>", 1)[1]
    table = section[:section.index("</table>")]
    return [[unescape(c) for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", table)]


def report_json(root: Path, *args: str) -> dict:
    proc = conveyor("report", "run", "--json", *args, cwd=root)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_report_writes_run_dir_report_html_by_default(made_run):
    root, run_dir = made_run
    (run_dir / "report.html").unlink(missing_ok=True)
    proc = conveyor("report", "run", cwd=root)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "report: run/report.html"
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert html.startswith("<!doctype html>")
    assert "<title>conveyor report — reportpipe</title>" in html
    # the verdict printed is the one in the page
    verdict = re.search(r'<p class="verdict" id="verdict">(.*?)</p>', html, re.S).group(1)
    assert " ".join(lines[1:]).split() == unescape(verdict).split()
    # self-contained: nothing is fetched
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    # the failure is listed
    assert "<td>prep</td><td>bad</td>" in html and "ValueError: bad word" in html


def test_report_o_writes_where_it_is_told_and_nowhere_else(made_run, tmp_path):
    root, run_dir = made_run
    (run_dir / "report.html").unlink(missing_ok=True)
    out = tmp_path / "elsewhere.html"
    proc = conveyor("report", "run", "-o", str(out), cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == f"report: {out}"
    assert out.read_text(encoding="utf-8").startswith("<!doctype html>")
    assert not (run_dir / "report.html").exists()
    longer = tmp_path / "longer.html"
    assert conveyor("report", "run", "--out", str(longer), cwd=root).returncode == 0
    assert longer.read_text(encoding="utf-8").startswith("<!doctype html>")


def test_json_figures_and_costs_at_default_prices(made_run):
    root, run_dir = made_run
    data = report_json(root)
    assert data["pipeline"] == "reportpipe"
    assert [(s["stage"], s["done"], s["failed"]) for s in data["stages"]] == [
        ("prep", 3, 1), ("infer", 3, 0)]
    assert set(data) == {"pipeline", "wall_s", "verdict", "total_cost", "cost_per_1000",
                         "stages", "setups"}
    assert all(set(s) == {"stage", "done", "failed", "busy", "utilisation", "cost",
                          "cost_per_1000", "spilled", "declared", "used"}
               for s in data["stages"])
    assert all(s["spilled"] is None for s in data["stages"])  # no group stage here
    expected = expected_costs(run_dir, DEFAULTS)
    for s in data["stages"]:
        assert s["cost"] == pytest.approx(expected[s["stage"]], rel=1e-12, abs=0)
        assert s["cost"] > 0
        assert s["cost_per_1000"] == pytest.approx(s["cost"] / s["done"] * 1000, rel=1e-12)
        assert 0 <= s["utilisation"] <= 1
    assert data["total_cost"] == pytest.approx(sum(s["cost"] for s in data["stages"]),
                                               rel=1e-12, abs=0)
    assert data["cost_per_1000"] == pytest.approx(data["total_cost"] / 4 * 1000, rel=1e-12)


def test_setups_per_stage_in_the_report_and_status(made_run):
    """Each worker that got ready ran its stage's setup once: the counts are the workers
    started per stage (events.jsonl), in ``report --json``, the HTML and ``status --json``."""
    root, run_dir = made_run
    events = list(read_events(run_dir))
    started: dict[str, int] = {}
    for e in events[max(i for i, e in enumerate(events) if e["event"] == "run_start"):]:
        if e["event"] == "worker_start":
            started[e["group"]] = started.get(e["group"], 0) + 1
    data = report_json(root)
    assert {name: s["setups"] for name, s in data["setups"].items()} == started
    assert all(s["setup_s"] >= 0 for s in data["setups"].values())
    status = conveyor("status", "run", "--json", cwd=root)
    assert json.loads(status.stdout)["setups"] == data["setups"]
    assert conveyor("report", "run", cwd=root).returncode == 0
    html = (run_dir / "report.html").read_text()
    section = html.split("<h2>Setups</h2>", 1)[1]
    for name, count in started.items():
        assert f"<tr><td>{name}</td><td class=n>{count}</td>" in section


def test_price_options_change_the_costs_and_the_html_per_1000_items(made_run, tmp_path):
    root, run_dir = made_run
    prices = {"cpu": 1.0, "ram": 0.25, "gpu": 7.5}
    out = tmp_path / "priced.html"
    data = report_json(root, "--price", "gpu=7.5", "--price", "cpu=1", "--price", "ram=0.25",
                       "-o", str(out))
    expected = expected_costs(run_dir, prices)
    costs = {s["stage"]: s["cost"] for s in data["stages"]}
    assert costs == pytest.approx(expected, rel=1e-12, abs=0)

    # One price given: the others keep their defaults.
    only_gpu = report_json(root, "--price", "gpu=0")
    assert {s["stage"]: s["cost"] for s in only_gpu["stages"]} == pytest.approx(
        expected_costs(run_dir, {**DEFAULTS, "gpu": 0.0}), rel=1e-12, abs=0)
    # Free resources cost nothing.
    free = report_json(root, "--price", "gpu=0", "--price", "cpu=0", "--price", "ram=0")
    assert free["total_cost"] == 0.0 and all(s["cost"] == 0.0 for s in free["stages"])

    # The page shows each stage's cost and cost per 1,000 items, and the total per
    # 1,000 items the run took in (4 inputs), at the prices it names.
    html = out.read_text(encoding="utf-8")
    rows = stages_table(html)
    assert rows[0] == ["stage", "done", "failed", "routed out", "items/s", "mean item", "busy",
                       "CPUs used/declared", "peak RSS/ram", "cost", "per 1,000 items"]
    by_stage = {row[0]: row for row in rows[1:]}
    for s in data["stages"]:
        row = by_stage[s["stage"]]
        assert row[1:3] == [str(s["done"]), str(s["failed"])]
        assert row[7].endswith(f"/ {s['declared']['cpus']:g}")
        assert row[9:] == [money(s["cost"]), money(s["cost"] / s["done"] * 1000)]
    total = by_stage["total"]
    assert total[1] == "4"
    assert total[9:] == [money(data["total_cost"]), money(data["total_cost"] / 4 * 1000)]
    assert ("at cpu $1.00/CPU-hour, ram $0.2500/GB-hour, gpu $7.50/GPU-hour." in
            " ".join(html.split()))


@pytest.mark.parametrize("price,message", [
    ("foo=1", "--price takes cpu=, ram= or gpu=, got 'foo=1'"),
    ("gpu", "--price takes cpu=, ram= or gpu=, got 'gpu'"),
    ("GPU=1", "--price takes cpu=, ram= or gpu=, got 'GPU=1'"),
    ("gpu=abc", "--price gpu= needs a number >= 0, got 'abc'"),
    ("cpu=", "--price cpu= needs a number >= 0, got ''"),
    ("ram=1,5", "--price ram= needs a number >= 0, got '1,5'"),
    ("gpu=nan", "--price gpu= needs a number >= 0, got 'nan'"),
    ("gpu=inf", "--price gpu= needs a number >= 0, got 'inf'"),
    ("cpu=-1", "--price cpu= needs a number >= 0, got '-1'"),
])
def test_a_bad_price_exits_2_with_a_clear_message_and_writes_nothing(made_run, price, message,
                                                                      tmp_path):
    root, _ = made_run
    out = tmp_path / "not-written.html"
    proc = conveyor("report", "run", "--price", "cpu=0.5", "--price", price, "-o", str(out),
                    cwd=root)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert proc.stdout == ""
    assert not out.exists()


def test_report_of_a_directory_without_a_run_exits_2(tmp_path):
    proc = conveyor("report", str(tmp_path / "nothing"), cwd=tmp_path)
    assert proc.returncode == 2
    assert "has no run events (events.jsonl) to report on" in proc.stderr
    assert not (tmp_path / "nothing" / "report.html").exists()


def test_a_bench_run_reports_the_same_items_as_its_bench_json(made_run):
    """The run was made with --bench: bench.json is there, the run's start records it,
    and the report's per-stage figures agree with it."""
    root, run_dir = made_run
    bench = json.loads((run_dir / "bench.json").read_text())
    starts = [e for e in read_events(run_dir) if e["event"] == "run_start"]
    assert starts[-1]["bench"] is True
    data = report_json(root)
    assert bench["pipeline"] == data["pipeline"] == "reportpipe"
    assert {name: (s["items"], s["failed"]) for name, s in bench["stages"].items()} == {
        s["stage"]: (s["done"], s["failed"]) for s in data["stages"]}
