"""expand: folders and archives to one item per PDF, stable keys, traversal refused,
archives inside archives opened to a depth, extraction limits enforced as bytes are written."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest
from rar_writer import Entry, rar5

from conveyor import Item
from conveyor.docs.archives import DEFAULT_LIMITS, Limits, expand_to, input_items
from conveyor.docs.errors import ArchiveError, UnsafeArchive
from conveyor.docs.profile import inspect

from .samples import PDF_A, PDF_B, expanded, first_page, zipped


def test_zip_members_are_items_keyed_archive_slash_member(tmp_path):
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.pdf", PDF_A)
        zf.writestr("sub/dir/b.PDF", PDF_B)
        zf.writestr("readme.txt", "not a pdf")
        zf.writestr("sub/", "")
    items = expanded(archive, tmp_path / "out")
    assert sorted(items) == [f"{archive}/a.pdf", f"{archive}/readme.txt",
                             f"{archive}/sub/dir/b.PDF"]
    assert items[f"{archive}/readme.txt"]["skipped"] == "not a document: text"
    a = items[f"{archive}/a.pdf"]
    assert a["archive"] == str(archive) and a["member"] == "a.pdf"
    assert Path(a["path"]).is_relative_to(tmp_path / "out")
    assert first_page(a) == "Alpha document about glaciers and ice sheets."
    assert first_page(items[f"{archive}/sub/dir/b.PDF"]).startswith("Beta document")
    # Stable: expanding again gives the same keys and values.
    assert expanded(archive, tmp_path / "out") == items


@pytest.mark.parametrize("suffix,mode", [(".tar", "w"), (".tar.gz", "w:gz"), (".tgz", "w:gz")])
def test_tar_members(tmp_path, suffix, mode):
    archive = tmp_path / f"bundle{suffix}"
    with tarfile.open(archive, mode) as tf:
        for name, data in (("x/a.pdf", PDF_A), ("b.pdf", PDF_B)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    items = expanded(archive, tmp_path / "out")
    assert sorted(items) == [f"{archive}/b.pdf", f"{archive}/x/a.pdf"]
    assert first_page(items[f"{archive}/x/a.pdf"]).startswith("Alpha document")


def test_7z_members(tmp_path):
    import py7zr

    archive = tmp_path / "bundle.7z"
    with py7zr.SevenZipFile(archive, "w") as zf:
        zf.writestr(PDF_A, "docs/a.pdf")
        zf.writestr(PDF_B, "b.pdf")
    items = expanded(archive, tmp_path / "out")
    assert sorted(items) == [f"{archive}/b.pdf", f"{archive}/docs/a.pdf"]
    assert first_page(items[f"{archive}/docs/a.pdf"]).startswith("Alpha document")
    assert first_page(items[f"{archive}/b.pdf"]).startswith("Beta document")


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
    # Real RAR archives are tested in test_rar.py; a file that is not one must fail
    # with a clear reason.
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
    (folder / "notes.txt").write_text("skipped, and said so")
    with zipfile.ZipFile(folder / "evil.zip", "w") as zf:
        zf.writestr("../evil.pdf", PDF_B)
    items = expanded(folder, tmp_path / "out")
    assert sorted(items) == [str(folder / "evil.zip"), str(folder / "notes.txt"),
                             str(folder / "sub" / "a.pdf")]
    assert items[str(folder / "notes.txt")]["skipped"] == "not a document: text"
    bad = items[str(folder / "evil.zip")]
    assert "path traversal refused" in bad["error"]
    with pytest.raises(ArchiveError, match="path traversal refused"):
        inspect(bad)
    assert first_page(items[str(folder / "sub" / "a.pdf")]).startswith("Alpha document")


def test_missing_input_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        list(expand_to(str(tmp_path / "nope"), tmp_path / "out"))


def test_a_folder_lists_each_file_as_an_input_stamped_by_size_and_mtime(tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.pdf").write_bytes(PDF_A)
    first = list(input_items([str(folder)]))
    assert list(input_items([str(folder)])) == first
    a = os.path.join(str(folder), "sub", "a.pdf")
    assert [item.key for item in first] == [a] and first[0].value["path"] == a
    (folder / "b.pdf").write_bytes(PDF_B)
    second = input_items([str(folder)])
    assert second.roots == (str(folder),)
    assert list(second) == [Item(str(folder / "b.pdf"), file_input(folder / "b.pdf")),
                            first[0]]  # sorted, depth first: a's input is unchanged
    os.utime(folder / "sub" / "a.pdf", ns=(1, 1))
    assert list(input_items([str(folder)]))[1].value["stamp"] != first[0].value["stamp"]


def file_input(path: Path) -> dict[str, str]:
    """A file's input value: its path and its size and mtime."""
    st = path.stat()
    return {"path": str(path), "stamp": f"{st.st_size}-{st.st_mtime_ns}"}


def _files_under(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*")
            if p.is_file()}


def test_a_zip_bomb_member_fails_alone_at_the_ratio_limit_and_leaves_nothing(tmp_path):
    """200 MiB of zeros deflate to about 200 KiB (1000:1): extraction stops once the
    member passes 100 times its compressed size, well before 200 MiB are written."""
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.pdf", PDF_A)
        with zf.open("zeros.pdf", "w") as member:
            for _ in range(200):
                member.write(bytes(2**20))
        zf.writestr("b.pdf", PDF_B)
    compressed = zipfile.ZipFile(archive).getinfo("zeros.pdf").compress_size
    assert compressed * DEFAULT_LIMITS.ratio < 200 * 2**20
    items = expanded(archive, tmp_path / "out")
    assert sorted(items) == [f"{archive}/{n}" for n in ("a.pdf", "b.pdf", "zeros.pdf")]
    bomb = items[f"{archive}/zeros.pdf"]
    assert bomb["error"] == (f"{archive}: member 'zeros.pdf' expands more than 100:1, over "
                             f"the compression ratio limit (a zip bomb?)")
    with pytest.raises(ArchiveError, match="compression ratio limit"):
        inspect(bomb)
    assert first_page(items[f"{archive}/a.pdf"]).startswith("Alpha document")
    assert first_page(items[f"{archive}/b.pdf"]).startswith("Beta document")
    assert sorted(_files_under(tmp_path / "out")) == ["members/a.pdf", "members/b.pdf"]


@pytest.mark.parametrize("fmt", ["zip", "tar.gz", "7z", "rar"])
def test_member_and_archive_size_limits_cut_off_one_member_each(tmp_path, fmt):
    """Random bytes do not compress, so the ratio never trips; the sizes do."""
    big, rest = os.urandom(3 * 2**20), [PDF_A, os.urandom(2**20), os.urandom(2**20)]
    names = ["big.pdf", "a.pdf", "c.pdf", "d.pdf"]
    archive = tmp_path / f"sizes.{fmt}"
    _write(archive, fmt, dict(zip(names, [big, *rest])))
    limits = Limits(member_bytes=2**20 + 2**19, archive_bytes=2 * 2**20)
    items = {key: value for key, value in expand_to(str(archive), tmp_path / "out", limits)}
    errors = {key.rsplit("/", 1)[1]: value.get("error") for key, value in items.items()}
    # big.pdf is cut off past 1.5 MiB and its bytes removed; a.pdf and c.pdf fit the
    # 2 MiB in all (in archive order); d.pdf does not
    assert errors == {
        "big.pdf": f"{archive}: member 'big.pdf' is over the size limit for one member "
                   f"(1.5 MiB uncompressed)",
        "a.pdf": None, "c.pdf": None,
        "d.pdf": f"{archive}: member 'd.pdf' takes the archive over its size limit "
                 f"(2 MiB uncompressed in all)"}
    assert first_page(items[f"{archive}/a.pdf"]).startswith("Alpha document")
    assert _files_under(tmp_path / "out") == {"members/a.pdf": len(PDF_A),
                                              "members/c.pdf": 2**20}


def _write(archive: Path, fmt: str, members: dict[str, bytes]) -> None:
    if fmt == "zip":
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, data in members.items():
                zf.writestr(name, data)
    elif fmt == "tar.gz":
        with tarfile.open(archive, "w:gz") as tf:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    elif fmt == "rar":  # RAR5, stored: the sizes, not the ratio, are what trip
        archive.write_bytes(rar5([Entry(name, data) for name, data in members.items()]))
    else:
        py7zr = pytest.importorskip("py7zr")
        with py7zr.SevenZipFile(archive, "w") as zf:
            for name, data in members.items():
                zf.writestr(data, name)


def test_archives_inside_archives_open_to_the_depth_limit(tmp_path):
    """A zip holding a tar.gz holding a zip: every level's PDF comes out, keyed by the
    whole chain; a fourth level fails alone, naming the nesting limit."""
    level4 = zipped({"deepest.pdf": PDF_A})
    level3 = zipped({"c.pdf": PDF_B, "four.zip": level4})
    tar = tmp_path / "two.tar.gz"
    _write(tar, "tar.gz", {"b/b.pdf": PDF_A, "three.zip": level3})
    archive = tmp_path / "one.zip"
    _write(archive, "zip", {"a.pdf": PDF_B, "inner/two.tar.gz": tar.read_bytes()})
    items = expanded(archive, tmp_path / "out")
    two, three = f"{archive}/inner/two.tar.gz", f"{archive}/inner/two.tar.gz/three.zip"
    assert sorted(items) == sorted([f"{archive}/a.pdf", f"{two}/b/b.pdf", f"{three}/c.pdf",
                                    f"{three}/four.zip"])
    assert items[f"{three}/c.pdf"]["member"] == "inner/two.tar.gz/three.zip/c.pdf"
    assert items[f"{three}/c.pdf"]["archive"] == str(archive)
    assert first_page(items[f"{three}/c.pdf"]).startswith("Beta document")
    assert first_page(items[f"{two}/b/b.pdf"]).startswith("Alpha document")
    assert items[f"{three}/four.zip"]["error"] == (
        f"{three}/four.zip: an archive nested 4 deep, over the nesting limit (3)")
    # the nested archives themselves are gone once their members are out
    assert not any(name.endswith((".zip", ".tar.gz")) for name in
                   _files_under(tmp_path / "out"))


def test_a_broken_archive_inside_an_archive_fails_alone(tmp_path):
    archive = tmp_path / "outer.zip"
    _write(archive, "zip", {"a.pdf": PDF_A, "broken.zip": b"PK\x03\x04 not really"})
    items = expanded(archive, tmp_path / "out")
    assert items[f"{archive}/a.pdf"].get("error") is None
    assert items[f"{archive}/broken.zip"]["error"].startswith(
        f"{archive}/broken.zip: cannot read the zip archive")


def test_what_a_file_is_goes_by_its_content_and_the_rest_is_skipped_with_a_reason(tmp_path):
    """A PDF or an archive under another name is found; nothing else is dropped silently:
    each file that is not a document is an item saying what it is."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "scan-0001").write_bytes(PDF_A)  # a PDF without its extension
    _write(folder / "bundle.dat", "zip", {"b.pdf": PDF_B, "photo.png": b"\x89PNG\r\n\x1a\n0000",
                                          "empty.bin": b""})
    (folder / "tool.exe").write_bytes(b"MZ\x90\x00" + bytes(100))
    (folder / "blob").write_bytes(bytes(range(256)) * 4)
    items = expanded(folder, tmp_path / "out")
    bundle = folder / "bundle.dat"
    assert {k: v.get("skipped") for k, v in items.items()} == {
        str(folder / "scan-0001"): None,
        f"{bundle}/b.pdf": None,
        f"{bundle}/empty.bin": "not a document: an empty file",
        f"{bundle}/photo.png": "not a document: a PNG image",
        str(folder / "tool.exe"): "not a document: a Windows executable",
        str(folder / "blob"): "not a document: binary data of an unknown kind"}
    assert first_page(items[str(folder / "scan-0001")]).startswith("Alpha document")
    assert first_page(items[f"{bundle}/b.pdf"]).startswith("Beta document")
    # what was skipped inside an archive is not left on disk
    assert sorted(_files_under(tmp_path / "out")) == ["bundle.dat/members/b.pdf"]
