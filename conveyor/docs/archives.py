"""The ``expand`` stage: files, folders and archives in, one item per PDF out.

An input is a path: a PDF (or any file: ``inspect`` will say if it is not a
PDF), a folder (walked for ``*.pdf`` and archives, in sorted order), or an
archive — zip, tar (``.tar``, ``.tar.gz``/``.tgz``, ``.tar.bz2``,
``.tar.xz``), 7z or rar. Each PDF becomes one item with a stable key: its
path as given (``corpus/a.pdf``), or the archive's path and the member's
name (``corpus/bundle.zip/reports/b.pdf``). Archive members are extracted to
the item's own folder (``ctx.output_dir``) and passed on by path.

Archives are checked before anything is written: a member whose name is
absolute or climbs out with ``..`` (path traversal, "zip slip"), or a link
member, makes the whole archive fail with :class:`UnsafeArchive`, since an
archive built to escape is not one to trust in part.

Every item carries a ``stamp`` of what it was made from (size and mtime of a
file, CRC or size and time of a member), and :func:`input_items` stamps the
run's inputs with a digest of a folder's or archive's listing: conveyor
reuses a finished item only while its input is unchanged, so a file edited in
place, or added to a folder, is processed again on the next run, and nothing
else is. An archive given as
an input fails the ``expand`` item; one found while walking a folder becomes
an item of its own carrying the error, which ``inspect`` raises, so one bad
archive fails alone and the folder's other documents go on. Archives inside
archives are not opened (their PDFs would need a second level of keys).
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from ..items import Item
from ..optional import require
from .errors import ArchiveError, UnsafeArchive

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
ARCHIVE_SUFFIXES = (".zip", ".7z", ".rar") + TAR_SUFFIXES


def archive_kind(path: str | os.PathLike[str]) -> str | None:
    """``"zip"``, ``"tar"``, ``"7z"``, ``"rar"`` from the file name, or ``None``."""
    name = str(path).lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith(TAR_SUFFIXES):
        return "tar"
    if name.endswith(".7z"):
        return "7z"
    if name.endswith(".rar"):
        return "rar"
    return None


def is_pdf_name(name: str) -> bool:
    return name.lower().endswith(".pdf")


def safe_member(archive: str, name: str) -> str:
    """The member's normalised relative path; raises :class:`UnsafeArchive` if it escapes."""
    clean = name.replace("\\", "/")
    parts = PurePosixPath(clean).parts
    if clean.startswith("/") or (parts and ":" in parts[0]) or ".." in parts:
        raise UnsafeArchive(
            f"{archive}: member {name!r} would be written outside the extraction folder "
            f"(path traversal refused; nothing was extracted)")
    normal = posixpath.normpath(clean)
    if normal in (".", ""):
        raise UnsafeArchive(f"{archive}: member {name!r} has no file name")
    return normal


def _stamp(path: str) -> str:
    st = os.stat(path)
    return f"{st.st_size}-{st.st_mtime_ns}"


def input_items(paths: list[str]) -> list[Item]:
    """The run's inputs for ``paths``: keyed by path, stamped with what is there now."""
    import hashlib

    items = []
    for raw in paths:
        path = os.path.normpath(raw)
        if os.path.isdir(path):
            h = hashlib.blake2b(digest_size=12)
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames.sort()
                for name in sorted(filenames):
                    if is_pdf_name(name) or archive_kind(name):
                        full = os.path.join(dirpath, name)
                        h.update(f"{os.path.relpath(full, path)}\0{_stamp(full)}\0".encode())
            stamp = h.hexdigest()
        else:
            stamp = _stamp(path)
        items.append(Item(path, {"path": path, "stamp": stamp}))
    return items


def expand(source: str | dict[str, Any], ctx: Any) -> Iterator[Item]:
    """Yield ``Item(key, {"path", "source", "archive", "member"})`` for each PDF under ``source``.

    The stage form of :func:`expand_to`: archive members go to the item's
    ``ctx.output_dir``. ``source`` is a path or an :func:`input_items` value.
    """
    path = source["path"] if isinstance(source, dict) else source
    yield from expand_to(path, ctx.output_dir)


def expand_to(source: str, folder: str | os.PathLike[str]) -> Iterator[Item]:
    """:func:`expand` with archive members extracted under ``folder``."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {source}")
    if path.is_dir():
        yield from _walk(source, Path(folder))
    elif archive_kind(source):
        yield from _archive(source, Path(folder))
    else:
        yield _file_item(source)


def _file_item(path: str) -> Item:
    key = os.path.normpath(path)
    return Item(key, {"path": key, "source": key, "archive": None, "member": None,
                      "stamp": _stamp(key)})


def _walk(root: str, folder: Path) -> Iterator[Item]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            if is_pdf_name(name):
                yield _file_item(full)
            elif archive_kind(name):
                rel = os.path.relpath(full, root)
                try:
                    items = list(_archive(full, folder / rel.replace(os.sep, "_")))
                except (ArchiveError, OSError) as exc:
                    key = os.path.normpath(full)
                    yield Item(key, {"path": key, "source": key, "archive": key, "member": None,
                                     "stamp": _stamp(key), "error": str(exc)})
                    continue
                yield from items


def _archive(path: str, folder: Path) -> Iterator[Item]:
    kind = archive_kind(path)
    archive = os.path.normpath(path)
    dest = folder / "members"
    if dest.exists():  # a retry or rerun: start clean, never mix two extractions
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    try:
        members = {"zip": _zip, "tar": _tar, "7z": _sevenzip, "rar": _rar}[kind](archive, dest)
    except (ArchiveError, FileNotFoundError):
        raise
    except Exception as exc:  # the libraries' own errors, named with the archive
        raise ArchiveError(f"{archive}: cannot read the {kind} archive: "
                           f"{type(exc).__name__}: {exc}") from exc
    for member, stamp in members:
        target = dest / member
        yield Item(f"{archive}/{member}", {"path": str(target), "source": f"{archive}/{member}",
                                           "archive": archive, "member": member, "stamp": stamp})


def _plan(archive: str, names: list[tuple[str, bool, bool]]) -> dict[str, str]:
    """Check every member (name, is_file, is_link); map each PDF's name to its safe path.

    The extractors below return ``[(safe path, stamp)]`` for the PDFs, sorted.
    """
    chosen: dict[str, str] = {}
    for name, is_file, is_link in names:
        safe = safe_member(archive, name)
        if is_link:
            raise UnsafeArchive(f"{archive}: member {name!r} is a link (refused: links can "
                                f"point outside the extraction folder)")
        if is_file and is_pdf_name(safe):
            if safe in chosen.values():
                raise ArchiveError(f"{archive}: two members are both named {safe!r}")
            chosen[name] = safe
    return chosen


def _zip(archive: str, dest: Path) -> list[tuple[str, str]]:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        plan = _plan(archive, [(i.filename, not i.is_dir(), _zip_is_link(i)) for i in infos])
        for info in infos:
            if info.filename in plan:
                _copy_stream(zf.open(info), dest / plan[info.filename])
        stamps = {i.filename: f"crc{i.CRC:08x}-{i.file_size}" for i in infos}
    return sorted((safe, stamps[name]) for name, safe in plan.items())


def _zip_is_link(info: zipfile.ZipInfo) -> bool:
    return (info.external_attr >> 16) & 0o170000 == 0o120000


def _tar(archive: str, dest: Path) -> list[tuple[str, str]]:
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        plan = _plan(archive, [(m.name, m.isfile(), m.issym() or m.islnk()) for m in members])
        for m in members:
            if m.name in plan:
                src = tf.extractfile(m)
                assert src is not None
                _copy_stream(src, dest / plan[m.name])
        stamps = {m.name: f"{m.size}-{m.mtime}" for m in members}
    return sorted((safe, stamps[name]) for name, safe in plan.items())


def _sevenzip(archive: str, dest: Path) -> list[tuple[str, str]]:
    py7zr = require("py7zr", "docs", f"{archive}: a 7z archive", ArchiveError)
    with py7zr.SevenZipFile(archive, "r") as zf:
        infos = zf.list()
        plan = _plan(archive, [(i.filename, i.is_file, i.is_symlink) for i in infos])
        stamps = {i.filename: f"crc{i.crc32 or 0:08x}-{i.uncompressed}" for i in infos}
    if plan:
        staging = dest.parent / "7z-staging"
        shutil.rmtree(staging, ignore_errors=True)
        with py7zr.SevenZipFile(archive, "r") as zf:
            zf.extract(path=staging, targets=list(plan))
        for name, safe in plan.items():
            (dest / safe).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, dest / safe)
        shutil.rmtree(staging, ignore_errors=True)
    return sorted((safe, stamps[name]) for name, safe in plan.items())


def _rar(archive: str, dest: Path) -> list[tuple[str, str]]:
    rarfile = require("rarfile", "docs", f"{archive}: a RAR archive", ArchiveError)
    try:
        rf = rarfile.RarFile(archive)
    except rarfile.NotRarFile:
        raise ArchiveError(f"{archive}: not a RAR archive (damaged or misnamed)") from None
    with rf:
        infos = rf.infolist()
        plan = _plan(archive, [(i.filename, i.is_file(), i.is_symlink()) for i in infos])
        for info in infos:
            if info.filename in plan:
                try:
                    src = rf.open(info)
                except rarfile.RarCannotExec:
                    raise ArchiveError(
                        f"{archive}: member {info.filename!r} is compressed and extracting "
                        f"it needs an unrar tool (unrar, unar, 7z or bsdtar) on PATH; "
                        f"install one (e.g. apt-get install unar) or repack as zip") from None
                _copy_stream(src, dest / plan[info.filename])
        stamps = {i.filename: f"crc{i.CRC or 0:08x}-{i.file_size}" for i in infos}
    return sorted((safe, stamps[name]) for name, safe in plan.items())


def _copy_stream(src: Any, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with src, open(target, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
