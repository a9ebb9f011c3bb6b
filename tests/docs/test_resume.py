"""A kill -9 of the driver mid-run: the rerun finishes without redoing finished documents,
with exactly the chunks, embeddings and index of an uninterrupted run of the same folder."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest

from conveyor import open_run
from conveyor.docs.search import search

REPO = Path(__file__).resolve().parents[2]

DRIVER = """
import sys
from conveyor.docs.archives import input_items
from conveyor.docs.pipeline import build_pipeline
build_pipeline(embed_gpus=0).run(input_items([sys.argv[1]]), run_dir=sys.argv[2])
"""


def _done(run_dir: Path) -> dict[tuple[str, str], float]:
    """(stage, key) -> end time of every item the ledger records as done."""
    con = sqlite3.connect(f"file:{run_dir / 'ledger.db'}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT stage, key, ended FROM items WHERE status = 'done'")
        return {(stage, key): ended for stage, key, ended in rows}
    finally:
        con.close()


def _outputs(run_dir: Path) -> dict[str, dict[str, object]]:
    """stage -> {key: output} of a run."""
    with open_run(run_dir) as result:
        return {stage: dict(result.outputs(stage)) for stage in result.stages}


def _vector(out: dict) -> np.ndarray:
    """An ``embed`` output's vector, from its batch file."""
    return np.load(out["vectors"], mmap_mode="r")[out["row"]]


def _without(row: dict, *names: str) -> dict:
    return {k: v for k, v in row.items() if k not in names}


def _table(info: dict) -> dict[tuple[str, int], dict]:
    """The index's chunk table, keyed by (doc, chunk index): rows arrive in any order."""
    return {(row["doc"], row["index"]): row for row in pq.read_table(info["table"]).to_pylist()}


def _hits(run_dir: Path, query: str) -> tuple[list[dict], list[float]]:
    """Every chunk ranked for ``query``: the hits without scores, and the scores."""
    hits = search(run_dir, query, k=6)
    return [_without(h, "score") for h in hits], [h["score"] for h in hits]


def assert_same_results(run_dir: Path, reference: Path) -> None:
    """Chunks, embeddings and index of ``run_dir`` are those of the uninterrupted run.

    Vectors match within float tolerance rather than exactly: a resumed run
    embeds its chunks in other batches, and a batch's padding moves the last
    bits of a vector (measured between two runs: at most 6e-8).
    """
    got, want = _outputs(run_dir), _outputs(reference)
    assert got["chunk"] == want["chunk"]

    assert got["embed"].keys() == want["embed"].keys() == want["chunk"].keys()
    for key, out in got["embed"].items():
        ref = want["embed"][key]
        assert _without(out, "vectors", "row") == _without(ref, "vectors", "row"), key
        np.testing.assert_allclose(_vector(out), _vector(ref), rtol=0, atol=1e-5, err_msg=key)

    (info,), (ref_info,) = got["index"].values(), want["index"].values()
    assert _without(info, "index", "table") == _without(ref_info, "index", "table")
    table, ref_table = _table(info), _table(ref_info)
    assert table.keys() == ref_table.keys()
    for key, row in table.items():
        assert _without(row, "row", "vector") == _without(ref_table[key], "row", "vector"), key
        np.testing.assert_allclose(row["vector"], ref_table[key]["vector"], rtol=0, atol=1e-5)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie of ours counts as gone
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return False


def test_kill_9_mid_run_resumes_without_redoing_finished_documents(corpus, tmp_path):
    root, manifest = corpus
    folder = tmp_path / "in"
    (folder / "scans").mkdir(parents=True)
    for file in ("photosynthesis.pdf", "jazz.pdf", "scans/volcanoes-scan.pdf"):
        shutil.copy(root / file, folder / file)
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    reference = tmp_path / "uninterrupted"
    clean = subprocess.run([sys.executable, "-c", DRIVER, str(folder), str(reference)], env=env,
                           capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0, clean.stderr
    chunks = {f"{folder}/{file}/c{i}" for file, n in [
        ("photosynthesis.pdf", 2), ("jazz.pdf", 2), ("scans/volcanoes-scan.pdf/page-1", 1),
        ("scans/volcanoes-scan.pdf/page-2", 1)] for i in range(n)}
    with open_run(reference) as result:
        assert result.ok
        assert {key for key, _ in result.outputs("chunk")} == chunks
        assert result.output("index")["chunks"] == 6

    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(folder), str(run_dir)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    before: dict[tuple[str, str], float] = {}
    try:
        while time.time() < deadline:
            assert proc.poll() is None, \
                f"the run ended before it could be killed: {proc.stderr.read().decode()}"
            if (run_dir / "ledger.db").exists():
                try:
                    before = _done(run_dir)
                except sqlite3.OperationalError:  # the ledger is being created
                    before = {}
                if any(stage == "ocr" for stage, _ in before):
                    break
            time.sleep(0.05)
        else:
            raise AssertionError("no OCR page finished within 120 s")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = _done(run_dir)  # what is durable after the kill
    assert any(stage == "ocr" for stage, _ in before)
    assert ("index", "index") not in before  # killed mid-run, not after it

    # The workers died with their driver (none is left behind holding resources).
    events = [orjson.loads(line) for line in (run_dir / "events.jsonl").read_bytes().splitlines()]
    pids = [e["pid"] for e in events if e["event"] == "worker_start" and e.get("pid")]
    assert pids
    limit = time.monotonic() + 60  # a guard: they die with it (PDEATHSIG) at once
    while any(_alive(pid) for pid in pids):
        assert time.monotonic() < limit, "the killed driver's workers outlived it"
        time.sleep(0.1)

    rerun = subprocess.run([sys.executable, "-c", DRIVER, str(folder), str(run_dir)], env=env,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    after = _done(run_dir)
    for item, ended in before.items():
        assert after.get(item) == ended, f"{item} was redone"
    assert ("ocr", f"{folder / 'scans/volcanoes-scan.pdf'}/page-2") in after
    assert ("index", "index") in after
    with open_run(run_dir) as result:
        assert result.ok
        assert result.output("index")["documents"] == 3

    # Exactly what the uninterrupted run made: chunks, vectors, index.
    assert_same_results(run_dir, reference)
    queries = {q["file"]: q["query"] for q in manifest["queries"]}
    for file in ("jazz.pdf", "scans/volcanoes-scan.pdf"):  # a typed and a scanned document
        hits, scores = _hits(run_dir, queries[file])
        ref_hits, ref_scores = _hits(reference, queries[file])
        assert hits[0]["source"] == str(folder / file)
        assert hits == ref_hits
        assert scores == pytest.approx(ref_scores, abs=2e-4)  # 4 decimals, rounding may differ
