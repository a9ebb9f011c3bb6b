"""RAR for real: RAR4 and RAR5 archives (made by :mod:`rar_writer`, read by the same
tools as any RAR) through expand and unpack, and once through the whole pipeline:
folders, solid archives, compressed members (decoded by the system tool), links
and traversal refused, encrypted members failing alone, RAR inside zip."""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import rarfile
from rar_writer import Entry, rar4, rar5

from conveyor.docs.archives import expand_to
from conveyor.docs.corpus import text_pdf
from conveyor.docs.errors import ArchiveError, UnsafeArchive
from conveyor.docs.profile import inspect

from .samples import PDF_A, PDF_B, assert_failures, expanded, first_page, run_folder

WRITERS = {"rar4": rar4, "rar5": rar5}
FOLDERS = [Entry("a", kind="dir"), Entry("a/b", kind="dir"), Entry("a/b/doc.pdf", PDF_A),
           Entry("c/doc2.pdf", PDF_B), Entry("c/readme.txt", b"see the PDFs")]


def _rar(path: Path, fmt: str, entries: list[Entry], **kw) -> Path:
    path.write_bytes(WRITERS[fmt](entries, **kw))
    return path


def _tool(name: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} is missing: `make test` installs it (scripts/system-deps.sh)"
    return found


@pytest.mark.parametrize("fmt", ["rar4", "rar5"])
def test_the_writer_makes_archives_the_rar_tools_read(tmp_path, fmt):
    """Not just rarfile-compatible: The Unarchiver's lsar and libarchive's bsdtar list
    the same members, links and encryption included."""
    archive = _rar(tmp_path / "check.rar", fmt, FOLDERS + [
        Entry("link.pdf", kind="symlink", target="../../etc/passwd"),
        Entry("secret.pdf", PDF_B, encrypted=True)])
    lsar = subprocess.run([_tool("lsar"), "-l", str(archive)], capture_output=True,
                          text=True, check=True).stdout
    assert f"RAR{' 5' if fmt == 'rar5' else ''}\n" in lsar and "failed" not in lsar
    assert "--L--" in lsar and "link.pdf -> ../../etc/passwd" in lsar
    assert "---E-" in lsar and "secret.pdf" in lsar
    listed = subprocess.run([_tool("bsdtar"), "-tf", str(archive)], capture_output=True,
                            text=True, check=True).stdout.split()
    assert listed == ["a", "a/b", "a/b/doc.pdf", "c/doc2.pdf", "c/readme.txt", "link.pdf",
                      "secret.pdf"]
    if fmt == "rar5":
        packed = _rar(tmp_path / "packed.rar", fmt, [Entry("doc.pdf", PDF_A, compressed=True)])
        assert "Norm" in subprocess.run([_tool("lsar"), "-l", str(packed)], capture_output=True,
                                        text=True, check=True).stdout
        assert subprocess.run([_tool("bsdtar"), "-xOf", str(packed), "doc.pdf"],
                              capture_output=True, check=True).stdout == PDF_A
    solid = _rar(tmp_path / "solid.rar", fmt, FOLDERS, solid=True)
    assert rarfile.RarFile(solid).is_solid()
    unar = subprocess.run([_tool("unar"), "-q", "-o", str(tmp_path / "unar"), str(solid)],
                          capture_output=True, text=True)
    assert unar.returncode == 0, unar.stderr
    assert (tmp_path / "unar" / "solid" / "a" / "b" / "doc.pdf").read_bytes() == PDF_A


@pytest.mark.parametrize("fmt", ["rar4", "rar5"])
def test_rar_members_in_folders_are_items_keyed_archive_slash_member(tmp_path, fmt):
    archive = _rar(tmp_path / "x.rar", fmt, FOLDERS)
    items = expanded(archive, tmp_path / "out")
    assert sorted(items) == [f"{archive}/a/b/doc.pdf", f"{archive}/c/doc2.pdf",
                             f"{archive}/c/readme.txt"]
    doc = items[f"{archive}/a/b/doc.pdf"]
    assert doc["archive"] == str(archive) and doc["member"] == "a/b/doc.pdf"
    assert doc["stamp"].startswith("crc") and Path(doc["path"]).is_relative_to(tmp_path)
    assert first_page(doc) == "Alpha document about glaciers and ice sheets."
    assert first_page(items[f"{archive}/c/doc2.pdf"]).startswith("Beta document")
    assert items[f"{archive}/c/readme.txt"]["skipped"] == "not a document: text"
    assert expanded(archive, tmp_path / "out") == items  # stable


@pytest.mark.parametrize("fmt", ["rar4", "rar5"])
@pytest.mark.parametrize("reader", ["rarfile", "tool"])
def test_solid_archives(tmp_path, monkeypatch, fmt, reader):
    """Stored members rarfile reads itself; with FORCE_TOOL it pipes them through the
    system tool (unar here), the way it reads every compressed member."""
    if reader == "tool":
        monkeypatch.setattr(rarfile, "FORCE_TOOL", True)
        assert rarfile.tool_setup().setup["open_cmd"][0] in (
            "UNRAR_TOOL", "UNAR_TOOL", "SEVENZIP_TOOL", "SEVENZIP2_TOOL")  # not bsdtar:
        # libarchive reads no solid RAR
    archive = _rar(tmp_path / "solid.rar", fmt, FOLDERS, solid=True)
    items = expanded(archive, tmp_path / "out")
    assert sorted(items) == [f"{archive}/a/b/doc.pdf", f"{archive}/c/doc2.pdf",
                             f"{archive}/c/readme.txt"]
    assert all(v.get("error") is None for v in items.values())
    assert first_page(items[f"{archive}/a/b/doc.pdf"]).startswith("Alpha document")
    assert first_page(items[f"{archive}/c/doc2.pdf"]).startswith("Beta document")


@pytest.mark.parametrize("fmt", ["rar4", "rar5"])
@pytest.mark.parametrize("target", ["../../etc/passwd", "/etc/passwd"])
def test_a_link_pointing_outside_refuses_the_archive(tmp_path, fmt, target):
    """As for zip and tar: a link member fails its whole archive before anything is
    written; in a folder, the folder's other files go on."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.pdf").write_bytes(PDF_B)
    archive = _rar(folder / "links.rar", fmt, [Entry("doc.pdf", PDF_A),
                                               Entry("passwd.pdf", kind="symlink",
                                                     target=target)])
    with pytest.raises(UnsafeArchive, match="member 'passwd.pdf' is a link"):
        list(expand_to(str(archive), tmp_path / "out"))
    assert list(tmp_path.rglob("doc.pdf")) == []
    items = expanded(folder, tmp_path / "out2")
    assert "member 'passwd.pdf' is a link (refused" in items[str(archive)]["error"]
    assert first_page(items[str(folder / "good.pdf")]).startswith("Beta document")


def test_a_rar5_hard_link_is_refused_like_tars(tmp_path):
    archive = _rar(tmp_path / "hard.rar", "rar5", [Entry("doc.pdf", PDF_A),
                                                   Entry("copy.pdf", kind="hardlink",
                                                         target="doc.pdf")])
    with pytest.raises(UnsafeArchive, match="member 'copy.pdf' is a link"):
        list(expand_to(str(archive), tmp_path / "out"))


@pytest.mark.parametrize("fmt", ["rar4", "rar5"])
@pytest.mark.parametrize("name", ["../evil.pdf", "a/../../evil.pdf", "/tmp/evil.pdf"])
def test_rar_traversal_is_refused_before_anything_is_written(tmp_path, fmt, name):
    archive = _rar(tmp_path / "evil.rar", fmt, [Entry("good.pdf", PDF_A),
                                                Entry(name, PDF_B)])
    with pytest.raises(UnsafeArchive, match="path traversal refused"):
        list(expand_to(str(archive), tmp_path / "deep" / "out"))
    assert list(tmp_path.rglob("*.pdf")) == []


@pytest.mark.parametrize("fmt", ["rar4", "rar5"])
def test_an_encrypted_member_fails_alone_naming_the_password(tmp_path, fmt):
    archive = _rar(tmp_path / "locked.rar", fmt, [Entry("open.pdf", PDF_A),
                                                  Entry("sub/secret.pdf", PDF_B,
                                                        encrypted=True)])
    items = expanded(archive, tmp_path / "out")
    secret = items[f"{archive}/sub/secret.pdf"]
    assert secret["error"] == (f"{archive}: member 'sub/secret.pdf' is encrypted: "
                               f"extracting it needs a password, and conveyor takes none")
    with pytest.raises(ArchiveError, match="needs a password"):
        inspect(secret)
    assert first_page(items[f"{archive}/open.pdf"]).startswith("Alpha document")
    assert not (tmp_path / "out" / "members" / "sub" / "secret.pdf").exists()


def test_an_archive_with_encrypted_names_fails_naming_the_password(tmp_path):
    """rarfile lists nothing of a ``rar -hp`` archive without its password: that must
    be a failure, not an archive that quietly holds no documents."""
    archive = _rar(tmp_path / "hidden.rar", "rar5", [], encrypted_names=True)
    with pytest.raises(ArchiveError, match="file names are encrypted: listing it needs "
                                           "a password"):
        list(expand_to(str(archive), tmp_path / "out"))


@pytest.mark.parametrize("solid", [False, True])
def test_compressed_members_are_decoded_by_the_system_tool(tmp_path, solid):
    """rarfile decodes no compressed RAR itself: it pipes the member through the tool
    it finds on PATH (unar, from scripts/system-deps.sh); a solid archive whole."""
    assert rarfile.tool_setup().setup["open_cmd"][0] != "BSDTAR_TOOL" or not solid, (
        "only bsdtar found, which reads no solid RAR: install unar (scripts/system-deps.sh)")
    archive = _rar(tmp_path / "packed.rar", "rar5", [  # rar stores none in a solid stream
        Entry("a/doc.pdf", PDF_A, compressed=True), Entry("b.pdf", PDF_B, compressed=solid),
        Entry("c/doc2.pdf", PDF_B, compressed=True)], solid=solid)
    assert [i.compress_type for i in rarfile.RarFile(archive).infolist()] == [
        rarfile.RAR_M3, rarfile.RAR_M3 if solid else rarfile.RAR_M0, rarfile.RAR_M3]
    items = expanded(archive, tmp_path / "out")
    assert all(v.get("error") is None for v in items.values())
    assert first_page(items[f"{archive}/a/doc.pdf"]).startswith("Alpha document")
    assert first_page(items[f"{archive}/c/doc2.pdf"]).startswith("Beta document")
    assert [Path(items[f"{archive}/{m}"]["path"]).read_bytes()
            for m in ("a/doc.pdf", "b.pdf", "c/doc2.pdf")] == [PDF_A, PDF_B, PDF_B]


def test_a_compressed_member_without_a_rar_tool_names_the_tool(tmp_path, monkeypatch):
    """No unrar, unar, 7z or bsdtar on PATH: the archive fails saying what to install,
    and leaves no temporary copy of the member behind."""
    monkeypatch.setattr(rarfile, "CURRENT_SETUP", None)  # forget the tool found before
    monkeypatch.setattr(rarfile, "HACK_TMP_DIR", str(tmp_path / "tmp"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    (tmp_path / "tmp").mkdir()
    archive = _rar(tmp_path / "x.rar", "rar5", [Entry("doc.pdf", PDF_A, compressed=True)])
    with pytest.raises(ArchiveError, match=r"member 'doc.pdf' is compressed and extracting "
                                           r"it needs an unrar tool .* apt-get install unar"):
        list(expand_to(str(archive), tmp_path / "out"))
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_rar_inside_a_zip_is_opened_and_found_by_its_content(tmp_path):
    inner = rar4([Entry("scans", kind="dir"), Entry("scans/doc.pdf", PDF_A)])
    archive = tmp_path / "outer.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("b.pdf", PDF_B)
        zf.writestr("inner/bundle.rar", inner)
        zf.writestr("inner/bundle.bin", rar5([Entry("x/doc.pdf", PDF_B)]))  # by content
    items = expanded(archive, tmp_path / "out")
    assert sorted(items) == [f"{archive}/b.pdf", f"{archive}/inner/bundle.bin/x/doc.pdf",
                             f"{archive}/inner/bundle.rar/scans/doc.pdf"]
    doc = items[f"{archive}/inner/bundle.rar/scans/doc.pdf"]
    assert doc["archive"] == str(archive) and doc["member"] == "inner/bundle.rar/scans/doc.pdf"
    assert first_page(doc).startswith("Alpha document")
    assert first_page(items[f"{archive}/inner/bundle.bin/x/doc.pdf"]).startswith("Beta document")


def test_rar_archives_through_the_whole_pipeline(tmp_path):
    """RAR4 and RAR5 (solid, a member compressed) beside each other in a folder: their
    PDFs are indexed and found, the encrypted member and the archive with a link fail
    with their reasons, and nothing else fails."""
    from conveyor.docs.search import search

    folder = tmp_path / "in"
    folder.mkdir()
    lighthouse = text_pdf([["A lighthouse keeper trims the lamp wick every evening."]])
    glaciers = text_pdf([["Glaciers carve valleys as the ice flows slowly downhill."]])
    _rar(folder / "four.rar", "rar4", [Entry("docs", kind="dir"),
                                       Entry("docs/glaciers.pdf", glaciers)])
    _rar(folder / "five.rar", "rar5", [Entry("a/b/lighthouse.pdf", lighthouse, compressed=True),
                                       Entry("a/secret.pdf", PDF_A, encrypted=True)],
         solid=True)
    _rar(folder / "link.rar", "rar5", [Entry("doc.pdf", PDF_B),
                                       Entry("up.pdf", kind="symlink", target="../up.pdf")])
    with run_folder(folder, tmp_path / "run") as result:
        assert_failures(result, folder, equal={
            ("inspect", "five.rar/a/secret.pdf"):
                f"ArchiveError: {folder}/five.rar: member 'a/secret.pdf' is encrypted: "
                f"extracting it needs a password, and conveyor takes none"},
            containing={("unpack", "link.rar"): "member 'up.pdf' is a link (refused"})
        assert result.output("index")["documents"] == 2
    hits = search(tmp_path / "run", "who looks after the lamp of a lighthouse", k=1)
    assert hits[0]["path"] == str(folder / "five.rar")
    assert hits[0]["member"] == "a/b/lighthouse.pdf"
    hits = search(tmp_path / "run", "ice flowing down a valley", k=1)
    assert (hits[0]["path"], hits[0]["member"]) == (str(folder / "four.rar"),
                                                    "docs/glaciers.pdf")

