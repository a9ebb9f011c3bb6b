"""expand: folders and archives to one item per PDF, stable keys, traversal refused."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from conveyor.docs.archives import expand_to, input_items
from conveyor.docs.corpus import text_pdf
from conveyor.docs.errors import ArchiveError, UnsafeArchive
from conveyor.docs.extract import extract
from conveyor.docs.profile import inspect

PDF_A = text_pdf([["Alpha document about glaciers and ice sheets."]])
PDF_B = text_pdf([["Beta document about lighthouses and their keepers."]])


def _items(source: Path, out: Path) -> dict[str, dict]:
    return {key: value for key, value in expand_to(str(source), out)}


def _text(value: dict) -> str:
    return extract(inspect(value))["pages"][0]["text"]


def test_zip_members_are_items_keyed_archive_slash_member(tmp_path):
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.pdf", PDF_A)
        zf.writestr("sub/dir/b.PDF", PDF_B)
        zf.writestr("readme.txt", "not a pdf")
        zf.writestr("sub/", "")
    items = _items(archive, tmp_path / "out")
    assert sorted(items) == [f"{archive}/a.pdf", f"{archive}/sub/dir/b.PDF"]
    a = items[f"{archive}/a.pdf"]
    assert a["archive"] == str(archive) and a["member"] == "a.pdf"
    assert Path(a["path"]).is_relative_to(tmp_path / "out")
    assert _text(a) == "Alpha document about glaciers and ice sheets."
    assert _text(items[f"{archive}/sub/dir/b.PDF"]).startswith("Beta document")
    # Stable: expanding again gives the same keys and values.
    assert _items(archive, tmp_path / "out") == items


@pytest.mark.parametrize("suffix,mode", [(".tar", "w"), (".tar.gz", "w:gz"), (".tgz", "w:gz")])
def test_tar_members(tmp_path, suffix, mode):
    archive = tmp_path / f"bundle{suffix}"
    with tarfile.open(archive, mode) as tf:
        for name, data in (("x/a.pdf", PDF_A), ("b.pdf", PDF_B)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    items = _items(archive, tmp_path / "out")
    assert sorted(items) == [f"{archive}/b.pdf", f"{archive}/x/a.pdf"]
    assert _text(items[f"{archive}/x/a.pdf"]).startswith("Alpha document")


def test_7z_members(tmp_path):
    import py7zr

    archive = tmp_path / "bundle.7z"
    with py7zr.SevenZipFile(archive, "w") as zf:
        zf.writestr(PDF_A, "docs/a.pdf")
        zf.writestr(PDF_B, "b.pdf")
    items = _items(archive, tmp_path / "out")
    assert sorted(items) == [f"{archive}/b.pdf", f"{archive}/docs/a.pdf"]
    assert _text(items[f"{archive}/docs/a.pdf"]).startswith("Alpha document")
    assert _text(items[f"{archive}/b.pdf"]).startswith("Beta document")


@pytest.mark.parametrize("name", ["../evil.pdf", "a/../../evil.pdf", "/tmp/evil.pdf",
                                  "..\\evil.pdf", "C:/evil.pdf"])
def test_zip_traversal_is_refused_before_anything_is_written(tmp_path, name):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("good.pdf", PDF_A)
        zf.writestr(zipfile.ZipInfo(name), PDF_B)
    out = tmp_path / "deep" / "out"
    with pytest.raises(UnsafeArchive, match="path traversal refused"):
        list(expand_to(str(archive), out))
    written = [p for p in tmp_path.rglob("*.pdf")]
    assert written == [], written  # not even the good member, and nothing outside


def test_tar_traversal_and_links_are_refused(tmp_path):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("../../evil.pdf")
        info.size = len(PDF_A)
        tf.addfile(info, io.BytesIO(PDF_A))
    with pytest.raises(UnsafeArchive, match="path traversal refused"):
        list(expand_to(str(archive), tmp_path / "out"))
    linked = tmp_path / "link.tar"
    with tarfile.open(linked, "w") as tf:
        info = tarfile.TarInfo("passwd.pdf")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(UnsafeArchive, match="is a link"):
        list(expand_to(str(linked), tmp_path / "out2"))


def test_unreadable_archives_fail_clearly(tmp_path):
    # No rar tool or writer exists on this machine, so no real RAR archive can be
    # made here; a file that is not one must still fail with a clear reason.
    fake_rar = tmp_path / "scans.rar"
    fake_rar.write_bytes(b"this is not a rar archive at all")
    with pytest.raises(ArchiveError, match="not a RAR archive"):
        list(expand_to(str(fake_rar), tmp_path / "out"))
    broken_zip = tmp_path / "broken.zip"
    broken_zip.write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(ArchiveError, match="cannot read the zip archive"):
        list(expand_to(str(broken_zip), tmp_path / "out"))


def test_folder_walk_isolates_a_bad_archive(tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.pdf").write_bytes(PDF_A)
    (folder / "notes.txt").write_text("ignored")
    with zipfile.ZipFile(folder / "evil.zip", "w") as zf:
        zf.writestr("../evil.pdf", PDF_B)
    items = _items(folder, tmp_path / "out")
    assert sorted(items) == [str(folder / "evil.zip"), str(folder / "sub" / "a.pdf")]
    bad = items[str(folder / "evil.zip")]
    assert "path traversal refused" in bad["error"]
    with pytest.raises(ArchiveError, match="path traversal refused"):
        inspect(bad)
    assert _text(items[str(folder / "sub" / "a.pdf")]).startswith("Alpha document")


def test_missing_input_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        list(expand_to(str(tmp_path / "nope"), tmp_path / "out"))


def test_input_stamps_change_when_a_folder_changes(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.pdf").write_bytes(PDF_A)
    first = input_items([str(folder)])
    assert input_items([str(folder)]) == first
    (folder / "b.pdf").write_bytes(PDF_B)
    second = input_items([str(folder)])
    assert second[0].key == first[0].key == os.path.normpath(str(folder))
    assert second[0].value["stamp"] != first[0].value["stamp"]
