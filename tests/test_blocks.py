"""Blocks: a large run's items recorded a block per row (conveyor.ledger.blocks).

The ledger's side (taking inputs in, reruns, splitting a block into item
rows) on a real SQLite ledger, and whole runs on real worker processes: every
item's output is there, an item that fails fails alone with its traceback,
stages whose outputs do not fit a block run item rows, and a changed stage
recomputes from the blocks above it.
"""

from __future__ import annotations

import datetime
import os
import sqlite3
import threading
from pathlib import Path

import pytest

from conveyor import Item, Pipeline, codec, items
from conveyor.engine import state
from conveyor.errors import InputError
from conveyor.items import Inputs, raw_digest
from conveyor.ledger import Output, Status, blocks
from conveyor.ledger.sqlite import SqliteLedger
from conveyor.observe.events import read_events
from conveyor.store import Stored

N = 5000  # inputs: above blocks.SMALLEST_RUN, so taken in as about ten blocks


def value(v: object) -> Stored:
    data = codec.encode(v)
    return Stored(data, None, codec.digest(data), len(data))


def given(n: int = N, changed: str | None = None, without: tuple[str, ...] = ()
          ) -> list[tuple[str, Stored]]:
    return [(key, value("changed" if key == changed else i)) for i in range(n)
            if (key := f"k{i:05d}") not in without]


def table_rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT count(*) FROM items").fetchone()[0]


@pytest.fixture
def ledger(tmp_path: Path) -> SqliteLedger:
    led = SqliteLedger(tmp_path / "ledger.db")
    yield led
    led.close()


def finish_all(ledger: SqliteLedger, stage: str = "a") -> None:
    """Record every block of ``stage`` done, each item's output its own value."""
    for claim in ledger.claim(stage, 10_000, "w", 1.0):
        packed = blocks.pack((e[0], codec.encode(e[1]), None, None)
                             for e in blocks.elements(claim.data))
        ledger.complete(claim.id, [Output(claim.key, Stored(packed, None, None, len(packed)))],
                        Status.DONE, 1.0)
    ledger.commit()


# -- the ledger --------------------------------------------------------------------------

def test_a_large_run_is_taken_in_as_blocks(ledger, tmp_path):
    report = ledger.add_inputs("a", given())
    ledger.commit()
    assert (report.added, report.changed, report.unchanged, report.missing) == (N, 0, 0, [])
    assert table_rows(tmp_path / "ledger.db") <= N // blocks.SMALLEST + 1
    assert ledger.counts() == {"a": {"pending": N}} and ledger.pending_counts() == {"a": N}
    rows = list(ledger.rows("a"))
    assert [r["key"] for r in rows] == [f"k{i:05d}" for i in range(N)]
    assert rows[7]["input_digest"] == value(7).digest


def test_a_small_run_is_taken_in_as_item_rows(ledger, tmp_path):
    ledger.add_inputs("a", given(blocks.SMALLEST_RUN - 1))
    ledger.commit()
    assert table_rows(tmp_path / "ledger.db") == blocks.SMALLEST_RUN - 1


@pytest.mark.parametrize("rerun", [False, True])
@pytest.mark.parametrize("twice", ["k04321", "new"])  # a held key again, a new key twice
def test_a_key_given_twice_is_refused_by_name(ledger, rerun, twice):
    if rerun:
        ledger.add_inputs("a", given())
    extra = [(twice, value(0))] if twice != "new" else [(twice, value(0)), (twice, value(1))]
    with pytest.raises(InputError, match=f"duplicate input key '{twice}'"):
        ledger.add_inputs("a", [*given(), *extra])


def test_a_rerun_giving_whole_blocks_twice_is_refused(ledger):
    """Blocks given twice match the same rows: the second match names a repeated key."""
    ledger.add_inputs("a", given())
    with pytest.raises(InputError, match="duplicate input key 'k0"):
        ledger.add_inputs("a", [*given(), *given()])


def test_a_rerun_of_the_same_inputs_keeps_every_block(ledger):
    ledger.add_inputs("a", given())
    finish_all(ledger)
    report = ledger.add_inputs("a", given())
    assert (report.added, report.changed, report.unchanged, report.missing) == (0, 0, N, [])
    assert ledger.counts() == {"a": {"done": N}}


def test_a_changed_input_recomputes_its_block_only(ledger):
    ledger.add_inputs("a", given())
    finish_all(ledger)
    report = ledger.add_inputs("a", given(changed="k02500"))
    assert (report.added, report.changed, report.unchanged, report.missing) == (0, 1, N - 1, [])
    counts = ledger.counts()["a"]
    assert counts["done"] + counts["pending"] == N and 0 < counts["pending"] < N // 2
    (claim,) = ledger.claim("a", 10, "w", 2.0)
    items = {e[0]: e[1] for e in blocks.elements(claim.data)}
    assert items["k02500"] == "changed" and len(items) == counts["pending"]


def test_inputs_left_out_are_kept_and_new_ones_added(ledger):
    ledger.add_inputs("a", given())
    finish_all(ledger)
    report = ledger.add_inputs("a", [*given(without=("k00007",)), ("new", value("n"))])
    assert (report.added, report.changed, report.missing) == (1, 0, ["k00007"])
    assert sum(ledger.counts()["a"].values()) == N + 1
    assert "k00007" in {r["key"] for r in ledger.rows("a")}


@pytest.mark.parametrize("left_out", ["k00007", "k04998"])  # the last block: no boundary
def test_an_input_left_out_again_recomputes_nothing(ledger, left_out):
    """The inputs of a block with one left out are made a block again; the one left out
    goes into a block of its own, so that the same inputs given again match both."""
    ledger.add_inputs("a", given())
    finish_all(ledger)
    ledger.add_inputs("a", given(without=(left_out,)))
    finish_all(ledger)
    report = ledger.add_inputs("a", given(without=(left_out,)))
    assert (report.added, report.changed, report.unchanged, report.missing) == (
        0, 0, N - 1, [left_out])
    assert ledger.counts() == {"a": {"done": N}}


def test_a_gone_input_is_dropped_from_its_block(ledger):
    ledger.add_inputs("a", given())
    finish_all(ledger)
    assert ledger.drop_inputs("a", ["k00007", "k04000"]) == 2
    keys = {r["key"] for r in ledger.rows("a")}
    assert len(keys) == N - 2 and not keys & {"k00007", "k04000"}
    outputs = {key for key, _, _ in ledger.outputs("a")}
    assert "k00007" not in outputs and "k00008" not in outputs  # its block goes again
    assert sum(ledger.counts()["a"].values()) == N - 2


def test_a_split_block_becomes_item_rows_with_their_values(ledger):
    ledger.add_inputs("a", given())
    (block,) = ledger.claim("a", 1, "w", 1.0)
    n = blocks.size(block.key)
    assert ledger.split([block.id]) == n
    claims = ledger.claim("a", n + 10, "w", 2.0, blocks=False)
    assert len(claims) == n and all(c.attempt == 1 for c in claims)  # the block's not counted
    assert [codec.decode(c.data) for c in claims] == list(range(n))
    assert ledger.counts()["a"] == {"pending": N - n, "running": n}


# -- a rerun's inputs as given (conveyor.items.Inputs) -----------------------------------

class Counted:
    """Inputs as a run gives them, counting the ones looked at one by one (kept by put)."""

    def __init__(self) -> None:
        self.looked_at = 0

    def put(self, data: bytes, digest: str) -> Stored:
        self.looked_at += 1
        return Stored(data, None, digest, len(data))

    def inputs(self, values: list) -> Inputs:
        return Inputs(values, self.put)


def as_given(form: str, n: int = N, changed: int | None = None) -> list:
    """``n`` inputs as bare values (strings, their own keys) or as ``Item``\\ s."""
    values = ["changed" if i == changed else i for i in range(n)]
    if form == "values":
        return [f"v{v}" for v in values]
    return [Item(f"k{i:05d}", v) for i, v in enumerate(values)]


FORMS = ["values", "items"]


@pytest.mark.parametrize("form", FORMS)
def test_an_unchanged_rerun_looks_at_no_input_one_by_one(ledger, form):
    first = Counted()
    ledger.add_inputs("a", first.inputs(as_given(form)))
    assert first.looked_at == N
    finish_all(ledger)
    again = Counted()
    report = ledger.add_inputs("a", again.inputs(as_given(form)))
    assert (report.added, report.changed, report.unchanged, report.missing) == (0, 0, N, [])
    assert again.looked_at == 0 and ledger.counts() == {"a": {"done": N}}


def test_inputs_being_taken_in_say_how_many_have_been_read(ledger, monkeypatch):
    monkeypatch.setattr(items, "TAKING_SECONDS", 0.0)  # told at every look at the clock
    told: list[int] = []
    ledger.add_inputs("a", Inputs(as_given("values"), Counted().put, taking=told.append))
    assert told == list(range(64, N + 1, 64))
    finish_all(ledger)
    told.clear()  # a rerun skips whole blocks unlooked-at: they are read all the same
    ledger.add_inputs("a", Inputs(as_given("values"), Counted().put, taking=told.append))
    assert told == list(range(64, N + 1, 64))


@pytest.mark.parametrize("form", FORMS)
def test_past_a_changed_input_the_blocks_are_skipped_again(ledger, form):
    ledger.add_inputs("a", Counted().inputs(as_given(form)))
    finish_all(ledger)
    again = Counted()
    report = ledger.add_inputs("a", again.inputs(as_given(form, changed=2500)))
    assert 0 < again.looked_at <= blocks.LARGEST  # the changed input's block alone
    pending = ledger.counts()["a"]["pending"]
    if form == "values":  # its own key: a new input, the one it replaced left out (kept)
        assert (report.added, report.changed, report.unchanged, report.missing) == (
            1, 0, N - 1, ["v2500"])
        assert pending == 1
    else:  # a changed value: its block is made again, as the inputs were given
        assert (report.added, report.changed, report.unchanged, report.missing) == (
            0, 1, N - 1, [])
        assert pending == again.looked_at
    finish_all(ledger)
    third = Counted()
    report = ledger.add_inputs("a", third.inputs(as_given(form, changed=2500)))
    assert (report.added, report.changed, ledger.counts()["a"].get("pending", 0)) == (0, 0, 0)
    # a block made again has its raw digest: skipped; the block holding the input left
    # out is not the one given, whose inputs are looked at one by one each time
    assert third.looked_at == (0 if form == "items" else again.looked_at)


def test_inputs_given_in_another_order_recompute_nothing(ledger):
    """Blocks are cut where the keys given say: another order cuts others, but every
    item of every block held comes again unchanged, so each block stays done."""
    ledger.add_inputs("a", given())
    finish_all(ledger)
    report = ledger.add_inputs("a", list(reversed(given())))
    assert (report.added, report.changed, report.unchanged, report.missing) == (0, 0, N, [])
    assert ledger.counts() == {"a": {"done": N}}


@pytest.mark.parametrize("form", FORMS)
def test_inputs_added_after_skipped_blocks_are_taken(ledger, form):
    ledger.add_inputs("a", Counted().inputs(as_given(form)))
    finish_all(ledger)
    again = Counted()
    report = ledger.add_inputs("a", again.inputs(as_given(form, n=N + 100)))
    assert (report.added, report.changed, report.unchanged) == (100, 0, N)
    assert again.looked_at <= blocks.LARGEST + 100
    assert ledger.counts()["a"] == {"done": N, "pending": 100}  # the new ones alone


@pytest.mark.parametrize("form", FORMS)
def test_an_input_of_a_skipped_block_given_again_is_refused_by_name(ledger, form):
    inputs = as_given(form)
    ledger.add_inputs("a", Counted().inputs(inputs))
    finish_all(ledger)
    key = "v42" if form == "values" else "k00042"
    with pytest.raises(InputError, match=f"duplicate input key '{key}'"):
        ledger.add_inputs("a", Counted().inputs([*inputs, inputs[42]]))
    with pytest.raises(InputError, match="duplicate input key"):  # whole blocks twice
        ledger.add_inputs("a", Counted().inputs([*inputs, *inputs]))


def test_a_ledger_of_schema_5_takes_raw_digests_on_its_next_rerun(tmp_path):
    """Blocks written before raw digests are matched one input at a time once, and
    keep their raw digest from then on."""
    path = tmp_path / "ledger.db"
    led = SqliteLedger(path)
    led.add_inputs("a", Counted().inputs(as_given("values")))
    finish_all(led)
    led.close()
    with sqlite3.connect(path) as db:  # as conveyor wrote it before: no such columns
        db.execute("ALTER TABLE items DROP COLUMN raw_digest")
        db.execute("ALTER TABLE items DROP COLUMN key_crcs")
        db.execute("UPDATE meta SET value='5' WHERE name='schema'")
    led = SqliteLedger(path)
    looked = []
    for _ in range(2):
        counted = Counted()
        report = led.add_inputs("a", counted.inputs(as_given("values")))
        led.commit()
        assert (report.added, report.changed, report.unchanged) == (0, 0, N)
        looked.append(counted.looked_at)
    with pytest.raises(InputError, match="duplicate input key 'v42'"):  # CRCs kept too
        led.add_inputs("a", Counted().inputs([*as_given("values"), "v42"]))
    led.close()
    assert looked == [N, 0]


@pytest.mark.parametrize("inputs", [
    ["a", 1, 2.5, None, True, [1, "x"], {"k": [1]}, (1, 2)],  # bare values of plain types
    [Item("a", 1), Item("b", {"x": [1]})],
])
def test_a_raw_digest_fixes_the_inputs(inputs):
    assert raw_digest(inputs) == raw_digest(list(inputs)) is not None
    assert raw_digest(inputs[:-1]) != raw_digest(inputs)


class Name(str):
    pass


@pytest.mark.parametrize("inputs", [
    [Name("a")],  # written as "a", like the str "a", but keyed by its digest
    [datetime.date(2026, 12, 1)],  # written as a JSON string too
    [Item("a", 1), "b"],  # an Item and a bare value: the form of each is lost
    [{1, 2}],  # not JSON: taken one by one, which names the input
])
def test_inputs_whose_keys_one_encoding_cannot_fix_have_no_raw_digest(inputs):
    assert raw_digest(inputs) is None


def test_a_str_and_a_number_written_alike_differ():
    assert raw_digest(["1"]) != raw_digest([1])
    assert raw_digest([Item("a", 1)]) != raw_digest([["a", 1]])


# -- runs ----------------------------------------------------------------------------------

@pytest.fixture
def blocks_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks run whole once measured, however loaded the machine: a block may take 10 s."""
    monkeypatch.setattr(state, "BLOCK_SECONDS", 10.0)


def chain(fail: str | None = None, fan_out: bool = False) -> Pipeline:
    pipe = Pipeline("blocks")

    @pipe.stage
    def a(x: int) -> int:
        return x + 1

    if fan_out:
        @pipe.stage(after=a)
        def b(x: int):
            yield x
            yield -x
    else:
        @pipe.stage(after=a, retries=1, retry_backoff=0)
        def b(x: int) -> int:
            if x == 101 and fail:
                raise ValueError(fail)
            return x * 2

    @pipe.stage(after=b)
    def c(x: int) -> int:
        return x - 1

    return pipe


def test_a_large_run_records_blocks_and_every_output(tmp_path, blocks_whole, executor):
    result = chain().run(range(N), run_dir=tmp_path / "run", executor=executor)
    assert result.ok and result.counts["c"]["done"] == N
    assert dict(result.outputs("c")) == {codec.digest(codec.encode(i))[:16]: (i + 1) * 2 - 1
                                         for i in range(N)}
    assert table_rows(tmp_path / "run" / "ledger.db") < N  # not a row per (stage, item)


def test_an_item_that_fails_in_a_block_fails_alone(tmp_path, blocks_whole, executor):
    result = chain(fail="no 101").run(range(N), run_dir=tmp_path / "run", executor=executor)
    (failure,) = result.failures()
    assert failure["stage"] == "b" and "ValueError: no 101" in failure["error"]
    assert "raise ValueError(fail)" in failure["traceback"] and failure["attempts"] == 2
    assert result.counts["c"]["done"] == N - 1


def test_a_fan_out_stage_runs_item_rows(tmp_path, blocks_whole):
    result = chain(fan_out=True).run(range(N), run_dir=tmp_path / "run")
    outputs = dict(result.outputs("c"))
    assert len(outputs) == 2 * N and result.counts["c"]["done"] == 2 * N
    key = codec.digest(codec.encode(9))[:16]
    assert (outputs[f"{key}/0"], outputs[f"{key}/1"]) == (9, -11)


def test_routed_items_are_counted_where_they_went(tmp_path, blocks_whole):
    pipe = Pipeline("routes")

    @pipe.stage
    def a(x: int) -> int:
        return x

    @pipe.stage(after=a, when=lambda x: x % 2 == 0)
    def even(x: int) -> str:
        return "even"

    @pipe.stage(after=a, when=lambda x: x % 3 == 0)
    def third(x: int) -> str:
        return "third"

    result = pipe.run(range(N), run_dir=tmp_path / "run")
    counts = result.counts
    assert counts["even"]["done"] == len(range(0, N, 2))
    assert counts["third"]["done"] == len(range(0, N, 3))
    neither = sum(1 for i in range(N) if i % 2 and i % 3)
    assert counts["a"]["routed-out"] == neither and counts["a"]["done"] == N - neither


def test_a_changed_stage_recomputes_from_the_blocks_above_it(tmp_path, blocks_whole):
    run_dir = tmp_path / "run"
    chain().run(range(N), run_dir=run_dir)
    before = {(r["key"], r["ended"]) for r in SqliteLedger(run_dir / "ledger.db",
                                                           readonly=True).rows("a")}
    pipe = Pipeline("blocks")

    @pipe.stage
    def a(x: int) -> int:
        return x + 1

    @pipe.stage(after=a)
    def b(x: int) -> int:
        return x * 3  # changed

    @pipe.stage(after=b)
    def c(x: int) -> int:
        return x - 1

    result = pipe.run(range(N), run_dir=run_dir)
    assert result.ok and dict(result.outputs("c"))[codec.digest(codec.encode(4))[:16]] == 14
    after = {(r["key"], r["ended"]) for r in result.ledger.rows("a")}
    assert after == before  # a ran no item again


def test_stages_added_below_blocks_see_every_item(tmp_path, blocks_whole):
    """A reduce and a routed stage added to a finished run read each item of the blocks
    above them: those blocks run again (they are fast), this time as item rows."""
    run_dir = tmp_path / "run"
    chain().run(range(N), run_dir=run_dir)
    pipe = chain()

    @pipe.reduce(after="c")
    def total(values) -> int:
        return sum(values)

    @pipe.stage(after="c", when=lambda x: x % 10 == 1)
    def tens(x: int) -> int:
        return x

    result = pipe.run(range(N), run_dir=run_dir)
    assert result.ok and result.output("total") == sum((i + 1) * 2 - 1 for i in range(N))
    assert result.counts["tens"]["done"] == sum(1 for i in range(N) if ((i + 1) * 2 - 1) % 10 == 1)
    assert result.counts["c"]["done"] == N


def test_a_block_goes_on_to_the_next_group_as_a_block(tmp_path, blocks_whole):
    """Stages that do not fuse (here: different CPUs) pass blocks on whole: the second
    group's rows are blocks too, not a row per item."""
    pipe = Pipeline("two groups")

    @pipe.stage(cpus=1)
    def a(x: int) -> int:
        return x + 1

    @pipe.stage(after=a, cpus=0.5)
    def b(x: int) -> int:
        return x * 2

    result = pipe.run(range(N), run_dir=tmp_path / "run")
    assert result.ok and sorted(v for _, v in result.outputs("b")) == \
        [(i + 1) * 2 for i in range(N)]
    b_rows = sum(1 for r in result.ledger.rows("b"))  # expanded: one per item
    with sqlite3.connect(tmp_path / "run" / "ledger.db") as db:
        (held,) = db.execute("SELECT count(*) FROM items WHERE stage='b'").fetchone()
    assert b_rows == N and held < N / 2


def die() -> None:
    os._exit(3)


def hang() -> None:
    threading.Event().wait()


@pytest.mark.parametrize("poison,options,reason", [
    (die, {}, "worker exited with code 3"),
    (hang, {"timeout": 1}, "timed out after 1 s"),
], ids=["os._exit", "timeout"])
def test_a_worker_lost_in_a_block_costs_only_the_item_that_killed_it(
        tmp_path, blocks_whole, poison, options, reason):
    """A worker that dies, or is killed past the stage's timeout, inside a block blames no
    item of it: the block is split and its items run alone, where the killer is named."""
    pipe = Pipeline("poisoned")

    @pipe.stage(retries=1, retry_backoff=0, **options)
    def work(x: int) -> int:
        if x == 4321:
            poison()
        return x * 2

    result = pipe.run(range(N), run_dir=tmp_path / "run")
    (failure,) = result.failures()
    assert failure["key"] == codec.digest(codec.encode(4321))[:16]
    assert reason in failure["error"] and failure["attempts"] == 2
    assert result.counts["work"]["done"] == N - 1
    # three workers lost: in the block (no attempt charged), then the item's two attempts
    exits = [e for e in read_events(tmp_path / "run") if e["event"] == "worker_exit"]
    assert sum(reason.removeprefix("worker ") in e["reason"] for e in exits) == 3


def test_a_key_that_would_read_as_a_block_is_refused(tmp_path):
    """An input key starting with the blocks' mark is refused by name, nothing recorded."""
    pipe = chain()
    with pytest.raises(InputError, match=r"must not start with \\x1e"):
        pipe.run([Item("\x1e3:a", 1)], run_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "ledger.db").exists() or \
        SqliteLedger(tmp_path / "run" / "ledger.db", readonly=True).counts() == {}
