"""inspect and extract on real PDFs: per-page verdicts from content, exact text, clear reasons."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

from conveyor.docs.corpus import text_pdf
from conveyor.docs.errors import BadDocument
from conveyor.docs.extract import extract
from conveyor.docs.profile import inspect

from .conftest import doc_by_file


def test_text_pages_extract_exactly_the_known_text(corpus):
    root, manifest = corpus
    for file in ("photosynthesis.pdf", "jazz.pdf", "reports/baking.pdf"):
        profile = inspect(str(root / file))
        doc = doc_by_file(manifest, file)
        assert profile["pages"] == len(doc["pages"])
        assert profile["pages_needing_ocr"] == [] and not profile["scanned"]
        out = extract(profile)
        assert [p["page"] for p in out["pages"]] == [p["page"] for p in doc["pages"]]
        for got, known in zip(out["pages"], doc["pages"]):
            assert got["text"] == known["text"], (file, got["page"])


def test_scanned_pages_are_found_from_content_not_the_name(corpus, tmp_path):
    root, _ = corpus
    scan = inspect(str(root / "scans/volcanoes-scan.pdf"))
    assert scan["scanned"] and scan["pages_needing_ocr"] == [1, 2] and scan["text_pages"] == []
    assert [p["rotation"] for p in scan["page_info"]] == [0, 90]
    assert scan["page_info"][1]["cropbox"] != scan["page_info"][1]["mediabox"]
    mixed = inspect(str(root / "scans/beekeeping-mixed.pdf"))
    assert not mixed["scanned"]
    assert mixed["text_pages"] == [1] and mixed["pages_needing_ocr"] == [2]
    # The same bytes under a misleading name get the same verdict.
    renamed = tmp_path / "definitely-typed-text.pdf"
    shutil.copy(root / "scans/volcanoes-scan.pdf", renamed)
    assert inspect(str(renamed))["pages_needing_ocr"] == [1, 2]
    typed = tmp_path / "scan-0001.pdf"
    shutil.copy(root / "jazz.pdf", typed)
    assert inspect(str(typed))["pages_needing_ocr"] == []


def test_profile_fields(corpus):
    root, _ = corpus
    import hashlib

    path = root / "jazz.pdf"
    profile = inspect(str(path))
    assert profile["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert profile["bytes"] == path.stat().st_size
    assert profile["encrypted"] is False
    assert profile["path"] == str(path)


def _fail_reason(path: Path) -> str:
    with pytest.raises(BadDocument) as info:
        inspect(str(path))
    return str(info.value)


def test_broken_files_fail_with_clear_reasons(corpus, tmp_path):
    root, _ = corpus
    assert _fail_reason(root / "encrypted.pdf") == "encrypted: password required"
    assert _fail_reason(root / "truncated.pdf").startswith("truncated: ")
    empty = tmp_path / "empty.pdf"
    empty.write_bytes(b"")
    assert _fail_reason(empty) == "empty file"
    text = tmp_path / "notes.pdf"
    text.write_text("just some notes, not a PDF\n")
    assert _fail_reason(text).startswith("not a PDF")
    garbage = tmp_path / "garbage.pdf"
    garbage.write_bytes(b"%PDF-1.4\n" + bytes(range(256)) * 20 + b"\n%%EOF\n")
    assert _fail_reason(garbage).startswith("corrupt: ")
    # Cutting a good PDF anywhere past its header is "truncated", never a silent partial read.
    whole = (root / "photosynthesis.pdf").read_bytes()
    for cut in (len(whole) // 3, len(whole) - 10):
        part = tmp_path / f"cut-{cut}.pdf"
        part.write_bytes(whole[:cut])
        assert _fail_reason(part).startswith("truncated: ")


def test_owner_password_only_is_encrypted_but_readable(tmp_path):
    from reportlab.lib.pdfencrypt import StandardEncryption

    lines = ["An owner password restricts printing but anyone may open this file."]
    path = tmp_path / "owner-only.pdf"
    path.write_bytes(text_pdf([lines], encrypt=StandardEncryption("", "owner-secret")))
    profile = inspect(str(path))
    assert profile["encrypted"] is True
    assert extract(profile)["pages"][0]["text"] == lines[0]


def test_cropbox_hides_text_from_extraction(tmp_path):
    """Text outside the CropBox is not on the page a reader sees; it is not extracted."""
    import pypdfium2 as pdfium

    data = text_pdf([["Visible line inside the crop box."]], stray="HIDDEN MARGIN TEXT")
    doc = pdfium.PdfDocument(data)
    doc[0].set_cropbox(0, 60, 595, 842)  # the stray line sits at y=28
    buf = io.BytesIO()
    doc.save(buf)
    doc.close()
    path = tmp_path / "cropped.pdf"
    path.write_bytes(buf.getvalue())
    text = extract(inspect(str(path)))["pages"][0]["text"]
    assert text == "Visible line inside the crop box."
