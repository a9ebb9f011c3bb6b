"""The engine's contract, run against every executor (see conftest.EXECUTORS).

Each test builds a small pipeline, runs it for real (worker processes for
``local``) and checks what a user relies on: outputs, keys, counts, routing,
fan-out, union, batches, reduce, context, failures and resume.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

from conveyor import InputError, Item, Pipeline, StageContractError, context, open_run
from conveyor.ledger.sqlite import SqliteLedger
from helpers import append_log, read_log


def test_map_chain_outputs_and_counts(executor, run_dir):
    pipe = Pipeline("chain")

    @pipe.stage
    def double(x):
        return x * 2

    @pipe.stage(after=double)
    def plus_one(x):
        return x + 1

    result = pipe.run([Item(f"k{i}", i) for i in range(7)], run_dir=run_dir, executor=executor)
    assert result.ok
    assert dict(result.outputs("plus_one")) == {f"k{i}": 2 * i + 1 for i in range(7)}
    assert result.counts["double"] == {"pending": 0, "running": 0, "done": 7, "failed": 0,
                                       "routed-out": 0}


def test_string_inputs_are_their_own_keys_and_others_get_stable_digests(executor, run_dir):
    pipe = Pipeline("keys")

    @pipe.stage
    def echo(v):
        return v

    result = pipe.run(["a.pdf", "b.pdf", {"n": 1}], run_dir=run_dir, executor=executor)
    keys = [k for k, _ in result.outputs("echo")]
    assert "a.pdf" in keys and "b.pdf" in keys
    digest_keys = [k for k in keys if not k.endswith(".pdf")]
    assert len(digest_keys) == 1 and len(digest_keys[0]) == 16
    # the same value gets the same key in another run directory
    again = pipe.run([{"n": 1}], run_dir=run_dir.with_name("other"), executor=executor)
    assert [k for k, _ in again.outputs("echo")] == digest_keys


def test_duplicate_input_keys_fail_before_anything_runs(executor, run_dir, tmp_path):
    log = tmp_path / "calls.log"
    pipe = Pipeline("dups")

    @pipe.stage
    def touch(v):
        append_log(log, str(v))
        return v

    with pytest.raises(InputError, match="duplicate input key 'x'"):
        pipe.run(["x", "y", "x"], run_dir=run_dir, executor=executor)
    assert read_log(log) == []
    with SqliteLedger(run_dir / "ledger.db", readonly=True) as ledger:
        assert list(ledger.rows()) == []  # nothing of the refused inputs was kept


def test_routing_by_predicate_and_routed_out(executor, run_dir):
    pipe = Pipeline("route")

    @pipe.stage
    def classify(n):
        return {"n": n, "size": "big" if n >= 10 else "small" if n >= 0 else "negative"}

    @pipe.stage(after=classify, when=lambda v: v["size"] == "big")
    def big(v):
        return "big"

    @pipe.stage(after=classify, when=lambda v: v["size"] == "small")
    def small(v):
        return "small"

    result = pipe.run([Item(str(n), n) for n in (1, 2, 20, 30, 40, -5)], run_dir=run_dir,
                      executor=executor)
    assert result.ok  # routed-out is a finished state, not a failure
    assert result.counts["classify"]["done"] == 5
    assert result.counts["classify"]["routed-out"] == 1
    assert sorted(k for k, _ in result.outputs("big")) == ["20", "30", "40"]
    assert sorted(k for k, _ in result.outputs("small")) == ["1", "2"]


def test_fan_out_children_keys(executor, run_dir):
    pipe = Pipeline("fan")

    @pipe.stage
    def split(text):
        yield from text.split()

    @pipe.stage(after=split)
    def upper(word):
        return word.upper()

    result = pipe.run([Item("doc", "a bb ccc")], run_dir=run_dir, executor=executor)
    assert dict(result.outputs("upper")) == {"doc/0": "A", "doc/1": "BB", "doc/2": "CCC"}
    assert result.counts["split"]["done"] == 1
    assert result.counts["upper"]["done"] == 3


def test_fan_out_with_explicit_item_keys(executor, run_dir):
    pipe = Pipeline("fan-items")

    @pipe.stage
    def split(text):
        for word in text.split():
            yield Item(f"word:{word}", len(word))

    @pipe.stage(after=split)
    def twice(n):
        return 2 * n

    result = pipe.run([Item("doc", "a bb")], run_dir=run_dir, executor=executor)
    assert dict(result.outputs("twice")) == {"word:a": 2, "word:bb": 4}


def test_a_generator_yielding_nothing_finishes_its_item(executor, run_dir):
    pipe = Pipeline("empty-gen")

    @pipe.stage
    def nothing(v):
        yield from ()

    @pipe.stage(after=nothing)
    def never(v):
        raise AssertionError("no value should arrive")

    result = pipe.run(["a"], run_dir=run_dir, executor=executor)
    assert result.ok and result.counts["nothing"]["done"] == 1
    assert result.counts["never"]["done"] == 0


def test_union_of_a_diamond_keeps_both_paths(executor, run_dir):
    """The issue's contract: c after [a, b] where b is after a."""
    pipe = Pipeline("diamond")

    @pipe.stage
    def a(x):
        return {"x": x, "ok": x % 2 == 0}

    @pipe.stage(after=a, when=lambda v: v["ok"])
    def b(v):
        return {**v, "via": "b"}

    @pipe.stage(after=[a, b])
    def c(v):
        return v.get("via", "a")

    result = pipe.run([Item(str(i), i) for i in range(4)], run_dir=run_dir, executor=executor)
    assert result.ok
    assert dict(result.outputs("c")) == {"0": "a", "1": "a", "2": "a", "3": "a",
                                         "0@b": "b", "2@b": "b"}


def test_batch_stage_gets_lists_and_keys_line_up(executor, run_dir, tmp_path):
    log = tmp_path / "batches.log"
    pipe = Pipeline("batch")

    @pipe.stage(batch_size=4)
    def square(values):
        append_log(log, str(len(values)))
        return [v * v for v in values]

    result = pipe.run([Item(f"i{i:02d}", i) for i in range(10)], run_dir=run_dir,
                      executor=executor)
    assert dict(result.outputs("square")) == {f"i{i:02d}": i * i for i in range(10)}
    sizes = [int(n) for n in read_log(log)]
    assert sum(sizes) == 10 and max(sizes) <= 4
    assert max(sizes) == 4  # batches really were assembled


def test_a_value_that_breaks_its_batch_fails_alone(executor, run_dir, tmp_path):
    log = tmp_path / "calls.log"
    pipe = Pipeline("poison-batch")

    @pipe.stage(batch_size=8, batch_wait=1.0)
    def invert(values):
        append_log(log, ",".join(map(str, values)))
        return [1 / v for v in values]

    result = pipe.run([Item(f"i{i}", i) for i in range(-4, 4)], run_dir=run_dir,
                      executor=executor)
    assert result.counts["invert"]["done"] == 7
    [failure] = result.failures()
    assert failure["key"] == "i0" and "ZeroDivisionError" in failure["error"]
    assert dict(result.outputs("invert")) == {f"i{i}": 1 / i for i in range(-4, 4) if i}
    calls = read_log(log)
    assert calls[0] == "-4,-3,-2,-1,0,1,2,3"  # one batch, then halves until 0 is alone
    assert calls[1:] == ["-4,-3,-2,-1", "0,1,2,3", "0,1", "0", "1", "2,3"]


def test_class_stage_runs_setup_once_per_worker(executor, run_dir, tmp_path):
    log = tmp_path / "setup.log"
    pipe = Pipeline("setup")

    @pipe.stage(cpus=1)
    class Model:
        def setup(self):
            time.sleep(0.2)  # a model's load: the setup seconds reported include it
            append_log(log, f"setup {os.getpid()}:{id(self)}")
            self.factor = 3

        def __call__(self, x):
            append_log(log, f"call {os.getpid()}:{id(self)}")
            return x * self.factor

    result = pipe.run([Item(str(i), i) for i in range(12)], run_dir=run_dir,
                      executor=executor, cpus=2)
    assert dict(result.outputs("Model")) == {str(i): 3 * i for i in range(12)}
    lines = read_log(log)
    setups = [line.split()[1] for line in lines if line.startswith("setup")]
    calls = {line.split()[1] for line in lines if line.startswith("call")}
    assert len(setups) == len(set(setups)), "setup ran twice in one worker"
    assert calls <= set(setups)
    assert result.setups["Model"]["setups"] == len(setups)
    assert result.setups["Model"]["setup_s"] >= 0.2


def test_setup_and_every_call_of_a_worker_run_on_one_thread(executor, run_dir):
    """What setup() makes may be bound to its thread (a sqlite3 connection refuses
    every other thread): the calls of a worker run on the thread that ran setup()."""
    pipe = Pipeline("one-thread")

    @pipe.stage(cpus=1)
    class Count:
        def setup(self):
            self.db = sqlite3.connect(":memory:")
            self.db.execute("create table seen (x int)")

        def __call__(self, x):
            self.db.execute("insert into seen values (?)", (x,))
            return self.db.execute("select count(*) from seen").fetchone()[0]

    # Enough items that a Ray worker gets many calls, each of several tasks.
    result = pipe.run([Item(str(i), i) for i in range(200)], run_dir=run_dir,
                      executor=executor, cpus=1)
    assert result.ok, result.failures()
    assert sorted(dict(result.outputs("Count")).values()) == list(range(1, 201))


def test_load_prepares_each_value_before_the_call(executor, run_dir, tmp_path):
    """A class stage's ``load(value)`` runs per value (in a worker, ahead of the calls);
    ``__call__`` gets what it returned, a batch stage the list of them."""
    log = tmp_path / "loads.log"
    pipe = Pipeline("load")

    @pipe.stage(batch_size=3, prefetch=1)
    class Scale:
        def setup(self):
            self.factor = 10

        def load(self, value):
            append_log(log, str(value))
            return {"loaded": value * self.factor}

        def __call__(self, values):
            return [v["loaded"] + 1 for v in values]

    @pipe.stage(after=Scale)
    class Pages:
        def load(self, value):
            return list(range(value % 4))

        def __call__(self, pages):
            return len(pages)

    result = pipe.run([Item(f"i{i}", i) for i in range(8)], run_dir=run_dir,
                      executor=executor)
    assert result.ok, result.failures()
    assert dict(result.outputs("Scale")) == {f"i{i}": 10 * i + 1 for i in range(8)}
    assert dict(result.outputs("Pages")) == {f"i{i}": (10 * i + 1) % 4 for i in range(8)}
    assert sorted(map(int, read_log(log))) == list(range(8))  # once per value


@pytest.mark.parametrize("executor", ["local", pytest.param("ray", marks=pytest.mark.ray)],
                         indirect=True)
def test_a_worker_loads_the_next_batch_while_a_call_runs(executor, run_dir, tmp_path):
    """A worker's loader runs ``load()`` ahead of the calls (``inline`` runs it in the
    call): the first batch's call sees the next batch's load begin while it runs."""
    pipe = Pipeline("load-ahead")

    @pipe.stage(batch_size=2, prefetch=1, cpus=1)
    class Model:
        def load(self, value):
            (tmp_path / f"loaded-{value}").touch()
            return value

        def __call__(self, values):
            if 0 not in values:
                return [True] * len(values)
            # Polls for an event; the give-up only turns a loader that never runs ahead
            # into a failed assertion instead of a hung test.
            deadline = time.monotonic() + 60
            while not (tmp_path / "loaded-2").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            return [(tmp_path / "loaded-2").exists()] * len(values)

    result = pipe.run([Item(str(i), i) for i in range(4)], run_dir=run_dir,
                      executor=executor, cpus=1)
    assert result.ok, result.failures()
    assert dict(result.outputs("Model")) == {str(i): True for i in range(4)}


def test_an_error_in_load_fails_only_its_item_and_is_retried(executor, run_dir, tmp_path):
    """Like an error in the call: the item is retried, then failed with a traceback
    through ``load``; its batch-mates are called without it."""
    log = tmp_path / "loads.log"
    marker = tmp_path / "flaky-failed-once"
    pipe = Pipeline("load-errors")

    @pipe.stage(batch_size=4, batch_wait=1.0, retries=1, retry_backoff=0)
    class Read:
        def load(self, value):
            append_log(log, str(value))
            if value == 13:
                raise OSError("page 13 is unreadable")
            if value == 7 and not marker.exists():
                marker.write_text("x")
                raise OSError("transient")
            return value

        def __call__(self, values):
            assert 13 not in values
            return [v * 2 for v in values]

    result = pipe.run([Item(str(i), i) for i in (1, 7, 13, 2)], run_dir=run_dir,
                      executor=executor)
    assert dict(result.outputs("Read")) == {"1": 2, "2": 4, "7": 14}
    (failure,) = result.failures()
    assert failure["key"] == "13" and failure["attempts"] == 2
    assert failure["error"] == "OSError: page 13 is unreadable"
    assert ", in load\n" in failure["traceback"]
    assert 'raise OSError("page 13 is unreadable")' in failure["traceback"]
    assert read_log(log).count("13") == 2 and read_log(log).count("7") == 2


def test_reduce_sees_every_value_in_key_order(executor, run_dir):
    pipe = Pipeline("reduce")

    @pipe.stage
    def value(x):
        return x

    @pipe.reduce(after=value, when=lambda v: v != 3)
    def total(values):
        values = list(values)
        return {"values": values, "sum": sum(values)}

    @pipe.stage(after=total)
    def report(summary):
        return f"sum={summary['sum']}"

    result = pipe.run([Item(f"k{i}", i) for i in (5, 1, 3, 2)], run_dir=run_dir,
                      executor=executor)
    assert result.ok
    assert result.output("total") == {"values": [1, 2, 5], "sum": 8}
    assert dict(result.outputs("total")) == {"total": {"values": [1, 2, 5], "sum": 8}}
    assert dict(result.outputs("report")) == {"total": "sum=8"}


def test_reduce_runs_over_an_empty_input(executor, run_dir):
    pipe = Pipeline("reduce-empty")

    @pipe.stage
    def value(x):
        return x

    @pipe.reduce(after=value)
    def count(values):
        return len(list(values))

    assert pipe.run([], run_dir=run_dir, executor=executor).output("count") == 0


def test_context_gives_key_attempt_and_item_folder(executor, run_dir):
    pipe = Pipeline("ctx")

    @pipe.stage
    def write(v, ctx):
        path = ctx.output_dir / "out.txt"
        path.write_text(f"{ctx.key}:{v}")
        assert context() is ctx
        return {"path": str(path), "attempt": ctx.attempt, "stage": ctx.stage,
                "threads": ctx.resources.threads}

    result = pipe.run([Item("a/b", 1)], run_dir=run_dir, executor=executor)
    (key, out), = result.outputs("write")
    assert key == "a/b" and out["attempt"] == 1 and out["stage"] == "write"
    assert Path(out["path"]).read_text() == "a/b:1"
    assert Path(out["path"]).is_relative_to(run_dir)


def test_errors_are_retried_then_failed_with_traceback(executor, run_dir, tmp_path):
    log = tmp_path / "attempts.log"
    pipe = Pipeline("errors")

    @pipe.stage(retries=2, retry_backoff=0.01)
    def fragile(x):
        append_log(log, str(x))
        if x == 13:
            raise ValueError("thirteen is unlucky")
        return x

    result = pipe.run([Item(str(i), i) for i in (1, 13, 2)], run_dir=run_dir,
                      executor=executor)
    assert not result.ok
    assert result.counts["fragile"]["done"] == 2
    assert result.counts["fragile"]["failed"] == 1
    (failure,) = result.failures()
    assert failure["stage"] == "fragile" and failure["key"] == "13"
    assert failure["attempts"] == 3
    assert failure["error"] == "ValueError: thirteen is unlucky"
    assert 'raise ValueError("thirteen is unlucky")' in failure["traceback"]
    assert read_log(log).count("13") == 3


def test_a_retry_that_succeeds_is_done(executor, run_dir, tmp_path):
    marker = tmp_path / "failed-once"
    pipe = Pipeline("flaky")

    @pipe.stage(retries=1, retry_backoff=0)
    def flaky(x, ctx):
        if not marker.exists():
            marker.write_text("x")
            raise RuntimeError("transient")
        return ctx.attempt

    result = pipe.run(["only"], run_dir=run_dir, executor=executor)
    assert result.ok and dict(result.outputs("flaky")) == {"only": 2}


def test_a_raising_predicate_fails_the_item(executor, run_dir):
    pipe = Pipeline("bad-when")

    @pipe.stage
    def produce(x):
        return {"x": x}

    @pipe.stage(after=produce, when=lambda v: v["missing"])
    def consume(v):
        return v

    result = pipe.run(["a"], run_dir=run_dir, executor=executor)
    (failure,) = result.failures()
    assert failure["stage"] == "produce"
    assert "when= predicate of stage 'consume' raised KeyError" in failure["error"]


def test_batch_returning_wrong_length_stops_the_run(executor, run_dir):
    pipe = Pipeline("bad-batch")

    # a partial batch waits (up to a minute) for the rest: one call gets all three values
    @pipe.stage(batch_size=3, batch_wait=60)
    def drop_one(values):
        return values[:-1]

    said = ("stage 'drop_one' is a batch stage: it was called with 3 values and must return "
            "a list of 3, got 2 values")
    with pytest.raises(StageContractError) as raised:
        pipe.run([Item(str(i), i) for i in range(3)], run_dir=run_dir, executor=executor)
    assert str(raised.value) == said
    run = open_run(run_dir)
    assert run.counts["drop_one"] == {"pending": 0, "running": 0, "done": 0, "failed": 3,
                                      "routed-out": 0}  # every item of the call
    assert sorted((f["key"], f["error"]) for f in run.failures()) == [
        ("0", said), ("1", said), ("2", said)]


def test_unserialisable_output_stops_the_run(executor, run_dir):
    pipe = Pipeline("bad-output")

    @pipe.stage
    def make_set(x):
        return {1, 2}

    with pytest.raises(StageContractError,
                       match="stage 'make_set' returned an unserialisable output"):
        pipe.run(["a"], run_dir=run_dir, executor=executor)


def test_rerun_reuses_finished_items_and_adds_new_inputs(executor, run_dir, tmp_path):
    log = tmp_path / "calls.log"
    pipe = Pipeline("resume")

    @pipe.stage
    def first(x):
        append_log(log, f"first {x}")
        return x

    @pipe.stage(after=first)
    def second(x):
        append_log(log, f"second {x}")
        return x * 10

    pipe.run(["a", "b"], run_dir=run_dir, executor=executor)
    pipe.run(["a", "b"], run_dir=run_dir, executor=executor)
    assert sorted(read_log(log)) == ["first a", "first b", "second a", "second b"]
    result = pipe.run(["a", "b", "c"], run_dir=run_dir, executor=executor)
    assert sorted(read_log(log)) == ["first a", "first b", "first c",
                                     "second a", "second b", "second c"]
    assert dict(result.outputs("second")) == {"a": "aaaaaaaaaa", "b": "bbbbbbbbbb",
                                              "c": "cccccccccc"}
    # no inputs: resume what the run directory has
    assert pipe.run(run_dir=run_dir, executor=executor).ok
    assert len(read_log(log)) == 6


def test_version_bump_recomputes_that_stage_and_below_only(executor, run_dir, tmp_path):
    log = tmp_path / "calls.log"

    def build(version):
        pipe = Pipeline("versions")

        @pipe.stage
        def top(x):
            append_log(log, "top")
            return x

        @pipe.stage(after=top, version=version)
        def middle(x):
            append_log(log, "middle")
            return x

        @pipe.stage(after=middle)
        def bottom(x):
            append_log(log, "bottom")
            return x

        return pipe

    build("1").run(["a", "b"], run_dir=run_dir, executor=executor)
    build("1").run(["a", "b"], run_dir=run_dir, executor=executor)
    assert sorted(read_log(log)) == ["bottom"] * 2 + ["middle"] * 2 + ["top"] * 2
    result = build("2").run(["a", "b"], run_dir=run_dir, executor=executor)
    assert sorted(read_log(log)) == ["bottom"] * 4 + ["middle"] * 4 + ["top"] * 2
    assert result.ok


def test_failed_items_are_retried_on_rerun(executor, run_dir, tmp_path):
    fixed = tmp_path / "fixed"
    pipe = Pipeline("retry-on-rerun")

    @pipe.stage
    def needs_fix(x):
        if not fixed.exists():
            raise RuntimeError("not yet")
        return x

    assert not pipe.run(["a"], run_dir=run_dir, executor=executor).ok
    fixed.write_text("")
    assert pipe.run(run_dir=run_dir, executor=executor).ok


def test_large_values_travel_as_files(executor, run_dir):
    pipe = Pipeline("large")

    @pipe.stage
    def big(n):
        return "x" * n

    @pipe.stage(after=big)
    def measure(text):
        return len(text)

    result = pipe.run([Item("small", 10), Item("large", 200_000)], run_dir=run_dir,
                      executor=executor)
    assert dict(result.outputs("measure")) == {"small": 10, "large": 200_000}
    assert dict(result.outputs("big"))["large"] == "x" * 200_000
    files = list((run_dir / "values").rglob("*.json"))
    assert len(files) == 1 and files[0].stat().st_size == 200_002  # the JSON string
