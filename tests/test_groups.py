"""Group stages and side inputs, on every executor: exact results, failures, reruns.

A group regroups its upstream's values by key across all items and calls its
function once per key; a side input lets a stage read a finished stage while
it runs. Results are checked against plain Python (``collections.Counter``),
and what ran again on a rerun against the stages' own call logs.
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conveyor import GraphError, Item, Pipeline, PipelineError, StageDefinitionError, open_run
from conveyor.stage import group_of
from conveyor.resources import format_size
from conveyor.observe.events import read_events
from conveyor.serve import Service
from helpers import append_log, read_log

PIPELINES = Path(__file__).parent / "pipelines"


def documents(n: int, words: int, vocabulary: int, seed: int = 5) -> list[Item]:
    rng = random.Random(seed)
    return [Item(f"doc{i:04d}", " ".join(f"w{rng.randrange(vocabulary)}" for _ in range(words)))
            for i in range(n)]


def word_count(log: Path | None = None, partitions: int = 4) -> Pipeline:
    pipe = Pipeline("wordcount")

    @pipe.stage
    def words(doc):
        for word in doc.split():
            yield {"word": word}

    @pipe.group(after=words, by=lambda v: v["word"], partitions=partitions)
    def count(key, values, ctx):
        if log is not None:
            append_log(log, f"count {key} {ctx.attempt}")
        return {"word": key, "n": sum(1 for _ in values)}

    @pipe.reduce(after=count)
    def total(values):
        return {"words": sum(v["n"] for v in values)}

    @pipe.stage(after=words, side=[count, total])
    def share(v, ctx):
        if log is not None:
            append_log(log, f"share {ctx.key}")
        return {**v, "share": ctx.side("count")[v["word"]]["n"] / ctx.side("total")["words"]}

    return pipe


def expected_counts(docs: list[Item]) -> dict[str, dict]:
    counter = collections.Counter(w for d in docs for w in d.value.split())
    return {w: {"word": w, "n": n} for w, n in counter.items()}


def test_word_count_is_exact_and_side_inputs_read_it(executor, run_dir):
    docs = documents(40, 25, 60)
    result = word_count().run(docs, run_dir=run_dir, executor=executor)
    assert result.ok
    counts = expected_counts(docs)
    assert dict(result.outputs("count")) == counts
    assert result.output("total") == {"words": 1000}
    shares = dict(result.outputs("share"))
    assert len(shares) == 1000
    for doc in docs[:3]:
        for i, word in enumerate(doc.value.split()):
            assert shares[f"{doc.key}/{i}"] == {"word": word, "share": counts[word]["n"] / 1000}
    partitions = {row["key"] for row in result.ledger.rows("count")}
    assert partitions == {f"partition-{p}" for p in range(4)}


def test_values_arrive_in_item_key_order_and_a_generator_yields_keyed_outputs(executor,
                                                                            run_dir):
    pipe = Pipeline("ordered")

    @pipe.stage
    def tag(x):
        return {"parity": "odd" if x % 2 else "even", "x": x}

    @pipe.group(after=tag, by=lambda v: v["parity"], partitions=2)
    def listing(key, values):
        seen = [v["x"] for v in values]
        yield {"first": seen[0]}
        yield {"all": seen}

    result = pipe.run([Item(f"k{i:02d}", i) for i in (7, 2, 11, 4, 9, 0)], run_dir=run_dir,
                      executor=executor)
    assert result.ok
    assert dict(result.outputs("listing")) == {
        "even/0": {"first": 0}, "even/1": {"all": [0, 2, 4]},
        "odd/0": {"first": 7}, "odd/1": {"all": [7, 9, 11]}}


def test_an_empty_group_has_no_partitions_and_its_reduce_sees_nothing(executor, run_dir):
    pipe = Pipeline("empty")

    @pipe.stage
    def nothing(x):
        return x

    @pipe.group(after=nothing, by=str, when=lambda v: v < 0)
    def grouped(key, values):
        return sum(values)

    @pipe.reduce(after=grouped)
    def summed(values):
        return sorted(values)

    result = pipe.run([1, 2, 3], run_dir=run_dir, executor=executor)
    assert result.ok and result.counts["nothing"]["routed-out"] == 3
    assert result.counts["grouped"]["done"] == 0 and result.output("summed") == []


def test_a_key_function_that_raises_fails_that_item_and_the_rest_group(executor, run_dir):
    pipe = Pipeline("badkey")

    @pipe.stage
    def first(x):
        return x

    @pipe.group(after=first, by=lambda v: 10 // v, partitions=2)
    def grouped(key, values):
        return sorted(values)

    result = pipe.run([Item(str(v), v) for v in (1, 0, 2, 5, 10)], run_dir=run_dir,
                      executor=executor)
    assert not result.ok
    (failure,) = result.failures()
    assert (failure["stage"], failure["key"]) == ("first", "0")
    assert failure["error"] == ("RoutingError: the key function (by=) of group 'grouped' "
                                "raised ZeroDivisionError: integer division or modulo by zero")
    assert dict(result.outputs("grouped")) == {"10": [1], "5": [2], "2": [5], "1": [10]}


def test_a_failing_key_fails_its_partition_naming_the_key_and_the_others_go_on(executor,
                                                                             run_dir):
    pipe = Pipeline("badgroup")

    @pipe.stage
    def first(x):
        return x

    def by(v):
        return v % 8

    @pipe.group(after=first, by=by, partitions=4, retries=1, retry_backoff=0)
    def grouped(key, values):
        if key == "3":
            raise ValueError("three is not allowed")
        return sum(values)

    result = pipe.run([Item(f"{v:02d}", v) for v in range(24)], run_dir=run_dir,
                      executor=executor)
    part = {str(k): group_of(by, 4, k)[1] for k in range(8)}
    (failure,) = result.failures()
    assert (failure["stage"], failure["key"]) == ("grouped", f"partition-{part['3']}")
    assert failure["attempts"] == 2
    assert failure["error"] == "key '3': ValueError: three is not allowed"
    assert 'raise ValueError("three is not allowed")' in failure["traceback"]
    # the keys that share its partition fail with it; every other one is there
    assert dict(result.outputs("grouped")) == {
        k: sum(v for v in range(24) if v % 8 == int(k)) for k in part if part[k] != part["3"]}
    assert result.counts["grouped"]["done"] == len(set(part.values())) - 1


def test_a_rerun_runs_only_the_partitions_whose_values_changed(run_dir, tmp_path):
    log = tmp_path / "calls.log"
    docs = documents(30, 10, 40)
    first = word_count(log, partitions=8).run(docs, run_dir=run_dir)
    assert first.ok
    ran = {line.split()[1] for line in read_log(log) if line.startswith("count")}
    assert ran == set(expected_counts(docs))
    log.unlink()

    assert word_count(log, partitions=8).run(docs, run_dir=run_dir).ok
    assert read_log(log) == []  # nothing changed: nothing ran

    changed = [docs[0]._replace(value=docs[0].value + " w0 brandnew"), *docs[1:]]
    result = word_count(log, partitions=8).run(changed, run_dir=run_dir)
    assert result.ok and dict(result.outputs("count")) == expected_counts(changed)
    recounted = {line.split()[1] for line in read_log(log) if line.startswith("count")}
    parts = {key: part for key, part in _partitions(run_dir, "count").items()}
    touched = {parts[w] for w in ("w0", "brandnew")}
    assert recounted == {w for w, p in parts.items() if p in touched}
    assert len(touched) < 8 and recounted < set(parts)
    # the counts changed, so every share is recomputed, and nothing else of words is
    assert sum(line.startswith("share") for line in read_log(log)) == 302


def _partitions(run_dir: Path, stage: str) -> dict[str, int]:
    """group key -> partition, from the partition files of ``stage``."""
    import orjson

    found = {}
    for path in (run_dir / "gather" / stage).glob("part-*.tsv"):
        part = int(path.stem.split("-")[1])
        for line in path.read_bytes().splitlines():
            found[orjson.loads(line.split(b"\t", 1)[0])] = part
    return found


def test_a_side_input_changed_on_a_rerun_reruns_its_readers_only(run_dir, tmp_path):
    log = tmp_path / "calls.log"
    threshold = {"value": 3}

    def build() -> Pipeline:
        pipe = Pipeline("sides")
        limit = threshold["value"]

        @pipe.stage
        def numbers(x):
            append_log(log, f"numbers {x}")
            return x

        @pipe.reduce(after=numbers)
        def biggest(values):
            return max(values) + limit

        @pipe.stage(after=numbers, side=[biggest])
        def scaled(x, ctx):
            append_log(log, f"scaled {x}")
            return x / ctx.side("biggest")

        return pipe

    numbers = [Item(str(x), x) for x in (1, 2, 5)]
    assert build().run(numbers, run_dir=run_dir).ok
    assert sorted(read_log(log)) == ["numbers 1", "numbers 2", "numbers 5", "scaled 1",
                                     "scaled 2", "scaled 5"]
    log.unlink()
    threshold["value"] = 5  # biggest's code did not change; its parameter did
    result = build().run(numbers, run_dir=run_dir)
    assert result.ok and dict(result.outputs("scaled")) == {"1": 0.1, "2": 0.2, "5": 0.5}
    assert sorted(read_log(log)) == ["scaled 1", "scaled 2", "scaled 5"]
    assert [e["stage"] for e in read_events(run_dir)
            if e["event"] == "stage_reset" and e.get("side_inputs_changed")] == ["scaled"]


def test_a_side_mapping_looks_up_iterates_and_counts(executor, run_dir):
    pipe = Pipeline("lookups")

    @pipe.stage
    def first(x):
        return x

    @pipe.stage(after=first)
    def squares(x):
        return x * x

    @pipe.stage(after=first, side=["squares"])
    def probe(x, ctx):
        table = ctx.side("squares")
        return {"len": len(table), "keys": list(table)[:3], "mine": table[str(x)],
                "missing": table.get("nope", "absent"), "has": str(x) in table,
                "has_not": "nope" in table}

    result = pipe.run([Item(str(i), i) for i in range(5)], run_dir=run_dir, executor=executor)
    assert result.ok
    assert dict(result.outputs("probe"))["3"] == {"len": 5, "keys": ["0", "1", "2"], "mine": 9,
                                                  "missing": "absent", "has": True,
                                                  "has_not": False}


def test_reading_an_undeclared_side_input_fails_the_item_with_the_reason(run_dir):
    pipe = Pipeline("undeclared")

    @pipe.stage
    def first(x):
        return x

    @pipe.reduce(after=first)
    def total(values):
        return sum(values)

    @pipe.stage(after=first, side=[total])
    def reader(x, ctx):
        return ctx.side("first")

    result = pipe.run([Item("a", 1)], run_dir=run_dir, executor="inline")
    (failure,) = result.failures()
    assert failure["error"] == ("KeyError: \"stage 'reader' reads no side input 'first'; "
                                "it reads 'total'\"")


def test_definitions_that_cannot_work_are_refused():
    pipe = Pipeline("bad")

    @pipe.stage
    def first(x):
        return x

    with pytest.raises(StageDefinitionError, match="by= must be a function"):
        pipe.group(lambda k, v: 1, after=first, by="word")
    with pytest.raises(StageDefinitionError, match="partitions must be a positive integer"):
        pipe.group(lambda k, v: 1, after=first, by=str, partitions=0, name="zero")
    with pytest.raises(StageDefinitionError, match="takes the key and an iterator"):
        pipe.group(lambda v: 1, after=first, by=str, name="onearg")
    with pytest.raises(StageDefinitionError, match="a group needs after="):
        Pipeline("nogroup").group(lambda k, v: 1, after=[], by=str)

    @pipe.stage(after=first, side=["later"])
    def early(x):
        return x

    @pipe.stage(after=early)
    def later(x):
        return x

    with pytest.raises(GraphError, match="reads side input 'later', which is below it"):
        pipe.validate()
    crossed = Pipeline("crossed")
    crossed.stage(lambda x: x, name="a")
    crossed.stage(lambda x: x, name="b", after="a", side=["d"])
    crossed.stage(lambda x: x, name="c", after="a", side=["b"])
    crossed.stage(lambda x: x, name="d", after="c")
    with pytest.raises(GraphError, match="wait for each other through side inputs: "
                                         "b -> d -> c -> b"):
        crossed.validate()
    other = Pipeline("unknown")
    other.stage(lambda x: x, name="a", side=["ghost"])
    with pytest.raises(GraphError, match="reads side input 'ghost', which is not a stage"):
        other.validate()


def test_a_pipeline_with_a_group_or_side_inputs_cannot_be_served():
    grouped = Pipeline("g")
    grouped.stage(lambda x: x, name="a")
    grouped.group(lambda k, v: 1, after="a", by=str, name="count")
    with pytest.raises(PipelineError, match="stage 'count' is a group: it needs a whole run"):
        Service(grouped)
    reading = Pipeline("s")
    reading.stage(lambda x: x, name="a")
    reading.stage(lambda x: x, name="b", after="a")
    reading.stage(lambda x: x, name="c", after="a", side=["b"])
    with pytest.raises(PipelineError, match="stage 'c' is a reader of side inputs"):
        Service(reading)


RUNNER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {pipelines!r})
    import grouped
    grouped.pipe.run(grouped.inputs(), run_dir=sys.argv[1], cpus=2)
""")


def test_kill_9_of_the_driver_in_the_group_phase_then_resume(run_dir, tmp_path):
    """Killed while partitions run: the resumed run has the same outputs as an
    uninterrupted one, and no partition recorded done runs again."""
    sys.path.insert(0, str(PIPELINES))
    import grouped

    log = tmp_path / "calls.log"
    env = {**os.environ, "GROUP_LOG": str(log)}
    code = RUNNER.format(pipelines=str(PIPELINES))
    # the last partition to start holds the run open: it cannot finish before the kill
    proc = subprocess.Popen([sys.executable, "-c", code, str(run_dir)],
                            env={**env, "GROUP_HOLD": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while not _done_partitions(run_dir):  # until a partition is recorded done
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = _done_partitions(run_dir)
    before = len(read_log(log))

    resume = subprocess.run([sys.executable, "-c", code, str(run_dir)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert resume.returncode == 0, resume.stderr[-2000:]
    again = {grouped.partition_of(line.split()[1]) for line in read_log(log)[before:]
             if line.startswith("start")}
    assert again and not again & finished
    assert len(finished) < grouped.PARTITIONS
    with open_run(run_dir) as result:
        assert result.ok and dict(result.outputs("sums")) == grouped.expected()


def _done_partitions(run_dir: Path) -> set[str]:
    import sqlite3

    try:
        db = sqlite3.connect(f"file:{run_dir / 'ledger.db'}?mode=ro", uri=True)
        try:
            return {k for (k,) in db.execute(
                "SELECT key FROM items WHERE stage='sums' AND status='done'")}
        finally:
            db.close()
    except sqlite3.OperationalError:  # not created, or its schema not committed yet
        return set()


def test_status_and_the_report_show_partitions_and_bytes_spilled(run_dir, tmp_path):
    docs = documents(20, 10, 30)
    assert word_count(partitions=4).run(docs, run_dir=run_dir).ok
    files = list((run_dir / "gather" / "count").glob("part-*.tsv"))
    spilled = sum(f.stat().st_size for f in files)
    assert spilled > 0 and len(files) == 4

    def conveyor(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "conveyor", *args], capture_output=True,
                              text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})

    status = json.loads(conveyor("status", str(run_dir), "--json").stdout)
    assert status["spilled"] == {"count": spilled}
    assert status["stages"]["count"]["done"] == 4
    table = conveyor("status", str(run_dir)).stdout
    assert f"count (partitions, {format_size(spilled)} spilled)" in table
    report = json.loads(conveyor("report", str(run_dir), "--json").stdout)
    assert {s["stage"]: s["spilled"] for s in report["stages"]} == {
        "words": None, "count": spilled, "total": None, "share": None}


def test_one_huge_key_streams_through_its_worker_in_bounded_memory(run_dir):
    """30,000 values of 1 KB under one key: the call sees them one by one; its worker's
    peak memory grows by far less than the 30 MB they hold together."""
    pipe = Pipeline("skewed")

    @pipe.stage
    def burst(n):
        for i in range(1000):
            yield {"k": "hot" if i % 100 else f"cold{n}", "pad": "x" * 1000}

    @pipe.group(after=burst, by=lambda v: v["k"], partitions=2)
    def sizes(key, values):
        import resource

        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        count = sum(1 for v in values if len(v["pad"]) == 1000)
        grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        return {"count": count, "grew_kib": grew}

    result = pipe.run([Item(f"n{n:02d}", n) for n in range(30)], run_dir=run_dir)
    assert result.ok
    outputs = dict(result.outputs("sizes"))
    assert outputs["hot"]["count"] == 29_700
    assert all(outputs[f"cold{n}"]["count"] == 10 for n in range(30))
    assert outputs["hot"]["grew_kib"] < 8 * 1024, outputs["hot"]


def test_live_progress_names_a_group_stage_by_its_partitions(run_dir):
    from conveyor.observe.observer import Observer
    from conveyor.observe.progress import plain_lines

    class Discard:
        def emit(self, *args, **kwargs):
            pass

    observer = Observer(word_count(), Discard(), run_dir, progress=True, bench=False)
    def names() -> list[str]:
        return [line.split("] ", 1)[1].split(":")[0] for line in plain_lines(observer.model)]

    assert names() == ["words", "count (partitions)", "total", "share"]
    observer.spilled("count", 3 * 2**20)
    assert names()[1] == "count (partitions, 3 MiB spilled)"
