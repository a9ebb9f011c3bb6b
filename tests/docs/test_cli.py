"""The docs and search commands through typer, as the engine's CLI will register them."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from conveyor.docs.cli import register
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
