"""The whole pipeline on the sample corpus (the demo's local run), and a small inline run."""

from __future__ import annotations

import os

import pytest

from conveyor import open_run
from conveyor.docs.corpus import char_error_rate, text_pdf
from conveyor.docs.search import search
from conveyor.observe.events import read_events

from .conftest import SMALL_DIM, doc_by_file, source_of
from .samples import assert_failures, run_folder, zipped


def test_demo_succeeds(demo_run):
    assert demo_run["status"] == 0


def test_every_good_document_finishes_and_only_the_broken_ones_fail(demo_run):
    corpus, manifest = demo_run["corpus"], demo_run["manifest"]
    with open_run(demo_run["run_dir"]) as result:
        failures = {row["key"]: row for row in result.failures()}
        counts = result.counts
        assert set(failures) == {source_of(corpus, "encrypted.pdf"),
                                 source_of(corpus, "truncated.pdf")}
        assert failures[source_of(corpus, "encrypted.pdf")]["error"].endswith(
            "encrypted: password required")
        assert "truncated: " in failures[source_of(corpus, "truncated.pdf")]["error"]
        assert all(row["stage"] == "inspect" for row in failures.values())
        good = [d for d in manifest["documents"] if not d["expect_failure"]]
        assert counts["inspect"]["done"] == len(good)
        assert counts["index"]["done"] == 1
        for stage, c in counts.items():
            assert c["pending"] == c["running"] == 0, stage
        info = result.output("index")
        assert info["documents"] == len(good)


def test_extracted_text_matches_the_known_text(demo_run):
    corpus, manifest = demo_run["corpus"], demo_run["manifest"]
    with open_run(demo_run["run_dir"]) as result:
        outputs = dict(result.outputs("extract"))
    checked = 0
    for doc in manifest["documents"]:
        key = source_of(corpus, doc["file"])
        if doc["expect_failure"] or doc["kind"] == "scan":
            assert key not in outputs
            continue
        pages = {p["page"]: p["text"] for p in outputs[key]["pages"]}
        for known in doc["pages"]:
            if known["kind"] == "text":
                assert pages[known["page"]] == known["text"], (doc["file"], known["page"])
                checked += 1
            else:
                assert known["page"] not in pages  # scanned pages are not "extracted"
    assert checked >= 10


def test_ocr_character_error_rate_is_at_most_5_percent(demo_run):
    corpus, manifest = demo_run["corpus"], demo_run["manifest"]
    with open_run(demo_run["run_dir"]) as result:
        outputs = dict(result.outputs("ocr"))
    scanned = [(d, p) for d in manifest["documents"] for p in d["pages"] if p["kind"] == "scan"]
    assert len(scanned) == 3
    for doc, known in scanned:
        key = f"{source_of(corpus, doc['file'])}/page-{known['page']}"
        (page,) = outputs[key]["pages"]
        assert outputs[key]["method"] == "ocr"
        cer = char_error_rate(known["text"], page["text"])
        assert cer <= 0.05, (key, cer, page["text"])


def test_rotated_and_cropped_page_reads_upright_without_the_cropped_strip(demo_run):
    corpus, manifest = demo_run["corpus"], demo_run["manifest"]
    doc = doc_by_file(manifest, "scans/volcanoes-scan.pdf")
    known = next(p for p in doc["pages"] if p["rotated"])
    with open_run(demo_run["run_dir"]) as result:
        outputs = dict(result.outputs("ocr"))
        profile = dict(result.outputs("inspect"))[source_of(corpus, doc["file"])]
    info = profile["page_info"][known["page"] - 1]
    assert info["rotation"] == 90 and info["cropbox"] != info["mediabox"]  # the hard case
    text = outputs[f"{source_of(corpus, doc['file'])}/page-{known['page']}"]["pages"][0]["text"]
    assert char_error_rate(known["text"], text) <= 0.02, text
    assert "CALIBRATION" not in text.upper()


@pytest.mark.parametrize("file", ["photosynthesis.pdf", "jazz.pdf", "reports/baking.pdf",
                                  "bundle.zip/compilers.pdf", "bundle.zip/ocean/tides.pdf",
                                  "scans/volcanoes-scan.pdf", "scans/beekeeping-mixed.pdf"])
def test_search_finds_the_right_document_first(demo_run, file):
    corpus, manifest = demo_run["corpus"], demo_run["manifest"]
    query = next(q for q in manifest["queries"] if q["file"] == file)
    hits = search(demo_run["run_dir"], query["query"], k=3)
    assert hits[0]["source"] == source_of(corpus, file), hits[0]
    assert hits[0]["score"] > hits[-1]["score"] or len({h["source"] for h in hits}) == 1
    if "zip/" in file:
        archive, member = file.split("/", 1)
        assert hits[0]["path"] == source_of(corpus, archive)
        assert hits[0]["member"] == member
    else:
        assert hits[0]["path"] == source_of(corpus, file) and hits[0]["member"] is None
    assert set(hits[0]) >= {"score", "text", "path", "member", "page"}


def test_index_files_hold_every_chunk_with_its_vector(demo_run):
    import numpy as np
    import pyarrow.parquet as pq
    from usearch.index import Index

    with open_run(demo_run["run_dir"]) as result:
        info = result.output("index")
        embedded = len(list(result.outputs("embed")))
    table = pq.read_table(info["table"])
    assert table.num_rows == info["chunks"] == embedded
    assert set(table.column_names) >= {"text", "doc", "member", "pages", "vector"}
    index = Index.restore(info["index"], view=True)
    assert len(index) == table.num_rows
    vectors = np.array(table.column("vector").to_pylist(), dtype=np.float32)
    assert vectors.shape == (table.num_rows, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    # The index returns each stored vector as its own nearest neighbour.
    matches = index.search(vectors[3], 1)
    assert int(matches.keys[0]) == 3


def test_inline_executor_run_with_bad_inputs(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.pdf").write_bytes(text_pdf([["Glaciers carve valleys as the ice flows "
                                                 "slowly downhill under its own weight."]]))
    (folder / "empty.pdf").write_bytes(b"")
    (folder / "notes.pdf").write_text("meeting notes, saved with the wrong extension")
    with run_folder(folder, tmp_path / "run") as result:
        errors = {os.path.basename(r["key"]): r["error"] for r in result.failures()}
        assert errors == {"empty.pdf": "BadDocument: empty file",
                          "notes.pdf": errors["notes.pdf"]}
        assert errors["notes.pdf"].startswith("BadDocument: not a PDF")
        assert result.output("index")["chunks"] == 1
    hits = search(tmp_path / "run", "ice moving down a mountain valley", k=1)
    assert hits[0]["path"] == str(folder / "good.pdf") and hits[0]["page"] == 1


def test_a_hostile_folder_loses_nothing_silently(tmp_path):
    """A zip bomb, archives inside archives, a broken archive and a file that is not a
    document, beside a good PDF: each ends as a document, a failure with its reason, or a
    skip with its reason, and the run's counts say so."""
    import zipfile

    folder = tmp_path / "in"
    folder.mkdir()
    glaciers = text_pdf([["Glaciers carve valleys as the ice flows slowly downhill."]])
    lighthouse = text_pdf([["A lighthouse keeper trims the lamp wick every evening."]])
    (folder / "good.pdf").write_bytes(glaciers)
    inner = zipped({"deep.pdf": lighthouse}, zipfile.ZIP_DEFLATED)
    (folder / "nested.zip").write_bytes(zipped({"inner.zip": inner, "readme.txt": b"see inside"},
                                               zipfile.ZIP_DEFLATED))
    with zipfile.ZipFile(folder / "bomb.zip", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("zeros.pdf", "w") as member:
            for _ in range(200):
                member.write(bytes(2**20))
    (folder / "broken.zip").write_bytes(b"PK\x03\x04 cut short")
    (folder / "notes.txt").write_text("meeting notes")
    with run_folder(folder, tmp_path / "run") as result:
        assert_failures(result, folder, equal={
            ("inspect", "bomb.zip/zeros.pdf"):
                f"ArchiveError: {folder}/bomb.zip: member 'zeros.pdf' expands more than "
                f"100:1, over the compression ratio limit (a zip bomb?)"},
            containing={("unpack", "broken.zip"): "cannot read the zip archive"})
        assert {k[len(str(folder)) + 1:]: v["reason"]
                for k, v in result.outputs("skipped")} == {
            "notes.txt": "not a document: text",
            "nested.zip/readme.txt": "not a document: text"}
        counts = result.counts
        assert counts["skipped"]["done"] == 2 and counts["unpack"]["failed"] == 1
        assert result.output("index")["documents"] == 2
    hits = search(tmp_path / "run", "who looks after the lamp of a lighthouse", k=1)
    assert hits[0]["path"] == str(folder / "nested.zip")
    assert hits[0]["member"] == "inner.zip/deep.pdf"
    assert not list((tmp_path / "run").rglob("zeros.pdf"))  # nothing of the bomb stays


def test_another_model_or_chunking_recomputes_only_what_it_changes(tmp_path, small_model):
    """Reruns of one corpus with other options: what each resets (its ``stage_reset``
    events), what the index records, and a search that embeds with the recorded model."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "glacier.pdf").write_bytes(text_pdf([["Glaciers carve valleys as the ice "
                                                    "flows slowly downhill."]]))
    (folder / "owls.pdf").write_bytes(text_pdf([["Owls hunt at night using sharp hearing."]]))
    run_dir = tmp_path / "run"

    def run(**options) -> tuple[list[str], dict]:
        seen = len(list(read_events(run_dir)))
        with run_folder(folder, run_dir, **options) as result:
            assert result.ok
            info = result.output("index")
        reset = sorted(e["stage"] for e in list(read_events(run_dir))[seen:]
                       if e["event"] == "stage_reset")
        return reset, {k: info[k] for k in ("model", "dim", "chunk_size", "chunk_overlap",
                                            "chunk_unit")}

    assert run() == ([], {"model": "sentence-transformers/all-MiniLM-L6-v2", "dim": 384,
                          "chunk_size": 1000, "chunk_overlap": 150, "chunk_unit": "chars"})
    assert run(chunk_size=300) == (["chunk", "embed", "index"],  # extract, ocr reused
                                   {"model": "sentence-transformers/all-MiniLM-L6-v2",
                                    "dim": 384, "chunk_size": 300, "chunk_overlap": 45,
                                    "chunk_unit": "chars"})
    assert run(chunk_size=300, model=str(small_model)) == (  # chunks in chars: reused
        ["embed", "index"], {"model": str(small_model), "dim": SMALL_DIM, "chunk_size": 300,
                             "chunk_overlap": 45, "chunk_unit": "chars"})
    hits = search(run_dir, "ice moving down a mountain valley", k=1)  # 128 dimensions
    assert hits[0]["path"] == str(folder / "glacier.pdf") and hits[0]["page"] == 1
    assert run(chunk_size=60, chunk_unit="tokens", model=str(small_model)) == (
        ["chunk", "embed", "index"], {"model": str(small_model), "dim": SMALL_DIM,
                                      "chunk_size": 60, "chunk_overlap": 9,
                                      "chunk_unit": "tokens"})
    assert run(chunk_size=60, chunk_unit="tokens", model=str(small_model))[0] == []
