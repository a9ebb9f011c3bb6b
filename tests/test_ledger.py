"""The ledger contract, run against every backend (SQLite and in-memory).

Plus what only the SQLite ledger promises: committed groups survive a killed
process, uncommitted ones vanish whole, and the file passes integrity checks.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conveyor import codec
from conveyor.errors import IllegalTransition, InputError
from conveyor.ledger import KeyCollision, Ledger, Output, Record, Status, blocks, transition
from conveyor.ledger.memory import MemoryLedger
from conveyor.ledger.sqlite import SqliteLedger
from conveyor.store import Stored


def value(v: object) -> Stored:
    data = codec.encode(v)
    return Stored(data, None, codec.digest(data), len(data))


@pytest.fixture(params=["sqlite", "memory"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Ledger:
    if request.param == "sqlite":
        led: Ledger = SqliteLedger(tmp_path / "ledger.db")
    else:
        led = MemoryLedger()
    yield led
    led.close()


@pytest.fixture
def item_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inputs taken in as item rows however many: the tests using it are about that path
    (compared in chunks of 5,000), which a small run's inputs and items split from their
    blocks take; large runs' blocks have their own tests (test_blocks)."""
    monkeypatch.setattr(blocks, "SMALLEST_RUN", 10**9)


def run_one(ledger: Ledger, stage: str, outputs: list[Output], now: float = 1.0) -> int:
    (claim,) = ledger.claim(stage, 1, "w", now)
    ledger.complete(claim.id, outputs, Status.DONE, now)
    return claim.id


# -- the state machine -----------------------------------------------------------------

@pytest.mark.parametrize("old,new", [
    ("pending", "running"), ("running", "done"), ("running", "failed"),
    ("running", "routed-out"), ("running", "pending"), ("failed", "pending"),
    ("done", "pending"), ("routed-out", "pending"), ("done", "routed-out"),
    ("routed-out", "done")])
def test_legal_transitions(old, new):
    assert transition(old, new) is Status(new)


@pytest.mark.parametrize("old,new", [
    ("pending", "done"), ("pending", "failed"), ("pending", "routed-out"),
    ("done", "running"), ("done", "failed"), ("failed", "done"), ("failed", "running"),
    ("routed-out", "failed"), ("pending", "pending")])
def test_illegal_transitions_are_refused(old, new):
    with pytest.raises(IllegalTransition, match=f"from {old} to {new}"):
        transition(old, new)


def test_completing_a_row_that_is_not_running_is_refused(ledger):
    ledger.add_inputs("a", [("k", value(1))])
    item_id = run_one(ledger, "a", [])
    with pytest.raises(IllegalTransition):
        ledger.complete(item_id, [], Status.DONE, 2.0)
    with pytest.raises(IllegalTransition):
        ledger.fail(item_id, "boom", None, 2.0, None)


# -- inputs ----------------------------------------------------------------------------------

def test_inputs_become_pending_rows_and_duplicates_are_refused(ledger):
    report = ledger.add_inputs("a", [("x", value(1)), ("y", value(2))])
    assert report.added == 2 and report.missing == []
    assert ledger.counts() == {"a": {"pending": 2}}
    with pytest.raises(InputError, match="duplicate input key 'z'"):
        ledger.add_inputs("a", [("z", value(1)), ("w", value(2)), ("z", value(3))])


def test_duplicates_across_chunks_are_found(ledger, item_rows):
    inputs = [(f"k{i}", value(i)) for i in range(6000)] + [("k17", value(0))]
    with pytest.raises(InputError, match="duplicate input key 'k17'"):
        ledger.add_inputs("a", inputs)


def test_rerun_inputs_unchanged_changed_missing(ledger):
    ledger.add_inputs("a", [("x", value(1)), ("y", value(2)), ("z", value(3))])
    x = run_one(ledger, "a", [Output("x", value("X"), ("b",))])
    report = ledger.add_inputs("a", [("x", value(1)), ("y", value(20)), ("n", value(4))])
    assert (report.added, report.changed, report.unchanged) == (1, 1, 1)
    assert report.missing == ["z"]
    rows = {r["key"]: r for r in ledger.rows("a")}
    assert rows["x"]["status"] == "done" and rows["x"]["id"] == x
    assert rows["y"]["status"] == "pending"


@pytest.mark.parametrize("repeat", ["k3", "k6500", "new"])
def test_a_rerun_finds_a_repeated_key_across_chunks(ledger, item_rows, repeat):
    """A rerun compares its inputs chunk by chunk (5,000 at a time in SQLite): a key given
    again in a later chunk is refused whether it was held before (k3), changed (k6500) or
    is new to this run."""
    ledger.add_inputs("a", [(f"k{i}", value(i)) for i in range(7000)])
    ledger.commit()
    inputs = [(f"k{i}", value(-i if i == 6500 else i)) for i in range(7000)]
    inputs.insert(10, ("new", value("n")))
    again = ("new", value("n")) if repeat == "new" else (repeat, value(0))
    with pytest.raises(InputError, match=f"duplicate input key '{repeat}'"):
        ledger.add_inputs("a", [*inputs, again])


def test_a_rerun_across_chunks_counts_changed_new_and_missing(ledger, item_rows):
    ledger.add_inputs("a", [(f"k{i}", value(i)) for i in range(12000)])
    done = run_one(ledger, "a", [Output("k0", value("K"), ("b",))])
    inputs = [(f"k{i}", value(-i if i % 1000 == 999 else i)) for i in range(12000)
              if i not in (5, 11001)]
    inputs[6000:6000] = [(f"n{i}", value(i)) for i in range(3)]
    report = ledger.add_inputs("a", inputs)
    assert (report.added, report.changed, report.unchanged) == (3, 12, 12000 - 2 - 12)
    assert report.missing == ["k11001", "k5"]
    rows = {r["key"]: r for r in ledger.rows("a")}
    assert rows["k0"]["status"] == "done" and rows["k0"]["id"] == done
    assert rows["k999"]["status"] == "pending" and "n2" in rows
    claims = ledger.claim("a", 20000, "w", 2.0)
    assert codec.decode(next(c for c in claims if c.key == "k1999").data) == -1999
    assert [c.key for c in claims][-3:] == ["n0", "n1", "n2"]  # new rows come last


@pytest.mark.parametrize("order", ["same", "reversed", "shuffled"])
def test_a_rerun_finds_its_inputs_in_any_order(ledger, item_rows, order):
    """The SQLite ledger reads a rerun's rows in the order they were first given and looks
    up only the keys that are not there: any order finds every row."""
    first = [(f"k{i}", value(i)) for i in range(11000)]
    ledger.add_inputs("a", first)
    again = {"same": first, "reversed": first[::-1],
             "shuffled": sorted(first, key=lambda kv: hash(kv[0]) % 7)}[order]
    given = [(k, value("new") if k == "k123" else v) for k, v in again if k != "k77"]
    report = ledger.add_inputs("a", [*given, ("n", value(0))])
    assert (report.added, report.changed, report.unchanged, report.missing) == \
        (1, 1, 10998, ["k77"])
    assert ledger.counts() == {"a": {"pending": 11001}}


def test_a_rerun_in_the_first_order_finds_the_one_changed_value(ledger, item_rows):
    first = [(f"k{i}", value(i)) for i in range(11000)]
    ledger.add_inputs("a", first)
    report = ledger.add_inputs("a", [(k, value("x") if k == "k6001" else v) for k, v in first])
    assert (report.added, report.changed, report.unchanged, report.missing) == \
        (0, 1, 10999, [])
    claims = {c.key: codec.decode(c.data) for c in ledger.claim("a", 20000, "w", 1.0)}
    assert len(claims) == 11000 and claims["k6001"] == "x" and claims["k6000"] == 6000


def test_a_changed_input_drops_what_was_derived_from_it(ledger):
    ledger.add_inputs("a", [("x", value(1))])
    run_one(ledger, "a", [Output("x", value(10), ("b",))])
    run_one(ledger, "b", [Output("x", value(100), ("c",))])
    assert ledger.counts() == {"a": {"done": 1}, "b": {"done": 1}, "c": {"pending": 1}}
    ledger.add_inputs("a", [("x", value(2))])
    assert ledger.counts() == {"a": {"pending": 1}}
    (claim,) = ledger.claim("a", 5, "w", 1.0)
    assert codec.decode(claim.data) == 2 and claim.attempt == 1


# -- work ---------------------------------------------------------------------------------------

def test_claim_complete_routes_outputs_downstream(ledger):
    ledger.add_inputs("a", [("doc", value("text"))])
    (claim,) = ledger.claim("a", 10, "w1", 5.0)
    assert claim.key == "doc" and claim.attempt == 1 and codec.decode(claim.data) == "text"
    assert ledger.counts() == {"a": {"running": 1}}
    outs = [Output("doc/0", value("t0"), ("b",)), Output("doc/1", value("t1"), ("b", "c"))]
    assert ledger.complete(claim.id, outs, Status.DONE, 6.0) is Status.DONE
    assert ledger.counts() == {"a": {"done": 1}, "b": {"pending": 2}, "c": {"pending": 1}}
    assert [(k, codec.decode(d)) for k, d, _ in ledger.outputs("a")] == [("doc/0", "t0"),
                                                                        ("doc/1", "t1")]
    claims = ledger.claim("b", 10, "w2", 7.0)
    assert [c.key for c in claims] == ["doc/0", "doc/1"]
    assert [codec.decode(c.data) for c in claims] == ["t0", "t1"]


def test_claim_respects_limit_and_order(ledger):
    ledger.add_inputs("a", [(f"k{i}", value(i)) for i in range(5)])
    assert [c.key for c in ledger.claim("a", 2, "w", 1.0)] == ["k0", "k1"]
    assert [c.key for c in ledger.claim("a", 10, "w", 1.0)] == ["k2", "k3", "k4"]
    assert ledger.claim("a", 10, "w", 1.0) == []


def test_fail_with_retry_backs_off_then_fails(ledger):
    ledger.add_inputs("a", [("k", value(1))])
    (claim,) = ledger.claim("a", 1, "w", 10.0)
    assert ledger.fail(claim.id, "E: boom", "Traceback...", 10.0, retry_at=12.0) \
        is Status.PENDING
    assert ledger.claim("a", 1, "w", 11.0) == []
    assert ledger.next_retry("a") == 12.0
    (again,) = ledger.claim("a", 1, "w", 12.5)
    assert again.attempt == 2
    assert ledger.fail(again.id, "E: boom", "Traceback...", 13.0, retry_at=None) \
        is Status.FAILED
    assert ledger.failures() == [{"stage": "a", "key": "k", "error": "E: boom",
                                  "traceback": "Traceback...", "attempts": 2}]
    assert ledger.retry_failed("a") == 1
    (third,) = ledger.claim("a", 1, "w", 14.0)
    assert third.attempt == 1  # a retried failure starts counting again


def test_release_does_not_count_an_attempt(ledger):
    ledger.add_inputs("a", [("k", value(1))])
    (claim,) = ledger.claim("a", 1, "w", 1.0)
    ledger.release([claim.id])
    (again,) = ledger.claim("a", 1, "w", 2.0)
    assert again.attempt == 1


def test_recover_puts_running_rows_back_keeping_attempts(ledger):
    ledger.add_inputs("a", [("k", value(1)), ("j", value(2))])
    ledger.claim("a", 2, "w", 1.0)
    assert ledger.recover() == 2
    claims = ledger.claim("a", 2, "w", 2.0)
    assert [c.attempt for c in claims] == [2, 2]


def test_routed_out_status(ledger):
    ledger.add_inputs("a", [("k", value(1))])
    (claim,) = ledger.claim("a", 1, "w", 1.0)
    assert ledger.complete(claim.id, [Output("k", value(1))], Status.ROUTED_OUT, 1.0) \
        is Status.ROUTED_OUT
    assert ledger.counts() == {"a": {"routed-out": 1}}


def test_union_keys_from_a_second_upstream_are_qualified(ledger):
    ledger.add_inputs("a", [("k", value(1))])
    run_one(ledger, "a", [Output("k", value(1), ("b", "c"))])
    run_one(ledger, "b", [Output("k", value(2), ("c",))])
    assert sorted(r["key"] for r in ledger.rows("c")) == ["k", "k@b"]


def test_same_key_twice_from_one_stage_is_a_collision_and_changes_nothing(ledger):
    ledger.add_inputs("a", [("p1", value(1)), ("p2", value(2))])
    run_one(ledger, "a", [Output("child", value(1), ("b",))])
    (claim,) = ledger.claim("a", 1, "w", 1.0)
    before = ledger.counts()
    with pytest.raises(KeyCollision, match="stage 'b' already has an item keyed 'child'"):
        ledger.complete(claim.id, [Output("other", value(0), ("b",)),
                                   Output("child", value(2), ("b",))], Status.DONE, 1.0)
    assert ledger.counts() == before
    assert [r["key"] for r in ledger.rows("b")] == ["child"]
    ledger.fail(claim.id, "collision", None, 1.0, None)  # still running, so it can fail


# -- record: batches and fused rows ----------------------------------------------------------------

def test_record_creates_fused_rows_in_their_final_state(ledger):
    ledger.add_inputs("a", [("x", value(1)), ("y", value(2))])
    claims = ledger.claim("a", 2, "w1", 1.0)
    records = []
    for c in claims:
        records.append(Record("a", c.key, c.id, Status.DONE, c.attempt, 1.0, 1.1,
                              [Output(c.key, value(c.key + "!"), ("b",))], worker="w1"))
    records.append(Record("b", "x", None, Status.DONE, 1, 1.1, 1.2,
                          [Output("x", value("bx"), ("c",))], worker="w1"))
    records.append(Record("b", "y", None, Status.PENDING, 1, 1.1, 1.2, [], "E: flaky", "tb",
                          retry_at=5.0, worker="w1"))
    assert ledger.record(records) == []
    assert ledger.counts() == {"a": {"done": 2}, "b": {"done": 1, "pending": 1},
                               "c": {"pending": 1}}
    rows = {r["key"]: r for r in ledger.rows("b")}
    assert rows["x"]["attempts"] == 1 and rows["x"]["worker"] == "w1"
    assert rows["y"]["error"] == "E: flaky" and rows["y"]["attempts"] == 1
    assert ledger.claim("b", 5, "w", 4.0) == []  # backing off until 5.0
    (retry,) = ledger.claim("b", 5, "w", 5.0)
    assert retry.key == "y" and retry.attempt == 2 and codec.decode(retry.data) == "y!"


def test_a_colliding_record_is_refused_alone_with_its_fused_children(ledger):
    ledger.add_inputs("a", [("p1", value(1)), ("p2", value(2)), ("p3", value(3))])
    c1, c2, c3 = ledger.claim("a", 3, "w", 1.0)
    refused = ledger.record([
        Record("a", "p1", c1.id, Status.DONE, 1, 1.0, 1.0, [Output("same", value(1), ("b",))]),
        Record("a", "p2", c2.id, Status.DONE, 1, 1.0, 1.0, [Output("same", value(2), ("b",))]),
        Record("b", "same", None, Status.DONE, 1, 1.0, 1.0, [Output("same", value(9), ("c",))]),
        Record("a", "p3", c3.id, Status.DONE, 1, 1.0, 1.0, [Output("p3", value(3), ("b",))]),
    ])
    assert [r.record.key for r in refused] == ["p2"]
    assert "already has an item keyed 'same' from stage 'a'" in refused[0].reason
    counts = ledger.counts()
    assert counts["a"] == {"done": 2, "running": 1}
    assert counts["b"] == {"done": 1, "pending": 1} and counts["c"] == {"pending": 1}


def test_a_fused_record_without_a_parent_route_is_refused(ledger):
    ledger.add_inputs("a", [("x", value(1))])
    (c,) = ledger.claim("a", 1, "w", 1.0)
    refused = ledger.record([
        Record("a", "x", c.id, Status.DONE, 1, 1.0, 1.0, [Output("x", value(1), ())]),
        Record("b", "x", None, Status.DONE, 1, 1.0, 1.0, []),
    ])
    assert [r.record.stage for r in refused] == ["b"]
    assert ledger.counts() == {"a": {"done": 1}}


def test_recording_a_row_that_is_not_running_raises(ledger):
    ledger.add_inputs("a", [("x", value(1))])
    (row,) = ledger.rows("a")
    with pytest.raises(IllegalTransition, match="only a running item"):
        ledger.record([Record("a", "x", row["id"], Status.DONE, 1, 1.0, 1.0, [])])
    with pytest.raises(IllegalTransition, match="no item with id 999"):
        ledger.record([Record("a", "x", 999, Status.DONE, 1, 1.0, 1.0, [])])


def test_a_large_batch_is_recorded(ledger):
    n = 2500  # more than one IN (...) chunk
    ledger.add_inputs("a", [(f"k{i:05d}", value(i)) for i in range(n)])
    claims = ledger.claim("a", n, "w", 1.0)
    records = [Record("a", c.key, c.id, Status.DONE, 1, 1.0, 1.0,
                      [Output(c.key, value(i), ("b",))]) for i, c in enumerate(claims)]
    records += [Record("b", c.key, None, Status.DONE, 1, 1.0, 1.0, [Output(c.key, value(0))])
                for c in claims]
    assert ledger.record(records) == []
    assert ledger.counts() == {"a": {"done": n}, "b": {"done": n}}


# -- reruns ----------------------------------------------------------------------------------------

def three_stages(ledger):
    """x and y done at a and routed to b; x done at b and routed to c."""
    ledger.add_inputs("a", [("x", value(1)), ("y", value(2))])
    for claim in ledger.claim("a", 2, "w", 1.0):
        ledger.complete(claim.id, [Output(claim.key, value(claim.key), ("b",))], Status.DONE,
                        1.0)
    run_one(ledger, "b", [Output("x", value("bx"), ("c",))])


def test_reset_stage_recomputes_it_and_drops_below(ledger):
    three_stages(ledger)
    assert ledger.reset_stage("a") == 2
    assert ledger.counts() == {"a": {"pending": 2}}


def test_drop_stage_and_route_again(ledger):
    three_stages(ledger)
    assert ledger.drop_stage("b") == 2
    assert ledger.counts() == {"a": {"done": 2}}
    outputs = list(ledger.finished_outputs("a"))
    assert [o[1] for o in outputs] == ["x", "y"]
    output_id, key, _, _ = outputs[0]
    ledger.route("b", key, output_id, "a")
    assert ledger.counts() == {"a": {"done": 2}, "b": {"pending": 1}}
    ledger.refresh_routed("a")
    assert ledger.counts() == {"a": {"done": 1, "routed-out": 1}, "b": {"pending": 1}}


def test_reduce_row_gathers_and_reopens(ledger):
    ledger.add_inputs("a", [("y", value(2)), ("x", value(1))])
    for _ in range(2):
        (claim,) = ledger.claim("a", 1, "w", 1.0)
        ledger.complete(claim.id, [Output(claim.key, value(claim.key), (),
                                          (("r", None, None),))], Status.DONE, 1.0)
    assert [g.key for g in ledger.gathered("r")] == ["x", "y"]
    assert ledger.barrier_rows("r") == {}
    ledger.open_barrier("r", "r", "digest-1")
    assert ledger.barrier_rows("r") == {"r": (Status.PENDING, "digest-1")}
    (claim,) = ledger.claim("r", 1, "w", 2.0)
    assert claim.key == "r" and claim.data is None
    ledger.complete(claim.id, [Output("r", value({"n": 2}), ("after",))], Status.DONE, 2.0)
    assert ledger.counts()["after"] == {"pending": 1}
    ledger.open_barrier("r", "r", "digest-2")
    assert ledger.barrier_rows("r") == {"r": (Status.PENDING, "digest-2")}
    assert "after" not in ledger.counts()


def test_group_values_by_partition_key_and_item_and_partition_rows(ledger):
    words = {"d1": ["b", "a", "b"], "d2": ["a", "c"]}
    ledger.add_inputs("split", [(k, value(v)) for k, v in words.items()])
    for claim in ledger.claim("split", 2, "w", 1.0):
        outs = [Output(f"{claim.key}/{i}", value(w), (), (("count", w, 0 if w < "c" else 1),))
                for i, w in enumerate(words[claim.key])]
        ledger.complete(claim.id, outs, Status.DONE, 1.0)
    assert [(g.part, g.gkey, g.key) for g in ledger.grouped("count")] == [
        (0, "a", "d1/1"), (0, "a", "d2/0"), (0, "b", "d1/0"), (0, "b", "d1/2"),
        (1, "c", "d2/1")]
    assert [codec.decode(g.data) for g in ledger.grouped("count")][:2] == ["a", "a"]
    for part in (0, 1):
        ledger.open_barrier("count", f"p{part}", f"digest-{part}")
    assert ledger.barrier_rows("count") == {"p0": (Status.PENDING, "digest-0"),
                                            "p1": (Status.PENDING, "digest-1")}
    claims = {c.key: c for c in ledger.claim("count", 2, "w", 2.0)}
    ledger.complete(claims["p0"].id, [Output("a", value(2), ("after",)),
                                      Output("b", value(2), ("after",))], Status.DONE, 2.0)
    assert ledger.counts()["after"] == {"pending": 2}
    ledger.close_barrier("count", "p0")  # its partition has no values any more
    assert set(ledger.barrier_rows("count")) == {"p1"} and "after" not in ledger.counts()
    ledger.drop_stage("split")
    assert list(ledger.grouped("count")) == []


def test_meta_and_fingerprints(ledger):
    assert ledger.get_meta("pipeline") is None
    ledger.set_meta("pipeline", "p")
    ledger.set_stage_fingerprint("a", "f1")
    assert ledger.get_meta("pipeline") == "p"
    assert ledger.stage_fingerprints() == {"a": "f1"}


# -- SQLite durability ------------------------------------------------------------------------------

def test_uncommitted_writes_vanish_whole(tmp_path):
    path = tmp_path / "ledger.db"
    with SqliteLedger(path) as led:
        led.add_inputs("a", [("x", value(1))])
        led.commit()
        (claim,) = led.claim("a", 1, "w", 1.0)
        led.complete(claim.id, [Output("x", value(2), ("b",))], Status.DONE, 1.0)
        # closed without commit
    with SqliteLedger(path, readonly=True) as led:
        assert led.counts() == {"a": {"pending": 1}}


CRASHER = textwrap.dedent("""
    import os, signal, sys
    from conveyor import codec
    from conveyor.ledger import Output, Status
    from conveyor.ledger.sqlite import SqliteLedger
    from conveyor.store import Stored

    def value(v):
        data = codec.encode(v)
        return Stored(data, None, codec.digest(data), len(data))

    led = SqliteLedger(sys.argv[1])
    led.add_inputs("a", [(f"k{i}", value(i)) for i in range(100)])
    led.commit()
    for i, claim in enumerate(led.claim("a", 100, "w", 1.0)):
        led.complete(claim.id, [Output(claim.key, value(i), ("b",))], Status.DONE, 1.0)
        if i == 49:
            led.commit()
    os.kill(os.getpid(), signal.SIGKILL)  # 50 completions never committed
""")


def test_committed_groups_survive_sigkill_and_the_file_is_sound(tmp_path):
    path = tmp_path / "ledger.db"
    proc = subprocess.run([sys.executable, "-c", CRASHER, str(path)])
    assert proc.returncode == -signal.SIGKILL
    with SqliteLedger(path) as led:
        assert led.integrity_check() == "ok"
        assert led.counts() == {"a": {"done": 50, "running": 50}, "b": {"pending": 50}}
        assert led.recover() == 50
        assert led.counts()["a"] == {"done": 50, "pending": 50}


def test_readonly_ledger_refuses_writes(tmp_path):
    path = tmp_path / "ledger.db"
    SqliteLedger(path).close()
    with SqliteLedger(path, readonly=True) as led:
        with pytest.raises(Exception, match="read-only"):
            led.set_meta("x", "y")


def test_a_corrupt_ledger_is_reported(tmp_path):
    path = tmp_path / "ledger.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(Exception, match="cannot open the ledger"):
        SqliteLedger(path)


def test_claim_stops_at_a_byte_budget_but_always_takes_one(ledger):
    ledger.add_inputs("a", [(f"k{i}", value("x" * 1000)) for i in range(10)])
    claims = ledger.claim("a", 10, "w", 1.0, max_bytes=3500)
    assert len(claims) == 3  # 3 x 1002 bytes fit, a fourth would not
    assert len(ledger.claim("a", 10, "w", 1.0, max_bytes=10)) == 1
