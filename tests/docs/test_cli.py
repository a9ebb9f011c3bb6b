"""The docs and search commands through typer, as the engine's CLI will register them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from conveyor.docs.cli import register
from conveyor.events import read_events
from conveyor.docs.corpus import text_pdf


def _flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_docs_then_search(app, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "lighthouse.pdf").write_bytes(text_pdf([[
        "Lighthouse keepers trimmed the lamp wick every night and wound the clockwork."]]))
    (folder / "locked.pdf").write_bytes(text_pdf([["secret"]], encrypt="pw"))
    run_dir = tmp_path / "run"
    runner = CliRunner()
    out = runner.invoke(app, ["docs", str(folder), "--run-dir", str(run_dir), "--executor",
                              "inline", "--gpus", "0", "--quiet"])
    assert out.exit_code == 1, out.output
    printed = _flat(out.output)
    assert "locked.pdf" in printed and "encrypted: password required" in printed

    out = runner.invoke(app, ["search", str(run_dir), "who looked after the lamp", "-k", "1",
                              "--json"])
    assert out.exit_code == 0, out.output
    hits = json.loads(out.stdout)
    assert len(hits) == 1
    assert hits[0]["path"] == str(folder / "lighthouse.pdf") and hits[0]["page"] == 1
    assert hits[0]["member"] is None and "Lighthouse keepers" in hits[0]["text"]

    out = runner.invoke(app, ["search", str(run_dir), "lamp"])
    assert out.exit_code == 0 and "lighthouse.pdf" in out.stdout


def test_docs_all_good_exits_0(app, tmp_path):
    path = tmp_path / "ok.pdf"
    path.write_bytes(text_pdf([["Owls hunt at night using sharp hearing."]]))
    out = CliRunner().invoke(app, ["docs", str(path), "--run-dir", str(tmp_path / "run"),
                                   "--executor", "inline", "--quiet"])
    assert out.exit_code == 0, out.output


def test_usage_errors_exit_2(app, tmp_path):
    runner = CliRunner()
    out = runner.invoke(app, ["docs", str(tmp_path / "missing.pdf"), "--run-dir",
                              str(tmp_path / "run")])
    assert out.exit_code == 2 and "no such file or folder" in _flat(out.output)
    out = runner.invoke(app, ["docs", "--run-dir", str(tmp_path / "run")])
    assert out.exit_code == 2 and "give INPUT" in _flat(out.output)
    out = runner.invoke(app, ["docs", str(tmp_path), "--run-dir", str(tmp_path / "r"),
                              "--executor", "nonsense"])
    assert out.exit_code == 2, out.output
    out = runner.invoke(app, ["search", str(tmp_path / "nowhere"), "query"])
    assert out.exit_code == 2 and "not a conveyor run directory" in _flat(out.output)
    out = runner.invoke(app, ["search", str(tmp_path), "query", "-k", "0"])
    assert out.exit_code == 2


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
    assert rows == {"expand": ("reuse", 0), "inspect": ("reuse", 1), "extract": ("reuse", 0),
                    "ocr_pages": ("reuse", 0), "ocr": ("reuse", 0), "chunk": ("reuse", 0),
                    "embed": ("reuse", 0), "index": ("reuse", 0)}
    retried = conveyor("retry", str(run_dir), "--stage", "inspect", "-q")
    assert retried.returncode == 1, retried.stderr  # the password is still missing
    failed = [(e["stage"], e["key"]) for e in read_events(run_dir) if e["event"] == "failed"]
    locked = str(folder / "locked.pdf")
    assert failed == [("inspect", locked), ("inspect", locked)]  # the first run's, the retry's
