"""A local folder as input: each file under it is an input of its own, keyed by its path and
stamped by its size and mtime, so a rerun on the folder processes only the files added or
changed since, and drops what was derived from the files that are gone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from conveyor import Item, Pipeline, open_run
from conveyor.docs.archives import input_items
from conveyor.docs.pipeline import add_reading_stages

from .samples import (BEES, GLACIERS, OWLS, TIDES, ended, page_text, pdf, rerun_rows,
                      run_folder)


def run(folder: Path, run_dir: Path) -> dict[str, Any]:
    """The docs pipeline on ``folder`` in the driver's process; the run's input summary."""
    with run_folder(folder, run_dir) as result:
        assert result.ok, list(result.failures())
        return json.loads(result.ledger.get_meta("inputs"))


def indexed(run_dir: Path) -> set[str]:
    """The documents the index holds chunks of."""
    import pyarrow.parquet as pq

    with open_run(run_dir) as result:
        table = result.output("index")["table"]
    return set(pq.read_table(table, columns=["source"]).column("source").to_pylist())


def test_a_rerun_on_a_folder_processes_only_the_added_the_changed_and_drops_the_gone(
        tmp_path):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "owls.pdf").write_bytes(pdf(OWLS))
    (folder / "sub" / "tides.pdf").write_bytes(pdf(TIDES))
    (folder / "sub" / "glaciers.pdf").write_bytes(pdf(GLACIERS))
    run_dir = tmp_path / "run"
    owls, tides, glaciers, bees = (os.path.join(str(folder), name) for name in (
        "owls.pdf", "sub/tides.pdf", "sub/glaciers.pdf", "sub/bees.pdf"))

    assert run(folder, run_dir)["added"] == 3
    first = ended(run_dir)
    # the documents keep their paths as keys, as when a folder was one input
    assert {key for stage, key in first if stage == "inspect"} == {owls, tides, glaciers}

    # A 4th file: it runs, and the index; nothing else again.
    (folder / "sub" / "bees.pdf").write_bytes(pdf(BEES))
    summary = run(folder, run_dir)
    assert (summary["added"], summary["changed"], summary["missing"]) == (1, 0, 0)
    after = ended(run_dir)
    rerun = rerun_rows(first, after)
    assert {stage for stage, key in rerun if not key.startswith(bees)} == {"index"}
    assert {("expand", bees), ("inspect", bees), ("extract", bees)} <= rerun
    assert indexed(run_dir) == {owls, tides, glaciers, bees}

    # One file touched (same bytes, a new mtime), one rewritten: only they start over.
    before = after
    os.utime(folder / "owls.pdf", ns=(1, 1))
    (folder / "sub" / "tides.pdf").write_bytes(pdf(TIDES + " The moon pulls hardest."))
    summary = run(folder, run_dir)
    assert (summary["added"], summary["changed"], summary["missing"]) == (0, 2, 0)
    after = ended(run_dir)
    rerun = rerun_rows(before, after)
    assert {stage for stage, key in rerun
            if not key.startswith((owls, tides))} == {"index"}
    assert {("expand", owls), ("inspect", owls), ("expand", tides), ("extract", tides)} \
        <= rerun
    with open_run(run_dir) as result:
        assert "pulls hardest" in page_text(dict(result.outputs("extract"))[tides])

    # One file deleted: reported gone (not missing: an input not given is kept), its rows
    # and its chunks in the index dropped; the other documents are not processed again.
    before = after
    (folder / "sub" / "glaciers.pdf").unlink()
    summary = run(folder, run_dir)
    assert summary == {"added": 0, "changed": 0, "unchanged": 3, "missing": 0,
                       "missing_keys": [], "gone": 1, "gone_keys": [glaciers]}
    after = ended(run_dir)
    assert not [row for row in after if row[1].startswith(glaciers)]
    assert {stage for stage, key in rerun_rows(before, after)} == {"index"}
    assert indexed(run_dir) == {owls, tides, bees}


def test_a_run_dir_that_had_the_folder_as_one_input_takes_its_files_without_collisions(
        tmp_path):
    """Before, a folder was one input keyed by its path: given again, that input is gone
    (its folder is listed file by file now) and dropped, and every file runs once."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "owls.pdf").write_bytes(pdf(OWLS))
    (folder / "tides.pdf").write_bytes(pdf(TIDES))
    pipe, run_dir = Pipeline("read"), tmp_path / "run"
    add_reading_stages(pipe, "1")
    old = Item(str(folder), {"path": str(folder), "stamp": "a digest of the listing"})
    with pipe.run([old], run_dir=run_dir, executor="inline") as result:
        assert sorted(dict(result.outputs("inspect"))) == [
            str(folder / "owls.pdf"), str(folder / "tides.pdf")]
    with pipe.run(input_items([str(folder)]), run_dir=run_dir, executor="inline") as result:
        assert result.ok, list(result.failures())
        assert (result.inputs["added"], result.inputs["gone_keys"]) == (2, [str(folder)])
        assert sorted(dict(result.outputs("expand"))) == [
            str(folder / "owls.pdf"), str(folder / "tides.pdf")]
        assert OWLS in page_text(dict(result.outputs("extract"))[str(folder / "owls.pdf")])


def test_an_empty_folder_is_a_usage_error_and_a_dangling_link_fails_alone(tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    proc = subprocess.run([sys.executable, "-m", "conveyor", "docs", str(empty), "--run-dir",
                           str(tmp_path / "run"), "-q"], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "COLUMNS": "250"})
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr.endswith(f"error: no files in the folder {empty}\n"), proc.stderr
    with open_run(tmp_path / "run") as result:
        assert list(result.ledger.rows()) == []  # nothing recorded

    (empty / "owls.pdf").write_bytes(pdf(OWLS))
    (empty / "sub" / "gone.pdf").symlink_to(tmp_path / "nowhere.pdf")
    pipe = Pipeline("read")
    add_reading_stages(pipe, "1")
    with pipe.run(input_items([str(empty)]), run_dir=tmp_path / "run2",
                  executor="inline") as result:
        gone = str(empty / "sub" / "gone.pdf")
        assert [(r["stage"], r["key"], r["error"]) for r in result.failures()] == [
            ("expand", gone, f"FileNotFoundError: no such file or folder: {gone}")]
        assert OWLS in page_text(dict(result.outputs("extract"))[str(empty / "owls.pdf")])
