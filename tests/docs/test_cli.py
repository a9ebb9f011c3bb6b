"""``conveyor docs`` and ``conveyor search`` as a user runs them: real subprocesses of
``python -m conveyor``, the default (local) executor, real exit codes and output."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conveyor import open_run
from conveyor.docs.corpus import text_pdf
from conveyor.observe.events import read_events

from .conftest import SMALL_DIM

LIGHTHOUSE = "Lighthouse keepers trimmed the lamp wick every night and wound the clockwork."
OWLS = "Owls hunt at night using sharp hearing."
ENCRYPTED = "BadDocument: encrypted: password required"


def conveyor(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m conveyor ARGS``; wide columns so rich wraps no line."""
    return subprocess.run([sys.executable, "-m", "conveyor", *args], cwd=cwd,
                          env={**os.environ, "COLUMNS": "250"}, capture_output=True, text=True,
                          timeout=300)


def counts_table(stdout: str) -> dict[str, list[int]]:
    """The printed counts table: stage -> [done, routed-out, failed, pending, running]
    (the columns after them, CPU and RAM used against declared, are not counts)."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if cells:  # the header row is drawn with ┃, not │
            rows[cells[0]] = [int(c) for c in cells[1:6]]
    return rows


@pytest.fixture(scope="module")
def docs_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One ``conveyor docs`` run (not quiet) over two good PDFs and an encrypted one."""
    root = tmp_path_factory.mktemp("docs-cli")
    folder = root / "in"
    folder.mkdir()
    (folder / "lighthouse.pdf").write_bytes(text_pdf([[LIGHTHOUSE]], first_title=False))
    (folder / "owls.pdf").write_bytes(text_pdf([[OWLS]], first_title=False))
    (folder / "locked.pdf").write_bytes(text_pdf([["secret"]], encrypt="pw"))
    run_dir = root / "run"
    proc = conveyor("docs", str(folder), "--run-dir", str(run_dir), "--gpus", "0")
    return {"proc": proc, "folder": folder, "run_dir": run_dir}


def test_docs_with_a_broken_file_exits_1_and_lists_it_with_its_reason(docs_run):
    proc, folder, run_dir = docs_run["proc"], docs_run["folder"], docs_run["run_dir"]
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines()[-2:] == [
        "1 item(s) failed:", f"  {folder / 'locked.pdf'} (inspect): {ENCRYPTED}"]
    assert counts_table(proc.stdout) == {
        "expand": [3, 0, 0, 0, 0], "unpack": [0, 0, 0, 0, 0], "skipped": [0, 0, 0, 0, 0],
        "inspect": [2, 0, 1, 0, 0], "extract": [2, 0, 0, 0, 0],
        "ocr_pages": [0, 0, 0, 0, 0], "ocr": [0, 0, 0, 0, 0], "chunk": [2, 0, 0, 0, 0],
        "embed": [2, 0, 0, 0, 0], "index": [1, 0, 0, 0, 0]}
    with open_run(run_dir) as result:
        info = result.output("index")
    assert proc.stdout.splitlines()[-2:] == [
        f"index: 2 chunks from 2 documents in {Path(info['index']).parent}",
        f'search it: conveyor search {run_dir} "your question"']
    runs = [(e["executor"], e["budget"]["gpus"]) for e in read_events(run_dir)
            if e["event"] == "run_start"]
    assert runs == [("local", 0)]  # the default executor; --gpus 0


def test_search_json_gives_the_hits(docs_run):
    folder, run_dir = docs_run["folder"], docs_run["run_dir"]
    proc = conveyor("search", str(run_dir), "who looked after the lamp", "-k", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    (hit,) = json.loads(proc.stdout)
    path = str(folder / "lighthouse.pdf")
    assert 0 < hit.pop("score") <= 1
    assert hit == {"text": LIGHTHOUSE, "path": path, "member": None, "source": path,
                   "doc": path, "page": 1, "pages": [1], "method": "text"}


def test_search_prints_the_hits_ranked(docs_run):
    folder, run_dir = docs_run["folder"], docs_run["run_dir"]
    proc = conveyor("search", str(run_dir), "lamp")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 4  # k=5, but the index holds two chunks
    assert re.fullmatch(rf"1\. 0\.\d{{3}}  {re.escape(str(folder / 'lighthouse.pdf'))}  page 1",
                        lines[0]), lines[0]
    assert lines[1] == f"   {LIGHTHOUSE}"
    assert re.fullmatch(rf"2\. -?0\.\d{{3}}  {re.escape(str(folder / 'owls.pdf'))}  page 1",
                        lines[2]), lines[2]
    assert lines[3] == f"   {OWLS}"
    assert float(lines[0].split()[1]) > float(lines[2].split()[1])


def test_docs_all_good_exits_0_and_quiet_prints_nothing(tmp_path):
    path = tmp_path / "owls.pdf"
    path.write_bytes(text_pdf([[OWLS]], first_title=False))
    run_dir = tmp_path / "run"
    proc = conveyor("docs", str(path), "--run-dir", str(run_dir), "--quiet")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    with open_run(run_dir) as result:
        assert result.ok
        assert result.output("index")["documents"] == 1


def test_usage_errors_exit_2_and_run_nothing(tmp_path):
    run_dir = tmp_path / "run"
    missing = tmp_path / "missing.pdf"
    cases = [
        (["docs", str(missing), "--run-dir", str(run_dir)],
         f"error: no such file or folder: {missing}"),
        (["docs", "--run-dir", str(run_dir)],
         f"error: give INPUT paths (there is no run in {run_dir} to resume)"),
        (["docs", str(tmp_path), "--run-dir", str(run_dir), "--executor", "nonsense"],
         "error: unknown executor 'nonsense'; choose one of local, inline, ray"),
        (["docs", str(tmp_path), "--run-dir", str(run_dir), "--gpus", "-1"],
         "error: --gpus must be >= 0, got -1"),
        (["docs", str(tmp_path), "--run-dir", str(run_dir), "--chunk-size", "0"],
         "error: chunk size must be a positive number of chars, got 0"),
        (["docs", str(tmp_path), "--run-dir", str(run_dir), "--chunk-size", "100",
          "--chunk-overlap", "100"],
         "error: chunk overlap (100 chars) must be less than the chunk size (100 chars)"),
        (["docs", str(tmp_path), "--run-dir", str(run_dir), "--chunk-unit", "words"],
         "error: chunk unit must be chars or tokens, got 'words'"),
        (["docs", str(tmp_path), "--run-dir", str(run_dir), "--chunk-unit", "tokens",
          "--chunk-size", "1000"],
         "error: chunk size 1000 tokens is more than model sentence-transformers/"
         "all-MiniLM-L6-v2 reads (254 tokens besides its special tokens); give at most 254"),
        (["docs", str(tmp_path), "--run-dir", str(run_dir), "--model", str(tmp_path / "m")],
         f"error: no such model folder: {tmp_path / 'm'}"),
        (["search", str(tmp_path / "nowhere"), "query"],
         f"error: {tmp_path / 'nowhere'} is not a conveyor run directory; run `conveyor docs "
         f"INPUT... --run-dir {tmp_path / 'nowhere'}` first"),
    ]
    for args, message in cases:
        proc = conveyor(*args)
        assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", message + "\n"), args
    proc = conveyor("docs", str(tmp_path))
    assert proc.returncode == 2 and "Missing option '--run-dir'" in proc.stderr
    proc = conveyor("search", str(tmp_path), "query", "-k", "0")
    assert proc.returncode == 2 and "Invalid value for '-k'" in proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing ran, nothing was written


def test_plan_and_retry_of_a_docs_run_from_another_directory(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "owls.pdf").write_bytes(text_pdf([["Owls hunt at night using sharp hearing."]]))
    (folder / "locked.pdf").write_bytes(text_pdf([["secret"]], encrypt="pw"))
    run_dir = tmp_path / "run"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def conveyor(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "conveyor", *args], cwd=elsewhere,
                              capture_output=True, text=True, timeout=300)

    assert conveyor("docs", str(folder), "--run-dir", str(run_dir), "--gpus", "0",
                    "-q").returncode == 1
    plan = conveyor("status", str(run_dir), "--plan", "--json")
    assert plan.returncode == 0, plan.stderr
    rows = {row["stage"]: (row["action"], row["failed"]) for row in json.loads(plan.stdout)}
    assert rows == {"expand": ("reuse", 0), "unpack": ("reuse", 0), "skipped": ("reuse", 0),
                    "inspect": ("reuse", 1), "extract": ("reuse", 0),
                    "ocr_pages": ("reuse", 0), "ocr": ("reuse", 0), "chunk": ("reuse", 0),
                    "embed": ("reuse", 0), "index": ("reuse", 0)}
    retried = conveyor("retry", str(run_dir), "--stage", "inspect", "-q")
    assert retried.returncode == 1, retried.stderr  # the password is still missing
    failed = [(e["stage"], e["key"]) for e in read_events(run_dir) if e["event"] == "failed"]
    locked = str(folder / "locked.pdf")
    assert failed == [("inspect", locked), ("inspect", locked)]  # the first run's, the retry's


def test_docs_with_a_model_folder_resumes_with_it_and_search_needs_it(tmp_path, small_model):
    """--model and token chunks from the command line: the index records them, a resume
    with no options keeps them, search embeds with that model (a 384-dimension query
    would be refused), and says so when the folder is gone. Inline executor: each
    command loads torch, which takes long enough on two busy cores."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "lighthouse.pdf").write_bytes(text_pdf([[LIGHTHOUSE]], first_title=False))
    (folder / "owls.pdf").write_bytes(text_pdf([[OWLS]], first_title=False))
    run_dir = tmp_path / "run"
    mine = tmp_path / "mine"  # a copy, as it is moved away at the end
    shutil.copytree(small_model, mine)
    proc = conveyor("docs", str(folder), "--run-dir", str(run_dir), "--gpus", "0", "-q",
                    "--executor", "inline", "--model", str(mine), "--chunk-unit", "tokens",
                    "--chunk-size", "64")
    assert (proc.returncode, proc.stderr) == (0, "")
    with open_run(run_dir) as result:
        info = result.output("index")
    assert json.loads((Path(info["index"]).parent / "index.json").read_text()) == info
    assert {k: info[k] for k in ("model", "dim", "chunk_size", "chunk_overlap", "chunk_unit")
            } == {"model": str(mine), "dim": SMALL_DIM, "chunk_size": 64, "chunk_overlap": 9,
                  "chunk_unit": "tokens"}
    seen = len(list(read_events(run_dir)))
    proc = conveyor("docs", "--run-dir", str(run_dir), "--gpus", "0", "-q", "--executor",
                    "inline")
    assert (proc.returncode, proc.stderr) == (0, "")
    assert [e for e in list(read_events(run_dir))[seen:] if e["event"] == "stage_reset"] == []
    proc = conveyor("search", str(run_dir), "who looked after the lamp", "-k", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["text"] == LIGHTHOUSE
    mine.rename(tmp_path / "moved")
    proc = conveyor("search", str(run_dir), "lamp")
    assert (proc.returncode, proc.stdout) == (2, "")
    assert " ".join(proc.stderr.split()) == (  # one line, wrapped where it is wider
        f"error: the index in {run_dir} was built with model {mine}, which cannot be "
        f"loaded: no such model folder: {mine}")


@pytest.mark.ray
def test_docs_on_ray_lists_skips_and_a_rerun_picks_up_the_file_added(ray_instance, tmp_path):
    """``--executor ray`` runs the same pipeline with the same input stamps as a local
    run: a file added to the folder is an input of its own, so the rerun finds it and
    leaves the other file alone."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "lighthouse.pdf").write_bytes(text_pdf([[LIGHTHOUSE]], first_title=False))
    (folder / "notes.txt").write_text("not a document")
    run_dir = tmp_path / "run"
    address = ray_instance.get_runtime_context().gcs_address
    args = ("docs", str(folder), "--run-dir", str(run_dir), "--executor", "ray", "--address",
            address, "--gpus", "0")
    first = conveyor(*args)
    assert first.returncode == 0, first.stderr[-2000:]
    assert f"1 file(s) skipped, not documents:\n  {folder / 'notes.txt'}: not a document: " \
           f"text\n" in first.stdout
    (folder / "owls.pdf").write_bytes(text_pdf([[OWLS]], first_title=False))
    second = conveyor(*args)
    assert second.returncode == 0, second.stderr[-2000:]
    events = read_events(run_dir)
    assert [e["executor"] for e in events if e["event"] == "run_start"] == ["ray", "ray"]
    db = sqlite3.connect(f"file:{run_dir / 'ledger.db'}?mode=ro", uri=True)
    (inputs,) = db.execute("SELECT value FROM meta WHERE name = 'inputs'").fetchone()
    db.close()
    summary = json.loads(inputs)
    assert (summary["added"], summary["changed"], summary["unchanged"]) == (1, 0, 2)
    with open_run(run_dir) as result:
        assert sorted(dict(result.outputs("inspect"))) == [str(folder / "lighthouse.pdf"),
                                                           str(folder / "owls.pdf")]
        assert result.output("index")["documents"] == 2
