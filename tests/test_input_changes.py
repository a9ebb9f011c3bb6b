"""Inputs that change between runs, and files that outputs name surviving a driver's kill -9.

README, "Reruns": a rerun "adds new inputs ... and retries failed items"; a
changed input value under the same key starts that item over ("changed ones
start over"), everything derived from it is recomputed, and every other item
is reused. README, "Durability and resume": "an output (and any file it names)
is on disk before its row says done".
"""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil

import pytest

from conveyor import Item, Pipeline, open_run
from conveyor.errors import RunInterrupted
from helpers import append_log, read_log


# -- a changed input value ------------------------------------------------------------------

def words_pipeline(log: Path) -> Pipeline:
    """split (one child per word) -> upper -> length; plus a reduce over every length.

    Each call appends "stage key" to ``log``.
    """
    pipe = Pipeline("words")

    @pipe.stage
    def split(text, ctx):
        append_log(log, f"split {ctx.key}")
        yield from text.split()

    @pipe.stage(after=split)
    def upper(word, ctx):
        append_log(log, f"upper {ctx.key}")
        return word.upper()

    @pipe.stage(after=upper)
    def length(word, ctx):
        append_log(log, f"length {ctx.key}")
        return {"word": word, "n": len(word)}

    @pipe.reduce(after=length)
    def total(values):
        values = list(values)
        append_log(log, "total total")
        return {"words": [v["word"] for v in values], "letters": sum(v["n"] for v in values)}

    return pipe


def test_a_changed_input_value_recomputes_that_item_and_below_only(executor, run_dir, tmp_path):
    log = tmp_path / "calls.log"
    pipe = words_pipeline(log)

    def run(inputs: dict[str, str]):
        log.unlink(missing_ok=True)
        result = pipe.run([Item(k, v) for k, v in inputs.items()], run_dir=run_dir,
                          executor=executor)
        return result, sorted(read_log(log))

    first, calls = run({"d1": "ab cd", "d2": "xyz uv w", "d3": "pq"})
    assert first.ok
    ended = {(r["stage"], r["key"]): r["ended"] for r in first.ledger.rows()}
    assert len(calls) == 3 + 6 + 6 + 1
    assert first.output("total") == {"words": ["AB", "CD", "XYZ", "UV", "W", "PQ"],
                                     "letters": 12}

    # The same inputs again: everything is reused.
    again, calls = run({"d1": "ab cd", "d2": "xyz uv w", "d3": "pq"})
    assert calls == []
    assert again.inputs == {"added": 0, "changed": 0, "unchanged": 3, "missing": 0,
                            "missing_keys": [], "gone": 0, "gone_keys": []}

    # d2's value changes (three words become two): d2 and everything derived from it
    # runs again, the reduce over it too; d1 and d3 are untouched.
    changed, calls = run({"d1": "ab cd", "d2": "hello ok", "d3": "pq"})
    assert calls == ["length d2/0", "length d2/1", "split d2", "total total",
                     "upper d2/0", "upper d2/1"]
    assert changed.ok
    assert changed.inputs == {"added": 0, "changed": 1, "unchanged": 2, "missing": 0,
                              "missing_keys": [], "gone": 0, "gone_keys": []}
    assert dict(changed.outputs("upper")) == {
        "d1/0": "AB", "d1/1": "CD", "d2/0": "HELLO", "d2/1": "OK", "d3/0": "PQ"}
    assert dict(changed.outputs("length")) == {
        "d1/0": {"word": "AB", "n": 2}, "d1/1": {"word": "CD", "n": 2},
        "d2/0": {"word": "HELLO", "n": 5}, "d2/1": {"word": "OK", "n": 2},
        "d3/0": {"word": "PQ", "n": 2}}
    # the old third child d2/2 ("w") is gone from every stage, not left behind as stale
    for stage in ("upper", "length"):
        assert changed.counts[stage] == {"pending": 0, "running": 0, "done": 5, "failed": 0,
                                         "routed-out": 0}
    assert changed.output("total") == {"words": ["AB", "CD", "HELLO", "OK", "PQ"],
                                       "letters": 13}
    # rows not derived from d2 keep their first run's record: they were not redone
    now = {(r["stage"], r["key"]): r["ended"] for r in changed.ledger.rows()}
    assert {k: t for k, t in now.items() if not k[1].startswith("d2") and k[1] != "total"} \
        == {k: t for k, t in ended.items() if not k[1].startswith("d2") and k[1] != "total"}
    assert len(now) == len(ended) - 2  # the rows of d2/2 at upper and length are gone

    # And back to the first value: d2 is recomputed once more, still nothing else.
    back, calls = run({"d1": "ab cd", "d2": "xyz uv w", "d3": "pq"})
    assert calls == ["length d2/0", "length d2/1", "length d2/2", "split d2", "total total",
                     "upper d2/0", "upper d2/1", "upper d2/2"]
    assert back.output("total") == first.output("total")


# -- files named by outputs, after a kill -9 of the driver -----------------------------------------

FILES_MODULE = textwrap.dedent('''
    import hashlib, os, time
    from conveyor import Item, Pipeline

    pipe = Pipeline("files")
    SIZE = 1 << 20  # each item writes 1 MiB, in 16 writes

    def content(key):
        seed = hashlib.sha256(key.encode()).digest()
        return (seed * (SIZE // len(seed) + 1))[:SIZE]

    def log(stage, key):
        fd = os.open(os.environ["FILES_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{stage} {key}\\n".encode())
        finally:
            os.close(fd)

    @pipe.stage(cpus=1)
    def render(n, ctx):
        if ctx.key == "zz-last":  # holds the run open until the test lets it finish
            while not os.path.exists(os.environ["FILES_RELEASE"]):
                time.sleep(0.01)
        data = content(ctx.key)
        path = ctx.output_dir / "page.bin"
        with open(path, "wb") as fh:
            for i in range(0, SIZE, SIZE // 16):
                fh.write(data[i:i + SIZE // 16])
                fh.flush()
        log("render", ctx.key)
        # over the inline limit (64 KiB): the output itself lives in a value file too
        return {"path": str(path), "size": SIZE, "sha256": hashlib.sha256(data).hexdigest(),
                "pad": ctx.key * (70000 // len(ctx.key))}

    @pipe.stage(after=render, cpus=1)
    def measure(page, ctx):
        with open(page["path"], "rb") as fh:
            data = fh.read()
        log("measure", ctx.key)
        return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    def inputs(n):
        return [Item(f"k{i:03d}", i) for i in range(n)] + [Item("zz-last", -1)]
''')
RUNNER = "import sys, filespipe; filespipe.pipe.run(filespipe.inputs(int(sys.argv[2])), " \
         "run_dir=sys.argv[1], cpus=2)"
N = 120


def test_a_signal_while_a_rerun_reads_its_inputs_keeps_nothing_of_them(run_dir, tmp_path):
    """README, "Reruns": inputs are taken in as one group. SIGINT while a rerun reads them
    (after 6,000 of 8,000: past the first chunk the ledger compares) stops the run with
    none of them recorded: the run directory holds the first run's inputs, all done."""
    pipe = words_pipeline(tmp_path / "calls.log")
    first = [Item(f"d{i}", f"w{i}") for i in range(3)]
    assert pipe.run(first, run_dir=run_dir, executor="inline").ok

    def inputs():
        for i in range(8000):
            if i == 6000:
                os.kill(os.getpid(), signal.SIGINT)  # the driver's handler only notes it
            yield Item(f"d{i}", f"w{i}" if i < 3 else f"new {i}")

    with pytest.raises(RunInterrupted, match="while reading inputs; nothing was recorded"):
        pipe.run(inputs(), run_dir=run_dir, executor="inline")
    with open_run(run_dir) as result:
        assert result.counts["split"] == {"pending": 0, "running": 0, "done": 3, "failed": 0,
                                          "routed-out": 0}


def test_a_signal_while_a_rerun_skips_unchanged_blocks_stops_it_at_that_input(run_dir):
    """A rerun of a run taken in as blocks reads a block's inputs whole to compare their
    digest; a signal is still noticed at the input it arrived at, and nothing is kept."""
    pipe = Pipeline("blocks")

    @pipe.stage
    def same(x):
        return x

    n = 8000
    assert pipe.run(range(n), run_dir=run_dir, executor="inline").ok
    pulled = []

    def inputs():
        for i in range(n):
            if i == 6000:
                os.kill(os.getpid(), signal.SIGINT)  # the driver's handler only notes it
            pulled.append(i)
            yield i
        yield "new"

    with pytest.raises(RunInterrupted, match="while reading inputs; nothing was recorded"):
        pipe.run(inputs(), run_dir=run_dir, executor="inline")
    assert pulled[-1] == 6000  # not one input more
    with open_run(run_dir) as result:
        assert result.counts["same"]["done"] == n and len(list(result.outputs("same"))) == n


def done_keys(run_dir: Path, stage: str) -> set[str]:
    """Keys of ``stage`` the ledger has committed as done (read-only, as another process)."""
    if not (run_dir / "ledger.db").exists():
        return set()
    db = sqlite3.connect(f"file:{run_dir / 'ledger.db'}?mode=ro", uri=True)
    try:
        return {k for (k,) in db.execute(
            "SELECT key FROM items WHERE stage=? AND status='done'", (stage,))}
    except sqlite3.OperationalError:  # the schema is not committed yet
        return set()
    finally:
        db.close()


def expected_sha(key: str) -> str:
    seed = hashlib.sha256(key.encode()).digest()
    size = 1 << 20
    return hashlib.sha256((seed * (size // len(seed) + 1))[:size]).hexdigest()


def check_done_rows_name_whole_files(run_dir: Path) -> tuple[set[str], set[str]]:
    """Every done row's output decodes, and the file it names holds its full content."""
    with open_run(run_dir) as result:
        rendered = dict(result.outputs("render"))
        measured = dict(result.outputs("measure"))
    assert set(rendered) == done_keys(run_dir, "render")
    for key, out in rendered.items():
        path = Path(out["path"])
        assert path.is_relative_to(run_dir / "artifacts" / "render"), out["path"]
        assert out["size"] == 1 << 20 and out["sha256"] == expected_sha(key)
        data = path.read_bytes()
        assert len(data) == out["size"], (key, len(data))
        assert hashlib.sha256(data).hexdigest() == out["sha256"], key
        assert out["pad"] == key * (70000 // len(key))
    for key, out in measured.items():
        assert out == {"size": 1 << 20, "sha256": expected_sha(key)}, key
    return set(rendered), set(measured)


def test_files_named_by_done_rows_are_whole_after_a_kill_9_of_the_driver(tmp_path):
    (tmp_path / "filespipe.py").write_text(FILES_MODULE)
    run_dir, log, release = tmp_path / "run", tmp_path / "calls.log", tmp_path / "release"
    env = {**os.environ, "FILES_LOG": str(log), "FILES_RELEASE": str(release),
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", RUNNER, str(run_dir), str(N)], env=env,
                                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    proc = start()
    # Kill once a good part of the run is recorded done, with work still flowing: the
    # last item holds the run open, so it cannot have finished.
    while len(done_keys(run_dir, "measure")) < N // 4:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.02)
    workers = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    assert workers
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for pid in workers:  # its workers die with it (PDEATHSIG)
        try:
            psutil.Process(pid).wait(timeout=30)
        except psutil.NoSuchProcess:
            pass

    rendered, measured = check_done_rows_name_whole_files(run_dir)
    assert len(measured) >= N // 4
    assert "zz-last" not in rendered and len(rendered) < N + 1  # the kill landed mid-run
    calls_at_kill = len(read_log(log))

    # Resume: the rest runs, nothing recorded done runs again, and every file is whole.
    release.write_text("")
    proc = start()
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-2000:]
    rendered_after, measured_after = check_done_rows_name_whole_files(run_dir)
    keys = {f"k{i:03d}" for i in range(N)} | {"zz-last"}
    assert rendered_after == measured_after == keys
    again = [line.split() for line in read_log(log)[calls_at_kill:]]
    assert not [(s, k) for s, k in again if (s == "render" and k in rendered)
                or (s == "measure" and k in measured)]
