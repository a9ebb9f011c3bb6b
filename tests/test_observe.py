"""Seeing a run: progress on a fake clock, events, the HTML report in a real browser,
the bottleneck verdict, benchmark mode, and status from another process mid-run."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from rich.console import Console

from conveyor import Item, Pipeline, open_run, rundir
from conveyor.observe import events as event_log
from conveyor.observe.events import EventLog, last_run, latest, read_events
from helpers import wait_for
from conveyor.observe.metrics import Histogram
from conveyor.observe.progress import ProgressModel, ProgressView, plain_lines, render_table
from conveyor.observe.report import (SATURATED, Analysis, StageSummary, analyse, verdict,
                                     write_report)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the progress model and its views ------------------------------------------------------------

def test_progress_rates_and_eta_on_a_fake_clock():
    clock = FakeClock()
    model = ProgressModel(["extract", "embed"], clock=clock)
    model.update("extract", done=0, pending=100, running=2, failed=0, workers=2)
    clock.now += 5
    model.update("extract", done=50, pending=48, running=2, failed=1, workers=2, busy=0.9)
    s = model.stages["extract"]
    assert s.rate() == pytest.approx(10.0)  # 50 items in 5 s
    assert s.eta() == pytest.approx(5.0)  # 50 left at 10/s
    assert s.total == 101
    assert model.stages["embed"].rate() is None and model.stages["embed"].eta() == 0.0


def test_the_rate_forgets_samples_older_than_its_window():
    clock = FakeClock()
    model = ProgressModel(["s"], clock=clock)
    done = 0
    model.update("s", done=done, pending=0, running=0, failed=0)
    for i in range(1, 31):
        clock.now += 1
        done += 10 if i <= 20 else 1  # fast for 20 s, then slow
        model.update("s", done=done, pending=10, running=0, failed=0)
    assert model.stages["s"].rate() == pytest.approx(1.0)  # the last 10 s, not the average


def render(model: ProgressModel, terminal: bool) -> str:
    out = io.StringIO()
    console = Console(file=out, force_terminal=terminal, width=100, color_system=None)
    if terminal:
        console.print(render_table(model))
    else:
        view = ProgressView(model, console)
        view.start()
        view.refresh(force=True)
    return out.getvalue()


def test_the_table_shows_every_column_a_user_reads():
    clock = FakeClock()
    model = ProgressModel(["ocr"], clock=clock)
    model.update("ocr", done=0, pending=20, running=2, failed=0, workers=2)
    clock.now += 4
    model.update("ocr", done=8, pending=10, running=2, failed=3, workers=2, busy=0.75)
    model.set_machine(cpu=97.0, ram_used=3 * 2**30, ram_total=16 * 2**30, gpus=[40.0])
    text = render(model, terminal=True)
    for expected in ("ocr", "8/23", "2.0", "6s", "75%", "CPU 97%", "3 GiB of 16 GiB",
                     "GPU 40%", "4s elapsed"):
        assert expected in text, (expected, text)


def test_plain_lines_when_not_a_terminal():
    clock = FakeClock()
    model = ProgressModel(["a", "b"], clock=clock)
    model.update("a", done=3, pending=1, running=0, failed=0, workers=1)
    lines = plain_lines(model)
    assert lines[0].startswith("[0s] a: 3/4 done, 0 running, 0 failed")
    assert len(render(model, terminal=False).splitlines()) == 2


def test_progress_says_how_far_the_inputs_are_read_while_they_are():
    model = ProgressModel(["a"], clock=FakeClock())
    assert "taking inputs in" not in render(model, terminal=True)
    model.taking = 1234567
    assert "taking inputs in: 1,234,567 read" in render(model, terminal=True)
    assert plain_lines(model)[-1] == "[0s] taking inputs in: 1,234,567 read"


def test_the_last_run_is_read_from_the_end_of_the_log(tmp_path, monkeypatch):
    """Status reads the ends of a run's events (the last run's start, its last tick, its
    end) from the end of the log; the answer is the one a read of every line gives,
    whatever the pieces the log is read in and however long its lines."""
    log = EventLog(tmp_path)
    for run in range(3):
        log.emit("run_start", run=run)
        for n in range(40):
            log.emit("tick", n=n, pad="x" * (n * 7 % 90))
            if n == 17:
                log.emit("failure", error="a 'run_start' and a \"tick\" in text " + "y" * 300)
        if run < 2:  # the last run has no end: running, or crashed
            log.emit("run_end", run=run)
    log.close()
    with open(tmp_path / rundir.EVENTS, "ab") as fh:
        fh.write(b'{"t": 1, "event": "tick", "n": 9')  # torn: the driver was killed mid-line
    every = list(read_events(tmp_path))
    began = max(i for i, e in enumerate(every) if e["event"] == "run_start")
    said = tmp_path / rundir.EVENTS_LAST
    told = said.read_bytes()  # where the third run began, written with its start
    stale = json.dumps({"offset": (tmp_path / rundir.EVENTS).stat().st_size + 10,
                        "t": 1.0})  # a driver killed between that and its start's line
    for where in (told, None, stale):  # as written; an older version's run; not to be trusted
        if where is None:
            said.unlink()
        else:
            said.write_bytes(where if isinstance(where, bytes) else where.encode())
        for piece in (16, 100, 1 << 20):
            monkeypatch.setattr(event_log, "SCAN_BYTES", piece)
            assert list(last_run(tmp_path)) == every[began:]
            found = latest(tmp_path, "run_start", "tick", "run_end", "failure")
            assert found == {"run_start": every[began], "tick": every[-1],
                             "failure": every[began + 19]}
            assert found["tick"]["n"] == 39 and found["failure"]["event"] == "failure"
    assert latest(tmp_path / "none", "tick") == {} and list(last_run(tmp_path / "none")) == []
    # the next driver's events begin on a line of their own, after the torn one
    log = EventLog(tmp_path)
    log.emit("run_start", run=3)
    log.close()
    assert [e["event"] for e in last_run(tmp_path)] == ["run_start"]
    assert list(read_events(tmp_path))[-1]["run"] == 3  # read whole, too
    assert latest(tmp_path, "run_start", "tick")["run_start"]["run"] == 3


def test_histogram_mean_and_percentile():
    h = Histogram()
    for ms in range(1, 101):
        h.add(ms / 1000)
    assert h.mean == pytest.approx(0.0505)
    assert 0.090 <= h.percentile(0.95) <= 0.105  # within one 10 % bucket


# -- events, bench mode and the report ----------------------------------------------------------

def slow_middle_pipeline() -> Pipeline:
    """A pipeline built to have one bottleneck: 'heavy' costs ten times the others."""
    pipe = Pipeline("bottleneck")

    @pipe.stage(cpus=0.5)
    def light(x):
        time.sleep(0.002)
        return x

    @pipe.stage(after=light, cpus=0.5, concurrency=1)
    def heavy(x):
        time.sleep(0.03)
        if x == 7:
            raise ValueError("seven is broken")
        return x

    @pipe.stage(after=heavy, cpus=0.5)
    def tail(x):
        time.sleep(0.002)
        return x

    return pipe


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("observe") / "run"
    slow_middle_pipeline().run([Item(f"{i:03d}", i) for i in range(120)], run_dir=run_dir,
                               cpus=2, bench=True)
    return run_dir


def test_events_describe_the_run_and_stay_bounded(bench_run):
    events = list(read_events(bench_run))
    kinds = [e["event"] for e in events]
    start = events[0]
    assert kinds[0] == "run_start" and kinds[-1] == "run_end"
    assert [s["name"] for s in start["stages"]] == ["light", "heavy", "tail"]
    assert start["versions"]["python"] and start["budget"]["cpus"] == 2
    ticks = [e for e in events if e["event"] == "tick"]
    assert ticks and ticks[-1]["stages"]["heavy"]["done"] == 119
    assert "cpu" in ticks[-1]["machine"] and any(t["workers"] for t in ticks)
    # one line per tick, worker event and failure, never one per item
    assert len(events) < 120


def test_bench_mode_stores_and_prints_per_stage_figures(bench_run):
    table = json.loads((bench_run / "bench.json").read_text())
    heavy = table["stages"]["heavy"]
    assert heavy["items"] == 119 and heavy["failed"] == 1
    assert heavy["workers"] == 1  # concurrency=1
    # Every item, the failed one too, sleeps 0.03 s: so does their mean, and the 95th
    # percentile (a bucket's midpoint: 0.031 s for the bucket holding 0.03 s).
    assert heavy["mean_item_s"] >= 0.03 and heavy["p95_item_s"] >= 0.03
    # One worker runs them one after another, within the stage's span of wall time...
    runs = heavy["items"] + heavy["failed"]
    assert heavy["mean_item_s"] * runs <= heavy["wall_s"] + runs * 1e-6  # (6-digit rounding)
    # ...which is what its rate is measured over
    assert heavy["items_per_s"] == pytest.approx(heavy["items"] / heavy["wall_s"], rel=1e-6)
    assert heavy["peak_rss"] > 10 * 2**20
    assert heavy["peak_gpu_mem"] is None  # no GPU here


def verdict_opening(analysis: Analysis) -> str:
    """How the verdict of the bench run must open, given what the run measured: 'heavy'
    is its busiest stage by construction, but whether it was saturated depends on the
    driver's own work per item, which a loaded machine slows as much as 'heavy' itself
    (then what fed 'heavy' limited the run, and the verdict must say so)."""
    by_name = {s.name: s for s in analysis.stages}
    assert max(analysis.stages, key=lambda s: s.utilisation).name == "heavy"
    assert by_name["heavy"].utilisation > by_name["light"].utilisation
    if by_name["heavy"].utilisation >= SATURATED:
        return "Stage 'heavy' limited throughput"
    return "No stage was saturated: the busiest, 'heavy', was busy"


def test_the_verdict_names_the_stage_built_to_be_slow(bench_run):
    analysis = analyse(bench_run)
    assert analysis.verdict.startswith(verdict_opening(analysis)), analysis.verdict
    # cost: each worker's declared resources for as long as it lived, at the prices
    lives, starts = 0.0, {}
    for e in read_events(bench_run):
        if e["event"] == "worker_start":
            starts[e["worker"]] = e
        elif e["event"] == "worker_exit":
            s = starts.pop(e["worker"])
            hours = (e["t"] - s["t"]) / 3600
            lives += hours * (s["cpus"] * 0.04 + s["ram"] / 2**30 * 0.005 + s["gpus"] * 2.5)
    assert analysis.total_cost == pytest.approx(lives)
    assert all(s.cost > 0 for s in analysis.stages)


def test_a_long_runs_report_keeps_its_figures_and_bounds_its_charts(monkeypatch):
    """A week of ticks and leases: the figures are those of every event, while the
    charts keep a bounded number of ticks and each worker row a bounded number of bars,
    each bar covering the leases it stands for."""
    from conveyor.observe import digest as digests

    monkeypatch.setattr(digests, "MAX_POINTS", 10)
    monkeypatch.setattr(digests, "MAX_BARS", 8)
    events = [{"t": 0.0, "event": "run_start", "budget": {"cpus": 2.0}}]
    leases = {0: [], 1: []}
    for w in (0, 1):  # as the driver writes them: the lease before the worker_start
        events += [{"t": 0.1, "event": "lease", "worker": w, "cpus": 1.0},
                   {"t": 0.1, "event": "worker_start", "worker": w, "group": "g", "cpus": 1.0,
                    "ram": 0, "gpus": 0.0}]
    t, since = 0.1, {0: 0.1, 1: 0.1}
    for n in range(1, 500):
        t = n * 2.0
        for w in (0, 1):
            if (n + w) % 3 == 0:  # a pause: the lease goes back, then comes again
                events.append({"t": t, "event": "unlease", "worker": w})
                leases[w].append((since[w], t))
                since[w] = t + 0.5 + w
                events.append({"t": since[w], "event": "lease", "worker": w, "cpus": 1.0})
        events.append({"t": t + 1.9, "event": "tick",
                       "stages": {"g": {"busy": 1.5, "done": n, "pending": n % 2}},
                       "machine": {"cpu": 50.0, "ram_used": 1, "ram_total": 2}})
    end = t + 3.0
    events.append({"t": end, "event": "run_end"})
    for w in (0, 1):
        leases[w].append((since[w], end))
    found = digests.RunDigest.of(events)
    ticks = [e for e in events if e["event"] == "tick"]
    assert found.tick_count == len(ticks) and found.last_tick is ticks[-1]
    assert found.stages["g"].busy == pytest.approx(1.5 * len(ticks))
    assert found.stages["g"].done == 499 and found.stages["g"].queued == 250
    kept = found.chart_ticks
    assert len(kept) <= 2 * 10 and kept[0] is ticks[0] and kept[-1] is ticks[-1]
    assert len({round(kept[i + 1]["t"] - kept[i]["t"], 6) for i in range(len(kept) - 2)}) == 1
    # both workers leased: every moment but each one's pauses
    paused = sum(b - a for w in (0, 1) for (_, a), (b, _) in zip(leases[w], leases[w][1:]))
    assert found.cpu_full == pytest.approx(end - 0.1 - paused)
    for w in (0, 1):
        bars = found.lives[w].leases
        assert len(bars) < 2 * 8 and bars == sorted(bars)
        assert all(any(a <= x and y <= b for a, b in bars) for x, y in leases[w])
        assert found.lives[w].end == end


@pytest.mark.parametrize("span,x,label", [(5, 2.5, "2.5s"), (300, 150, "150s"),
                                          (3600, 1800, "30m"), (86400, 43200, "12.0h"),
                                          (7 * 86400, 3 * 86400, "3.0d")])
def test_a_charts_time_axis_speaks_in_the_unit_of_its_span(span, x, label):
    from conveyor.observe import charts

    svg = charts.lines({"a": [(0.0, 1.0), (float(span), 2.0)]}, "done")
    assert charts._seconds(x, span) == label and f">{charts._seconds(span, span)}<" in svg


def test_a_timeline_makes_room_for_a_fused_groups_label():
    from conveyor.observe import charts

    label = "first+second+third #0 +3"
    svg = charts.timeline([(label, 0, [(0.0, 1.0, True)])], 1.0, "workers")
    x = re.search(r'<text class="axis" x="([0-9.]+)"[^>]*>' + re.escape(label), svg).group(1)
    assert float(x) >= charts.CHAR_PX * len(label)  # the label begins inside the picture
    short = charts.timeline([("a #0", 0, [(0.0, 1.0, True)])], 1.0, "workers")
    assert f'x="{charts.LEFT - 6}"' in short  # a short one keeps the usual margin


def test_a_chart_of_nothing_but_zeros_has_a_plain_axis():
    from conveyor.observe import charts

    svg = charts.lines({"queued": [(0.0, 0.0), (10.0, 0.0)]}, "queues")
    labels = re.findall(r">([^<]+)</text>", svg)
    assert labels[:5] == ["0", "0.25", "0.5", "0.75", "1"]  # not 1.1e-09 and its fractions


def test_a_stage_whose_workers_come_and_go_has_a_row_per_worker_at_once():
    from conveyor.observe.digest import WorkerLife
    from conveyor.observe.report import render

    # 200 lives one after another (stopped idle, started again), one beside the first
    lives = [WorkerLife(i, "g", i * 10.0, i * 10.0 + 5, 1.0, 0, 0.0,
                        [(i * 10.0 + 1, i * 10.0 + 2)]) for i in range(200)]
    lives.append(WorkerLife(200, "g", 3.0, 8.0, 1.0, 0, 0.0))
    analysis = Analysis("p", Path("run"), 0.0, 2000.0, "local", {"cpus": 2},
                        [StageSummary("g", "g", {}, busy=200.0, alive=1005.0)], lives, [], [],
                        {}, cpu_full_share=0.0)
    page = render(analysis)
    assert re.findall(r'text-anchor="end">(g #[^<]*)</text>', page) == ["g #0 +199", "g #200"]
    assert "more rows.</p>" not in page


@pytest.mark.parametrize("busy,opening", [
    (0.9, "Stage 'heavy' limited throughput: its workers were busy 90%"),
    (0.5, "No stage was saturated: the busiest, 'heavy', was busy 50%"),
])
def test_the_verdict_names_the_busiest_stage_and_whether_it_was_saturated(busy, opening):
    stages = [StageSummary("light", "light", {}, busy=1.0, alive=10.0),
              StageSummary("heavy", "heavy", {}, busy=busy * 10, alive=10.0)]
    analysis = Analysis("p", Path("run"), 0.0, 10.0, "local", {"cpus": 2}, stages, [], [], [],
                        {}, cpu_full_share=0.0)
    assert verdict(analysis).startswith(opening)


def test_the_report_renders_in_a_real_browser_without_errors(bench_run, tmp_path):
    chromium = shutil.which("chromium")
    assert chromium, "Debian chromium is missing: `make test` installs it (scripts/system-deps.sh)"
    report = write_report(bench_run, tmp_path / "report.html",
                          prices={"cpu": 0.1, "gpu": 3.0})
    html = report.read_text()
    assert "http://" not in html and "https://" not in html  # self-contained
    proc = subprocess.run(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=2000", "--dump-dom", report.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert 'data-rendered="yes"' in dom  # the page's script ran to its end
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console
    for name in ("light", "heavy", "tail"):
        assert f"<td>{name}</td>" in dom
    assert verdict_opening(analyse(bench_run)) in dom
    assert "seven is broken" in dom  # the failures table
    assert "<svg" in dom and "workers per stage" in dom


def test_the_drivers_console_says_how_far_the_inputs_are_read(tmp_path):
    from conveyor.observe.events import EventLog
    from conveyor.observe.observer import Observer

    pipe = Pipeline("intake")

    @pipe.stage
    def first(x):
        return x

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=80)
    events = EventLog(tmp_path)
    observer = Observer(pipe, events, tmp_path, progress=True, bench=False, console=console)
    observer.taking_inputs(1234)
    observer.taking_inputs(56789)
    assert json.loads((tmp_path / rundir.INTAKE).read_text()) == {"taken": 56789}
    observer.prepared(None)
    assert not (tmp_path / rundir.INTAKE).exists()
    observer.finish(None, None)
    events.close()
    assert "taking inputs in: 56,789 read" in screen.getvalue()


def test_status_says_how_far_a_run_has_read_its_inputs(tmp_path):
    """A long listing (a bucket of millions of objects) takes a while to read: status
    lists the stages meanwhile and says how many inputs have been read."""
    script, run_dir = tmp_path / "intake.py", tmp_path / "run"
    reading, release = tmp_path / "reading", tmp_path / "release"
    intake = run_dir / rundir.INTAKE
    # a slow source: it goes on until the driver has said how far it is (or 2,000
    # inputs later, when it never does), then waits for the test's release
    script.write_text(textwrap.dedent(f"""
        import os, time
        from conveyor import Pipeline
        pipe = Pipeline("intake")
        @pipe.stage
        def first(x):
            return x
        @pipe.stage(after=first)
        def second(x):
            return x
        def inputs():
            for i in range(2000):
                yield i
                if os.path.exists({str(intake)!r}):
                    break
                time.sleep(0.01)
            open({str(reading)!r}, "w").close()
            for _ in range(1200):  # a guard: a minute, if the test never releases it
                if os.path.exists({str(release)!r}):
                    break
                time.sleep(0.05)
        pipe.run(inputs(), run_dir={str(run_dir)!r}, cpus=1)
    """))
    stderr = tmp_path / "driver.err"
    with stderr.open("w") as err:
        driver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL,
                                  stderr=err)
    try:
        wait_for(reading.exists, "the driver said how far it had read", driver, stderr,
                 pause=0.05)
        out = subprocess.run([sys.executable, "-m", "conveyor", "status", str(run_dir),
                              "--json"], capture_output=True, text=True, check=True)
        found = json.loads(out.stdout)
        assert found["pipeline"] == "intake"
        assert list(found["stages"]) == ["first", "second"]
        assert all(counts["done"] == 0 for counts in found["stages"].values())
        assert found["state"]["state"] == "running"
        taken = found["state"]["taking_inputs"]
        assert taken is not None and taken >= 1
        out = subprocess.run([sys.executable, "-m", "conveyor", "status", str(run_dir)],
                             capture_output=True, text=True, check=True)
        assert "taking inputs in: " in out.stdout
        following = tmp_path / "attach.err"
        with following.open("w") as err:
            attach = subprocess.Popen([sys.executable, "-m", "conveyor", "attach",
                                       str(run_dir)], stdout=subprocess.DEVNULL, stderr=err)
        wait_for(lambda: "taking inputs in: " in following.read_text(), "attach said so",
                 attach, following, pause=0.05)
    finally:
        release.touch()
        driver.wait(timeout=60)
    assert driver.returncode == 0, stderr.read_text()[-2000:]
    assert attach.wait(timeout=60) == 0
    assert not intake.exists()
    with open_run(run_dir) as result:
        assert result.counts["second"]["done"] >= taken
        assert "taking_inputs" not in result.status()


def test_status_reads_a_run_in_progress_from_another_process(tmp_path):
    module = tmp_path / "slowpipe.py"
    release = tmp_path / "release"
    # the last word waits for the test's release: the run is in progress until then
    module.write_text(textwrap.dedent(f"""
        import os, time
        from conveyor import Pipeline
        pipe = Pipeline("slow")
        @pipe.stage(cpus=1)
        def slow(x):
            while x == "w29" and not os.path.exists({str(release)!r}):
                time.sleep(0.05)
            return x
    """))
    run_dir = tmp_path / "run"
    words = [f"w{i:02d}" for i in range(30)]
    driver = subprocess.Popen([sys.executable, "-m", "conveyor", "run", f"{module}:pipe",
                               *words, "--run-dir", str(run_dir), "-q", "--cpus", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        seen = None
        while seen is None:
            assert driver.poll() is None, "the run ended before the release"
            out = subprocess.run([sys.executable, "-m", "conveyor", "status", str(run_dir),
                                  "--json"], capture_output=True, text=True)
            if out.returncode == 0:
                # the ledger is there a moment before the stages are recorded in it
                counts = json.loads(out.stdout)["stages"].get("slow")
                if counts and counts["done"] > 0:
                    seen = counts
            time.sleep(0.2)
        assert seen["done"] < 30 and seen["pending"] + seen["running"] > 0
    finally:
        release.touch()
        driver.wait(timeout=60)
    assert driver.returncode == 0
