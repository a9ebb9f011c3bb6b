"""Retries: the back-off between attempts, and which failed items a rerun retries.

README: "A stage that raises is retried up to ``retries`` times (back-off
``retry_backoff``·2ⁿ seconds)". The engine (``Engine._judge``) schedules the
retry after failed attempt ``n`` (1 for the first call) no earlier than
``retry_backoff * 2 ** (n - 1)`` seconds after it judged the failure: the
first retry waits ``retry_backoff``, the second twice that, and so on. The
stage logs when each attempt started and when it raised, so the gaps are
checked as lower bounds that hold by construction.

``pipe.run(..., retry=...)``: True (the default) gives failed items of every
stage a fresh set of retries, a list of names only those stages' items,
False none. Each stage logs its calls, so exactly what ran again is visible.
"""

from __future__ import annotations

import os
from pathlib import Path

from conveyor import Item, Pipeline
from helpers import append_log, read_log

BACKOFF = 0.2
RETRIES = 3


def test_each_retry_waits_at_least_the_doubling_back_off(executor, run_dir, tmp_path):
    log = tmp_path / "attempts.log"
    pipe = Pipeline("backoff")

    @pipe.stage(retries=RETRIES, retry_backoff=BACKOFF)
    def flaky(x, ctx):
        import time

        append_log(log, f"start {ctx.key} {ctx.attempt} {time.time()!r}")
        if ctx.key == "bad" or ctx.attempt <= 2:
            append_log(log, f"raise {ctx.key} {ctx.attempt} {time.time()!r}")
            raise RuntimeError(f"attempt {ctx.attempt} of {ctx.key}")
        return ctx.attempt

    result = pipe.run([Item("bad", 0), Item("late", 1)], run_dir=run_dir, executor=executor)

    # "late" fails twice and succeeds on its third attempt; "bad" uses every attempt.
    assert dict(result.outputs("flaky")) == {"late": 3}
    (failure,) = result.failures()
    assert failure["key"] == "bad" and failure["attempts"] == RETRIES + 1
    assert failure["error"] == f"RuntimeError: attempt {RETRIES + 1} of bad"

    events: dict[tuple[str, str], dict[int, float]] = {}
    for line in read_log(log):
        what, key, attempt, t = line.split()
        events.setdefault((what, key), {})[int(attempt)] = float(t)
    assert sorted(events[("start", "bad")]) == [1, 2, 3, 4]
    assert sorted(events[("start", "late")]) == [1, 2, 3]
    for key in ("bad", "late"):
        starts, raised = events[("start", key)], events[("raise", key)]
        for attempt in sorted(starts)[1:]:
            waited = starts[attempt] - raised[attempt - 1]
            backoff = BACKOFF * 2 ** (attempt - 2)  # after failed attempt n: BACKOFF·2**(n-1)
            assert waited >= backoff, (key, attempt, waited, backoff)


# -- pipe.run(retry=...) ----------------------------------------------------------------------

def retry_pipeline(log: Path, fail_first: Path, fail_second: Path) -> Pipeline:
    """first -> second -> third; ``first`` fails x1 and ``second`` fails x2 while their
    marker files exist. Every call is logged as "stage key attempt"."""
    pipe = Pipeline("retry-choice")

    @pipe.stage(retries=1, retry_backoff=0)
    def first(x, ctx):
        append_log(log, f"first {ctx.key} {ctx.attempt}")
        if ctx.key == "x1" and os.path.exists(fail_first):
            raise RuntimeError("first is broken for x1")
        return x + "-1"

    @pipe.stage(after=first, retries=1, retry_backoff=0)
    def second(x, ctx):
        append_log(log, f"second {ctx.key} {ctx.attempt}")
        if ctx.key == "x2" and os.path.exists(fail_second):
            raise RuntimeError("second is broken for x2")
        return x + "-2"

    @pipe.stage(after=second)
    def third(x, ctx):
        append_log(log, f"third {ctx.key} {ctx.attempt}")
        return x + "-3"

    return pipe


def counts(result) -> dict[str, tuple[int, int]]:
    """(done, failed) per stage; nothing pending or running after a run."""
    out = {}
    for stage, c in result.counts.items():
        assert c["pending"] == c["running"] == 0, (stage, c)
        out[stage] = (c["done"], c["failed"])
    return out


def test_retry_chooses_which_failed_items_run_again(executor, run_dir, tmp_path):
    log = tmp_path / "calls.log"
    fail_first, fail_second = tmp_path / "fail-first", tmp_path / "fail-second"
    fail_first.write_text("")
    fail_second.write_text("")
    pipe = retry_pipeline(log, fail_first, fail_second)
    inputs = [Item(k, k) for k in ("x1", "x2", "x3")]

    def run(**options):
        log.unlink(missing_ok=True)
        result = pipe.run(inputs, run_dir=run_dir, executor=executor, **options)
        return result, sorted(read_log(log))

    result, calls = run()
    assert calls == ["first x1 1", "first x1 2", "first x2 1", "first x3 1",
                     "second x2 1", "second x2 2", "second x3 1", "third x3 1"]
    assert counts(result) == {"first": (2, 1), "second": (1, 1), "third": (1, 0)}
    assert {(f["stage"], f["key"], f["attempts"]) for f in result.failures()} == {
        ("first", "x1", 2), ("second", "x2", 2)}

    # The causes are fixed; retry=False retries nothing: the failures stay as they were.
    fail_first.unlink()
    fail_second.unlink()
    result, calls = run(retry=False)
    assert calls == []
    assert counts(result) == {"first": (2, 1), "second": (1, 1), "third": (1, 0)}

    # retry=["second"]: only second's failed item runs again (with fresh attempts), and
    # what it produces flows on below; first's failed item is left as it is.
    result, calls = run(retry=["second"])
    assert calls == ["second x2 1", "third x2 1"]
    assert counts(result) == {"first": (2, 1), "second": (2, 0), "third": (2, 0)}
    assert [(f["stage"], f["key"]) for f in result.failures()] == [("first", "x1")]
    assert dict(result.outputs("third")) == {"x2": "x2-1-2-3", "x3": "x3-1-2-3"}

    # retry=True (the default): every stage's failed items; x1 then runs all the way down.
    result, calls = run()
    assert calls == ["first x1 1", "second x1 1", "third x1 1"]
    assert result.ok
    assert counts(result) == {"first": (3, 0), "second": (3, 0), "third": (3, 0)}
    assert dict(result.outputs("third")) == {k: f"{k}-1-2-3" for k in ("x1", "x2", "x3")}

    # Nothing is left to retry: a further run runs nothing.
    result, calls = run()
    assert calls == []
    assert result.ok


def test_retry_of_a_stage_gives_its_items_a_fresh_set_of_attempts(executor, run_dir, tmp_path):
    """A retried item gets ``retries`` more attempts, not what was left of the old ones."""
    log = tmp_path / "calls.log"
    fail_first, fail_second = tmp_path / "fail-first", tmp_path / "fail-second"
    fail_second.write_text("")
    pipe = retry_pipeline(log, fail_first, fail_second)
    inputs = [Item("x2", "x2")]

    first = pipe.run(inputs, run_dir=run_dir, executor=executor)
    assert [(f["stage"], f["attempts"]) for f in first.failures()] == [("second", 2)]
    log.unlink()
    again = pipe.run(inputs, run_dir=run_dir, executor=executor, retry=["second"])
    assert sorted(read_log(log)) == ["second x2 1", "second x2 2"]  # attempts 1 and 2 again
    (failure,) = again.failures()
    assert failure["stage"] == "second" and failure["attempts"] == 2
    assert failure["error"] == "RuntimeError: second is broken for x2"
