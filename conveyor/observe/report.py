"""The run report: one self-contained HTML file built from a run directory.

It reads the last run's events (``events.jsonl``: workers' lives and CPU
leases, ticks of per-stage counts, busy time and queues, machine samples)
and the ledger (counts, failures, setups per stage), and shows: a summary per stage with
its utilisation and cost, a verdict in words on what limited throughput and
what would help, a timeline of workers per stage, throughput, utilisation
and queue depths over time, and the failures. Charts are inline SVG
(:mod:`conveyor.observe.charts`); the page fetches nothing.

Cost is what the declared resources cost while workers held them, at prices
per CPU-hour, GB-hour of RAM and GPU-hour (``DEFAULT_PRICES``, roughly cloud
on-demand rates; pass your own). A fused group's cost is split among its
stages by their busy time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from .. import rundir
from ..resources import DEFAULT_PRICES, format_size, hourly_price
from ..result import RunResult
from . import charts
from .digest import RunDigest, StageTicks, WorkerLife
from .events import last_run
from .usage import StageUsage, of_run

SATURATED = 0.6  # a stage busier than this is a candidate bottleneck
MAX_ROWS = 60  # worker rows in the timeline
MAX_FAILURES = 1000


@dataclass
class StageSummary:
    name: str
    group: str
    spec: dict[str, Any]
    done: int = 0
    failed: int = 0
    routed_out: int = 0
    pending: int = 0
    busy: float = 0.0  # seconds of item time in this run
    alive: float = 0.0  # seconds its group's workers lived (shared within a group)
    rate: float = 0.0  # items per second over the run
    mean_batch: float | None = None
    queued_share: float = 0.0  # share of ticks with items waiting for it
    cost: float = 0.0
    spilled: int | None = None  # a group's bytes in partition files
    usage: StageUsage | None = None  # declared versus used CPUs and RAM

    @property
    def utilisation(self) -> float:
        return self.busy / self.alive if self.alive else 0.0


@dataclass
class Analysis:
    pipeline: str
    run_dir: Path
    start: float
    end: float
    executor: str
    budget: dict[str, Any]
    stages: list[StageSummary]
    workers: list[WorkerLife]
    ticks: list[dict[str, Any]]  # for the charts: under 2 * digest.MAX_POINTS
    failures: list[dict[str, Any]]
    prices: dict[str, float]
    cpu_full_share: float  # share of the run with every CPU of the budget leased
    verdict: str = ""
    setups: dict[str, dict[str, Any]] = field(default_factory=dict)  # RunResult.setups

    @property
    def wall(self) -> float:
        return self.end - self.start

    @property
    def total_cost(self) -> float:
        return sum(s.cost for s in self.stages)

    @property
    def items_in(self) -> int:
        return self.stages[0].done + self.stages[0].failed if self.stages else 0


def analyse(run_dir: str | Path, prices: dict[str, float] | None = None) -> Analysis:
    """Everything the report shows, computed from the run directory."""
    run_dir = Path(run_dir)
    prices = {**DEFAULT_PRICES, **(prices or {})}
    digest = RunDigest.of(last_run(run_dir))
    if digest is None:
        raise ValueError(f"{run_dir} has no run events (events.jsonl) to report on")
    start_event, end, workers = digest.start, digest.end, list(digest.lives.values())
    usage = of_run(start_event, digest.last_tick)
    with RunResult(run_dir) as result:
        counts = result.counts
        failures = result.failures()
        spilled = result.spilled
        setups = result.setups
    specs = {s["name"]: s for s in start_event.get("stages", [])}
    group_of = {stage: w.group for w in workers for stage in w.group.split("+")}
    stages = []
    for name in specs or counts:
        c = counts.get(name, {})
        s = StageSummary(name, group_of.get(name, name), specs.get(name, {}),
                         done=c.get("done", 0) + c.get("routed-out", 0),
                         failed=c.get("failed", 0), routed_out=c.get("routed-out", 0),
                         pending=c.get("pending", 0) + c.get("running", 0),
                         spilled=spilled.get(name), usage=usage.get(name))
        over = digest.stages.get(name, StageTicks())
        s.busy = over.busy
        s.alive = sum(w.end - w.start for w in workers if w.group == s.group)
        s.rate = over.done / (end - start_event["t"]) if end > start_event["t"] else 0.0
        last = digest.last_tick["stages"].get(name, {}) if digest.last_tick else {}
        if last.get("batches"):
            s.mean_batch = last["batch_items"] / last["batches"]
        if digest.tick_count:
            s.queued_share = over.queued / digest.tick_count
        stages.append(s)
    _costs(stages, workers, prices)
    wall = end - start_event["t"]
    analysis = Analysis(start_event.get("pipeline", "?"), run_dir, start_event["t"], end,
                        start_event.get("executor", "?"), start_event.get("budget", {}),
                        stages, workers, digest.chart_ticks, failures, prices,
                        digest.cpu_full / wall if wall > 0 else 0.0)
    analysis.verdict = " ".join([verdict(analysis), *declarations(usage)])
    analysis.setups = setups
    return analysis


def _lanes(lives: list[WorkerLife]) -> list[list[WorkerLife]]:
    """``lives`` (by stage, then start) on rows: each on the first row of its group whose
    last life had ended when it began. A long run that stops idle workers and starts
    them again has thousands of lives, and as many rows as ran at once."""
    lanes: list[list[WorkerLife]] = []
    for life in lives:
        lane = next((lane for lane in lanes
                     if lane[-1].group == life.group and lane[-1].end <= life.start), None)
        if lane is None:
            lanes.append([life])
        else:
            lane.append(life)
    return lanes


def declarations(usage: dict[str, StageUsage]) -> list[str]:
    """Sentences for the verdict on declarations the run outgrew (none if all held)."""
    cpu = [w for u in usage.values() if (w := u.cpu_warning())]
    ram = [w for u in usage.values() if (w := u.ram_warning())]
    sentences = []
    if cpu:
        sentences.append("The budget counts declared CPUs, so the machine was overcommitted: "
                         + "; ".join(cpu) + ".")
    if ram:
        sentences.append("Memory: " + "; ".join(ram) + ".")
    return sentences


def _costs(stages: list[StageSummary], workers: list[WorkerLife], prices: dict[str, float]
           ) -> None:
    by_group: dict[str, float] = {}
    for w in workers:
        hours = (w.end - w.start) / 3600
        by_group[w.group] = by_group.get(w.group, 0.0) + hours * hourly_price(
            w.cpus, w.ram, w.gpus, prices)
    for group, cost in by_group.items():
        members = [s for s in stages if s.group == group]
        busy = sum(s.busy for s in members)
        for s in members:
            s.cost = cost * (s.busy / busy if busy else 1 / len(members))


def verdict(a: Analysis) -> str:
    """Which stage limited throughput, and what would help, in words."""
    candidates = [s for s in a.stages if s.alive > 0]
    if not candidates:
        return "No worker ran in this run: everything it needed was already done."
    worst = max(candidates, key=lambda s: (s.utilisation, s.busy))
    busy = f"its workers were busy {worst.utilisation:.0%} of the time they lived"
    if worst.utilisation < SATURATED:
        return (f"No stage was saturated: the busiest, '{worst.name}', was busy "
                f"{worst.utilisation:.0%} of its workers' time. Throughput was limited by "
                f"what fed the run (inputs, the driver's own work per item) rather than by a "
                f"stage; fewer, cheaper stages or bigger items would help.")
    spec, helps = worst.spec, []
    bs = spec.get("batch_size")
    if bs and worst.mean_batch is not None and worst.mean_batch < bs / 2:
        helps.append(f"bigger batches: it ran batches of {worst.mean_batch:.1f} on average "
                     f"for batch_size={bs}, so more workers upstream would fill them")
    if spec.get("gpus"):
        helps.append(f"more GPUs{'' if bs else ', or batching (batch_size=) to use each better'}")
    else:
        if a.cpu_full_share > 0.5:
            helps.append(f"more CPUs: all {a.budget.get('cpus')} CPUs of the budget were in use "
                         f"{a.cpu_full_share:.0%} of the run")
        else:
            helps.append("more workers for it (raise its concurrency cap, or give the run more "
                         "CPUs)")
        if bs and not a.budget.get("gpus"):
            helps.append("a GPU, if its batches run a model")
    return (f"Stage '{worst.name}' limited throughput: {busy}, and items waited for it in "
            f"{worst.queued_share:.0%} of the samples. It would go faster with "
            + "; or ".join(helps) + ".")


# -- the page ------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1000px;color:#222}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}td,th{padding:3px 10px;border-bottom:1px solid #eee}
th{text-align:left;background:#f6f6f6}td.n{text-align:right;font-variant-numeric:tabular-nums}
.verdict{background:#fff7e6;border-left:4px solid #f28e2b;padding:10px 14px}
.ok{color:#2e7d32}.bad{color:#c62828}.chart{width:100%;height:auto}
.grid{stroke:#eee}.axis,.legend{font-size:11px;fill:#555}.empty{color:#888}
input{padding:4px 8px;width:320px}code{background:#f3f3f3;padding:1px 4px}
"""

_SCRIPT = """
const filter = document.getElementById('filter');
const rows = Array.from(document.querySelectorAll('#failures tbody tr'));
filter.addEventListener('input', () => {
  const q = filter.value.toLowerCase();
  let shown = 0;
  for (const row of rows) {
    const hit = row.textContent.toLowerCase().includes(q);
    row.hidden = !hit;
    shown += hit ? 1 : 0;
  }
  document.getElementById('shown').textContent = shown;
});
document.getElementById('shown').textContent = rows.length;
document.body.dataset.rendered = 'yes';
"""


def _money(x: float) -> str:
    return f"${x:,.4f}" if x < 1 else f"${x:,.2f}"


def _used(u: StageUsage | None) -> str:
    """The two declared-versus-used cells of a stage's row; outgrown ones in red."""
    if u is None:
        return "<td class=n>-</td><td class=n>-</td>"
    cores = "-" if u.cores is None else f"{u.cores:.2f}"
    peak = format_size(u.peak_rss) if u.peak_rss else "-"
    ram = f"{peak} / {format_size(u.ram)}" if u.ram else peak
    cpu_class = "n bad" if u.cpu_warning() else "n"
    ram_class = "n bad" if u.ram_warning() else "n"
    return (f"<td class='{cpu_class}'>{cores} / {u.cpus:g}</td>"
            f"<td class='{ram_class}'>{ram}</td>")


def render(a: Analysis) -> str:
    """The report page for an analysis."""
    t0 = a.start
    names = [s.name for s in a.stages]
    status = ('<span class="ok">every item finished</span>' if not any(s.failed or s.pending
                                                                        for s in a.stages)
              else f'<span class="bad">{sum(s.failed for s in a.stages)} failed, '
                   f'{sum(s.pending for s in a.stages)} unfinished</span>')
    summary = ["<table><tr><th>stage</th><th>done</th><th>failed</th><th>routed out</th>"
               "<th>items/s</th><th>mean item</th><th>busy</th><th>CPUs used/declared</th>"
               "<th>peak RSS/ram</th><th>cost</th><th>per 1,000 items</th></tr>"]
    for s in a.stages:
        mean = f"{s.busy / s.done * 1000:.1f} ms" if s.done and s.busy else "-"
        per_k = _money(s.cost / s.done * 1000) if s.done else "-"
        label = escape(s.name) if s.spilled is None else (
            f"{escape(s.name)} <small>(partitions; {format_size(s.spilled)} spilled)</small>")
        summary.append(
            f"<tr><td>{label}</td><td class=n>{s.done}</td><td class=n>{s.failed}</td>"
            f"<td class=n>{s.routed_out}</td><td class=n>{s.rate:.2f}</td>"
            f"<td class=n>{mean}</td><td class=n>{s.utilisation:.0%}</td>{_used(s.usage)}"
            f"<td class=n>{_money(s.cost)}</td><td class=n>{per_k}</td></tr>")
    per_1000 = _money(a.total_cost / a.items_in * 1000) if a.items_in else "-"
    summary.append(f"<tr><th>total</th><td class=n>{a.items_in}</td><td></td><td></td><td></td>"
                   f"<td></td><td></td><td></td><td></td><th class=n>{_money(a.total_cost)}</th>"
                   f"<th class=n>{per_1000}</th></tr></table>")
    prices = ", ".join(f"{k} {_money(v)}/{'GB-' if k == 'ram' else k.upper() + '-'}hour"
                       for k, v in a.prices.items())

    rows = []
    order = {name: i for i, name in enumerate(names)}
    lanes = _lanes(sorted(a.workers, key=lambda w: (order.get(w.group.split("+")[0], 99),
                                                     w.start)))
    for lane in lanes[:MAX_ROWS]:
        bars = [bar for w in lane for bar in [(w.start - t0, w.end - t0, False)]
                + [(x - t0, y - t0, True) for x, y in w.leases]]
        label = f"{lane[0].group} #{lane[0].id}" + (f" +{len(lane) - 1}" if len(lane) > 1 else "")
        rows.append((label, order.get(lane[0].group.split("+")[0], 0), bars))
    more = (f"<p>and {len(lanes) - MAX_ROWS} more rows.</p>" if len(lanes) > MAX_ROWS else "")

    def series(key: str) -> dict[str, list[tuple[float, float]]]:
        return {n: [(t["t"] - t0, t["stages"].get(n, {}).get(key, 0)) for t in a.ticks]
                for n in names}

    machine = {"CPU %": [(t["t"] - t0, t["machine"]["cpu"]) for t in a.ticks],
               "RAM %": [(t["t"] - t0, 100 * t["machine"]["ram_used"] / t["machine"]["ram_total"])
                         for t in a.ticks]}
    gpus = [len(t["machine"].get("gpus", [])) for t in a.ticks]
    for i in range(max(gpus, default=0)):
        machine[f"GPU {i} %"] = [(t["t"] - t0, t["machine"]["gpus"][i]["util"])
                                 for t in a.ticks if len(t["machine"].get("gpus", [])) > i]

    failures = ["<table id=failures><thead><tr><th>stage</th><th>key</th><th>attempts</th>"
                "<th>error</th></tr></thead><tbody>"]
    for f in a.failures[:MAX_FAILURES]:
        failures.append(f"<tr><td>{escape(f['stage'])}</td><td>{escape(f['key'])}</td>"
                        f"<td class=n>{f['attempts']}</td><td>{escape(f['error'] or '')}</td></tr>")
    failures.append("</tbody></table>")
    if len(a.failures) > MAX_FAILURES:
        failures.append(f"<p>and {len(a.failures) - MAX_FAILURES} more: "
                        f"<code>conveyor failures {escape(str(a.run_dir))}</code></p>")

    budget = a.budget
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>conveyor report — {escape(a.pipeline)}</title><style>{_CSS}</style></head>
<body>
<h1>conveyor report — {escape(a.pipeline)}</h1>
<p>{escape(str(a.run_dir))} · {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(a.start))} ·
{a.wall:.1f} s · executor {escape(a.executor)} · budget {budget.get('cpus')} CPUs,
{format_size(int(budget.get('ram') or 0))} RAM, {budget.get('gpus')} GPUs · {status}</p>
<h2>What limited throughput</h2>
<p class="verdict" id="verdict">{escape(a.verdict)}</p>
<h2>Stages</h2>
{''.join(summary)}
<p>Cost: declared resources while workers held them, at {escape(prices)}.</p>
{_setups(a)}
<h2>Workers</h2>
<p>Each row is a worker (#id), then the workers of its stage that started after it
ended (+n): faint while one lived, solid while it held CPUs.</p>
{charts.timeline(rows, a.wall, "workers per stage")}{more}
<h2>Throughput</h2>
{charts.lines({n: pts for n, pts in series("rate").items()}, "items per second", "/s")}
<h2>Utilisation</h2>
{charts.lines(machine, "machine utilisation", "%", y_max=100)}
<h2>Queues</h2>
{charts.lines(series("pending"), "items waiting per stage")}
<h2>Failures (<span id="shown">{len(a.failures[:MAX_FAILURES])}</span> shown)</h2>
<p><input id="filter" placeholder="filter by stage, key or error"></p>
{''.join(failures)}
<script>{_SCRIPT}</script>
</body></html>
"""


def _setups(a: Analysis) -> str:
    """How many workers each stage set up, and what a setup took: a setup run again
    and again (a model loaded per burst of work) shows here."""
    rows = [f"<tr><td>{escape(name)}</td><td class=n>{s['setups']}</td>"
            f"<td class=n>{s['setup_s']:.2f} s</td></tr>"
            for name, s in a.setups.items() if s["setups"]]
    if not rows:
        return ""
    return ("<h2>Setups</h2><table id=setups><tr><th>stage</th><th>workers set up</th>"
            "<th>mean setup</th></tr>" + "".join(rows) + "</table>")


def write_report(run_dir: str | Path, out: str | Path | None = None,
                 prices: dict[str, float] | None = None) -> Path:
    """Write the report of ``run_dir`` (to ``<run_dir>/report.html`` by default)."""
    analysis = analyse(run_dir, prices)
    path = Path(out) if out else Path(run_dir) / rundir.REPORT
    path.write_text(render(analysis), encoding="utf-8")
    return path


def summary_json(a: Analysis) -> dict[str, Any]:
    """The analysis as plain data (for ``--json`` and tests)."""
    return {"pipeline": a.pipeline, "wall_s": round(a.wall, 3), "verdict": a.verdict,
            "total_cost": a.total_cost, "setups": a.setups,
            "cost_per_1000": a.total_cost / a.items_in * 1000 if a.items_in else None,
            "stages": [
                {"stage": s.name, "done": s.done, "failed": s.failed, "busy": round(s.busy, 3),
                 "utilisation": round(s.utilisation, 3), "cost": s.cost, "spilled": s.spilled,
                 "cost_per_1000": s.cost / s.done * 1000 if s.done else None,
                 **(s.usage.as_json() if s.usage else {})}
                for s in a.stages]}

