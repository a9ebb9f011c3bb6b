"""A kill -9 of the driver mid-run: the rerun finishes without redoing finished documents."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import orjson

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
    root, _ = corpus
    folder = tmp_path / "in"
    (folder / "scans").mkdir(parents=True)
    for file in ("photosynthesis.pdf", "jazz.pdf", "scans/volcanoes-scan.pdf"):
        shutil.copy(root / file, folder / file)
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(folder), str(run_dir)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    before: dict[tuple[str, str], float] = {}
    try:
        while time.time() < deadline:
            assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr}"
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
    limit = time.time() + 10
    while any(_alive(pid) for pid in pids) and time.time() < limit:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids)

    rerun = subprocess.run([sys.executable, "-c", DRIVER, str(folder), str(run_dir)], env=env,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    after = _done(run_dir)
    for item, ended in before.items():
        assert after.get(item) == ended, f"{item} was redone"
    assert ("ocr", f"{folder / 'scans/volcanoes-scan.pdf'}/page-2") in after
    assert ("index", "index") in after
    from conveyor import open_run

    with open_run(run_dir) as result:
        assert result.ok
        assert result.output("index")["documents"] == 3
