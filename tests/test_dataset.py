"""`conveyor dataset` end to end, as a user runs it: generated PDFs in, a dataset out,
to a folder and to a real S3 API server (moto's, over HTTP, with s3fs)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rensa")
pq = pytest.importorskip("pyarrow.parquet")

from conveyor import open_run
from conveyor.docs.corpus import text_pdf
from conveyor.docs.topics import TOPICS
from helpers import TcpProxy

os.environ.setdefault("HF_HUB_OFFLINE", "1")
GERMAN = ("Die Bienen sammeln im Sommer den Nektar der Blüten und bringen ihn in den Stock, "
          "wo er zu Honig wird. Der Imker öffnet die Kästen nur an warmen Tagen, damit das "
          "Volk nicht auskühlt, und prüft dabei die Waben auf Krankheiten. ")


def prose(n_words: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    sentences = [s for t in TOPICS.values() for s in t["sentences"]]  # type: ignore[union-attr]
    words: list[str] = []
    while len(words) < n_words:
        words.extend(rng.choice(sentences).split())
    return words[:n_words]


def pdf(words: list[str], path: Path) -> None:
    lines = [" ".join(words[i:i + 11]) for i in range(0, len(words), 11)]
    path.write_bytes(text_pdf([lines[i:i + 30] for i in range(0, len(lines), 30)],
                              first_title=False))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    base = prose(420, 1)
    pdf(base, root / "alpha.pdf")
    pdf(base, root / "alpha-copy.pdf")  # the same text, another file
    near = list(base)
    near[200] = near[310] = "zeppelin"
    pdf(near, root / "alpha-near.pdf")
    pdf(prose(380, 2), root / "beta.pdf")
    contact = prose(200, 3)
    contact[50:50] = ["write", "to", "mia.berg@example.org", "or", "call", "+49", "30", "1234",
                      "5678"]
    pdf(contact, root / "contact.pdf")
    pdf(" ".join([GERMAN] * 4).split(), root / "honig.pdf")
    pdf(("#### ~~~ |||| $$$ %%% " * 30).split(), root / "junk.pdf")
    pdf(["just", "a", "few", "words"], root / "tiny.pdf")
    return root


def conveyor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "conveyor", *args], capture_output=True,
                          text=True, timeout=600, env={**os.environ, **(env or {})})


def read_rows(folder: Path) -> list[dict]:
    rows = []
    for shard in sorted((folder / "data").glob("train-*.parquet")):
        rows.extend(pq.read_table(shard).to_pylist())
    return rows


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def built(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("built")
    out, run_dir = root / "out", root / "run"
    proc = conveyor("dataset", str(corpus), "--run-dir", str(run_dir), "--out", str(out),
                    "--rule", "min_words=30", "-q")
    return {"proc": proc, "out": out, "run_dir": run_dir, "corpus": corpus}


def key(corpus: Path, name: str) -> str:
    return os.path.normpath(str(corpus / name))


def test_a_folder_dataset_keeps_cleans_redacts_and_dedupes(built):
    proc, out, corpus = built["proc"], built["out"], built["corpus"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_rows(out)
    ids = [r["id"] for r in rows]
    assert ids == sorted(ids)
    alphas = {key(corpus, n) for n in ("alpha.pdf", "alpha-copy.pdf", "alpha-near.pdf")}
    kept = set(ids)
    assert kept == {*(alphas & kept), key(corpus, "beta.pdf"), key(corpus, "contact.pdf"),
                    key(corpus, "honig.pdf")}
    assert len(alphas & kept) == 1  # one survivor of the three
    by_id = {r["id"]: r for r in rows}
    assert by_id[key(corpus, "honig.pdf")]["lang"] == "de"
    contact = by_id[key(corpus, "contact.pdf")]
    assert "<EMAIL>" in contact["text"] and "<PHONE>" in contact["text"]
    assert "mia.berg@example.org" not in contact["text"]
    assert contact["pii"] == {"email": 1, "ip": 0, "phone": 1}
    for row in rows:
        assert "\ufffe" not in row["text"] and "\ufffd" not in row["text"]
        assert row["method"] == "text" and row["pages"] >= 1
        assert row["page_offsets"][0] == 0
    rejected = {r["id"]: r for f in (out / "rejected").glob("*.parquet")
                for r in pq.read_table(f).to_pylist()}
    survivor = (alphas & kept).pop()
    for dup in alphas - {survivor}:
        assert rejected[dup]["duplicate_of"] == survivor
        assert rejected[dup]["reasons"] == [f"duplicate of {survivor}"]
    assert rejected[key(corpus, "tiny.pdf")]["reasons"] == [
        "no text: no page has a text layer or needs OCR"]
    assert any(r.startswith("alphabetic words")
               for r in rejected[key(corpus, "junk.pdf")]["reasons"])


def test_the_manifest_lists_every_shard_whole_and_the_card_says_how_to_load(built):
    out = built["out"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows"] == len(read_rows(out)) and manifest["rejected"] == 4
    # junk.pdf fails five rules, each counted; the two copies and tiny.pdf one each
    assert manifest["rejected_by"] == {"duplicate of": 2, "no text": 1, "alphabetic words": 1,
                                       "duplicate lines": 1, "garbage": 1, "symbol ratio": 1,
                                       "top 2-gram": 1}
    for shard in manifest["shards"]:
        path = out / shard["path"]
        assert path.stat().st_size == shard["bytes"] and sha256(path) == shard["sha256"]
    listed = {s["path"] for s in manifest["shards"]}
    present = {str(p.relative_to(out)) for p in out.rglob("*.parquet")}
    assert listed == present
    card = (out / "README.md").read_text()
    assert "path: data/train-*.parquet" in card and 'load_dataset("parquet"' in card
    assert f"**Documents**: {manifest['rows']} kept" in card
    assert manifest["languages"] == {"de": 1, "en": manifest["rows"] - 1}


def test_a_rerun_with_nothing_changed_writes_nothing(built):
    out = built["out"]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    proc = conveyor("dataset", "--run-dir", str(built["run_dir"]), "--out", str(out),
                    "--rule", "min_words=30", "-q")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_languages_reject_the_others_with_the_reason(corpus, tmp_path):
    out = tmp_path / "out"
    proc = conveyor("dataset", str(corpus / "honig.pdf"), str(corpus / "beta.pdf"),
                    "--run-dir", str(tmp_path / "run"), "--out", str(out), "--languages", "en",
                    "--dedupe", "none", "--format", "jsonl", "-q")
    assert proc.returncode == 0, proc.stderr[-2000:]
    kept = [json.loads(line) for f in (out / "data").glob("train-*.jsonl")
            for line in f.read_text().splitlines()]
    assert [r["id"] for r in kept] == [key(corpus, "beta.pdf")]
    rejected = [json.loads(line) for f in (out / "rejected").glob("*.jsonl")
                for line in f.read_text().splitlines()]
    assert [(r["id"], r["reasons"]) for r in rejected] == [
        (key(corpus, "honig.pdf"), ["language de not in en"])]


def test_usage_errors_exit_2(corpus, tmp_path):
    for args, message in (
            (["--dedupe", "maybe"], "dedupe must be one of fuzzy, exact, none"),
            (["--format", "csv"], "format must be parquet or jsonl"),
            (["--rule", "min_words=lots"], "rule min_words needs a int"),
            (["--shard-size", "big"], "big")):
        proc = conveyor("dataset", str(corpus), "--run-dir", str(tmp_path / "r"), "--out",
                        str(tmp_path / "o"), *args)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
        assert not (tmp_path / "r").exists()


# -- object storage: a real S3 API server -------------------------------------------------


def test_a_dataset_in_object_storage(corpus, tmp_path, s3):
    """Out to the bucket, and one input from it (a remote input keeps its URL as id)."""
    dest = f"s3://{s3['bucket']}/ds"
    beta = f"s3://{s3['bucket']}/in/beta.pdf"
    s3["fs"].put(str(corpus / "beta.pdf"), beta)
    proc = conveyor("dataset", beta, str(corpus / "contact.pdf"),
                    "--run-dir", str(tmp_path / "run"), "--out", dest, "--dedupe", "exact",
                    "--rule", "min_words=30", "-q", env=s3["env"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    fs = s3["fs"]
    manifest = json.loads(fs.cat(f"{s3['bucket']}/ds/manifest.json"))
    assert manifest["rows"] == 2
    for shard in manifest["shards"]:
        data = fs.cat(f"{s3['bucket']}/ds/{shard['path']}")
        assert len(data) == shard["bytes"]
        assert hashlib.sha256(data).hexdigest() == shard["sha256"]
    table = pq.read_table(f"{s3['bucket']}/ds/{manifest['shards'][0]['path']}", filesystem=fs)
    assert sorted(table.column("id").to_pylist()) == [key(corpus, "contact.pdf"), beta]


def test_the_store_going_away_mid_upload_fails_clearly_shows_nothing_partial_and_a_rerun_completes(
        corpus, tmp_path, s3):
    # The store goes away as the second object starts up: one shard is whole, the rest never
    # arrive (every retry is refused), the manifest is never written.
    proxy = TcpProxy(("127.0.0.1", s3["port"]), cut_at=(b"PUT ", 2))
    # botocore's own retries (the standard AWS_MAX_ATTEMPTS) off: s3fs's and the stage's
    # retries still run, and the failure comes in seconds instead of minutes.
    env = {**s3["env"], "AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}",
           "AWS_MAX_ATTEMPTS": "1"}
    fs, prefix = s3["fs"], f"{s3['bucket']}/ds"
    dest = f"s3://{prefix}"
    args = ("dataset", str(corpus), "--run-dir", str(tmp_path / "run"), "--out", dest,
            "--rule", "min_words=30", "--shard-size", "1KiB", "--upload-concurrency", "1", "-q")

    proc = conveyor(*args, env=env)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"(export): ExportError: exporting to '{dest}' failed" in " ".join(proc.stderr.split())
    visible = fs.find(prefix)
    assert len(visible) == 1 and "/data/" in visible[0]
    [staging] = (tmp_path / "run" / "artifacts" / "export").iterdir()  # the export's own folder
    for path in visible:  # every object there is whole: as the run wrote it locally
        assert fs.cat(path) == (staging / path[len(prefix) + 1:]).read_bytes(), path

    proxy.restore()
    again = conveyor(*args, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    fs.invalidate_cache()  # s3fs lists from a cache filled before the rerun
    manifest = json.loads(fs.cat(f"{prefix}/manifest.json"))
    assert len([s for s in manifest["shards"] if s["path"].startswith("data/")]) > 1
    for shard in manifest["shards"]:
        assert hashlib.sha256(fs.cat(f"{prefix}/{shard['path']}")).hexdigest() == \
            shard["sha256"]
    assert sorted(fs.find(prefix)) == sorted(
        [f"{prefix}/{s['path']}" for s in manifest["shards"]]
        + [f"{prefix}/README.md", f"{prefix}/manifest.json"])
    with open_run(tmp_path / "run") as result:
        assert result.ok
    proxy.close()
