"""The ``expand`` and ``unpack`` stages: files, folders and archives in, one item per file out.

An input is a path: a file, a folder (walked in sorted order), or an archive —
zip, tar (``.tar``, ``.tar.gz``/``.tgz``, ``.tar.bz2``, ``.tar.xz``), 7z or
rar — or a URL naming an object or a prefix in a store (:mod:`.remote`: each
object an input of its own, downloaded by ``expand``). ``expand`` makes one
item per file, by what its content is (:mod:`.sniff`; a file named ``*.pdf``
is always a document): a document for
``inspect``, an archive for ``unpack``, or a skip with its reason for the
``skipped`` stage. ``unpack`` extracts one archive to its item's own folder
(``ctx.output_dir``), its members becoming items in turn. Keys are stable:
a file's path as given (``corpus/a.pdf``), or the archive's key and the
member's name (``corpus/bundle.zip/reports/b.pdf``).

Archives are checked before anything is written: a member whose name is
absolute or climbs out with ``..`` (path traversal, "zip slip"), or a link
member, makes the whole archive fail with :class:`UnsafeArchive`, since an
archive built to escape is not one to trust in part.

Every item carries a ``stamp`` of what it was made from (size and mtime of a
file, CRC or size and time of a member). :func:`input_items` walks a folder on
the driver, lazily and in sorted order, and makes each file under it an input
of its own, keyed by its path and stamped by its size and mtime, as a remote
prefix's objects are by URL and ETag: a rerun on the folder processes only the
files added or changed since, reuses the rest, and drops what came of a file
no longer there (:class:`~conveyor.items.Listing`). An empty folder is an
error as it is listed. An archive that cannot be read fails its ``unpack``
item alone; the folder's other files go on. An encrypted RAR member fails
alone (conveyor takes no passwords); a RAR whose file names are encrypted
fails whole. RAR's stored
members are read by rarfile itself, its compressed ones through a RAR tool on
PATH (``unar``, installed by ``scripts/system-deps.sh``, or unrar, 7z, bsdtar).

Archives inside archives are opened, to :attr:`Limits.depth` levels (keys
``outer.zip/inner.zip/doc.pdf``); a deeper one fails alone, as an item
carrying the reason. Every byte extracted is counted as it is written, since
an archive's headers can lie about sizes: a member that passes
:attr:`Limits.member_bytes` uncompressed, or expands more than
:attr:`Limits.ratio` times its compressed size, or that takes its archive
(nested ones included) past :attr:`Limits.archive_bytes`, is cut off, its
partial file removed, and it fails alone with a reason naming the limit; its
archive-mates go on. No PDF comes near the defaults.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, NamedTuple

from ..errors import InputError
from ..items import Item, Listing
from ..optional import require
from ..resources import format_size
from .errors import ArchiveError, ArchiveLimit, UnsafeArchive
from .remote import download, is_remote, remote_items
from .sniff import sniff

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
ARCHIVE_SUFFIXES = (".zip", ".7z", ".rar") + TAR_SUFFIXES


@dataclass(frozen=True)
class Limits:
    """What extracting one archive may write (see the module docstring)."""

    member_bytes: int = 4 * 2**30  # one member, uncompressed
    ratio: float = 100.0  # uncompressed over compressed, past RATIO_FLOOR bytes
    archive_bytes: int = 32 * 2**30  # every member of an archive, nested ones included
    depth: int = 3  # archives inside archives, the outer one counted


DEFAULT_LIMITS = Limits()
RATIO_FLOOR = 2**20  # a small member may compress well (a page of one colour); a bomb cannot


class Member(NamedTuple):
    """An extracted member: its safe path, stamp, and the error that stopped it, if any."""

    path: str
    stamp: str
    error: str | None = None


class _Budget:
    """Counts what one archive writes, against the limits; the outermost archive's
    budget also counts what every archive inside it writes."""

    def __init__(self, archive: str, limits: Limits, size: int,
                 root: "_Budget | None" = None) -> None:
        self.archive, self.limits, self.size = archive, limits, size
        self.root = root or self
        self.written = 0  # by this archive's members
        self.total = 0  # (the root's) by every level

    def nested(self, archive: str, size: int) -> "_Budget":
        return _Budget(archive, self.limits, size, self.root)

    def meter(self, name: str, compressed: int | None = None) -> "_Meter":
        """A member's meter; ``compressed`` is its compressed size where the format says
        (zip, rar); without it (tar, 7z: one compressed stream) the ratio is the
        archive's: what its members wrote over its file size."""
        return _Meter(self, name, compressed)


class _Meter:
    def __init__(self, budget: _Budget, name: str, compressed: int | None) -> None:
        self.budget, self.name, self.compressed = budget, name, compressed
        self.written = 0

    def add(self, n: int) -> None:
        b, limits = self.budget, self.budget.limits
        self.written += n
        b.written += n
        b.root.total += n
        member = f"{b.archive}: member {self.name!r}"
        if self.written > limits.member_bytes:
            raise ArchiveLimit(f"{member} is over the size limit for one member "
                               f"({format_size(limits.member_bytes)} uncompressed)")
        grown, source = ((self.written, self.compressed) if self.compressed is not None
                         else (b.written, b.size))
        if grown > RATIO_FLOOR and grown > limits.ratio * max(1, source):
            raise ArchiveLimit(f"{member} expands more than {limits.ratio:g}:1, over the "
                               f"compression ratio limit (a zip bomb?)")
        if b.root.total > limits.archive_bytes:
            raise ArchiveLimit(f"{member} takes the archive over its size limit "
                               f"({format_size(limits.archive_bytes)} uncompressed in all)")

    def refund(self) -> None:
        """The member was cut off and its file removed: what it wrote is not on disk."""
        self.budget.written -= self.written
        self.budget.root.total -= self.written
        self.written = 0


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


def input_items(paths: list[str]) -> Listing:
    """The run's inputs for ``paths``, lazily: a file keyed by its path and stamped with
    its size and mtime; a folder walked on the driver in sorted order, each file under it
    an input of its own (keyed ``folder/sub/doc.pdf``); a URL an object or a prefix whose
    every object is an input of its own (:func:`.remote.remote_items`). The folders are
    the listing's roots: a rerun drops what came of a file no longer in its folder.

    Raises (as the listing is read):
        InputError: a folder holds no file, or one under it cannot be listed.
    """
    folders = [os.path.normpath(p) for p in paths if not is_remote(p) and os.path.isdir(p)]
    return Listing(_inputs(paths), folders)


def _inputs(paths: list[str]) -> Iterator[Item]:
    for raw in paths:
        if is_remote(raw):
            yield from remote_items(raw)
        elif os.path.isdir(raw):
            yield from _folder_items(os.path.normpath(raw))
        else:
            path = os.path.normpath(raw)
            yield Item(path, {"path": path, "stamp": _stamp(path)})


def _folder_items(root: str) -> Iterator[Item]:
    """Every file under ``root``, depth first in name order."""
    def unlisted(exc: OSError) -> None:  # os.walk would leave the folder out, silently
        raise InputError(f"cannot list the folder {exc.filename}: {exc.strerror}")

    found = False
    for dirpath, dirnames, filenames in os.walk(root, onerror=unlisted):
        dirnames.sort()
        for name in sorted(filenames):  # every file: each is a document or a skip
            found = True
            yield _folder_file(os.path.normpath(os.path.join(dirpath, name)))
    if not found:
        raise InputError(f"no files in the folder {root}")


def _folder_file(path: str) -> Item:
    try:
        stamp = _stamp(path)
    except OSError as exc:  # a dangling link: its expand fails alone, saying so
        stamp = f"unreadable: {exc.strerror}"
    return Item(path, {"path": path, "stamp": stamp})


def is_document(value: dict[str, Any]) -> bool:
    """Whether an ``expand`` or ``unpack`` output goes on to ``inspect``."""
    return not value.get("skipped") and not value.get("unpack")


def is_archive(value: dict[str, Any]) -> bool:
    """Whether an ``expand`` output is an archive, for ``unpack``."""
    return bool(value.get("unpack"))


def is_skipped(value: dict[str, Any]) -> bool:
    return bool(value.get("skipped"))


def skipped(value: dict[str, Any]) -> dict[str, Any]:
    """The ``skipped`` stage: a file or member that is not a document, with the reason,
    so ``conveyor status``, the summary and the report count what was left out."""
    return {"source": value["source"], "reason": value["skipped"]}


def expand(source: str | dict[str, Any], ctx: Any) -> Iterator[Item]:
    """The ``expand`` stage: the files under ``source`` (a path, a URL or an
    :func:`input_items` value), one item each: a document, an archive for ``unpack``
    (``{"unpack": kind}``), or a skip with its reason. Nothing is extracted here, so
    an archive is an item of its own: one that fails, or is large, fails or takes
    its time alone. A remote object is downloaded to the item's ``ctx.output_dir``
    first, and keeps its URL as key and ``source``."""
    path = source["path"] if isinstance(source, dict) else source
    if is_remote(path):
        yield fetched(path, ctx.output_dir)
        return
    yield from expand_to(path, None)


def fetched(url: str, folder: str | os.PathLike[str], limits: Limits = DEFAULT_LIMITS
            ) -> Item:
    """The object at ``url``, downloaded into ``folder`` within ``limits.member_bytes``,
    as an item like a local file's: keyed and sourced by its URL, stamped by its ETag."""
    local, stamp = download(url, folder, limits.member_bytes)
    item = _file(str(local))
    value = {**item.value, "source": url, "stamp": stamp}
    if value.get("unpack"):
        value["archive"] = url
    elif value.get("skipped"):
        local.unlink()  # not a document: nothing reads it
    return Item(url, value)


def unpack(value: dict[str, Any], ctx: Any) -> Iterator[Item]:
    """The ``unpack`` stage: one archive's members (archives inside it opened in turn),
    extracted to the item's ``ctx.output_dir``, within :data:`DEFAULT_LIMITS`; keyed
    under the archive's ``source`` (its path, or its URL when it was downloaded)."""
    yield from _archive(value["path"], Path(ctx.output_dir), DEFAULT_LIMITS,
                        key=value["source"], kind=value["unpack"])


def expand_to(source: str, folder: str | os.PathLike[str] | None,
              limits: Limits = DEFAULT_LIMITS) -> Iterator[Item]:
    """The items under ``source``: with a ``folder``, archives are unpacked into it and
    their members come out in their place; without, each archive is one item for
    :func:`unpack`."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {source}")
    files = _walk(source) if path.is_dir() else [_file(os.path.normpath(source))]
    for item in files:
        kind = item.value.get("unpack")
        if folder is None or not kind:
            yield item
        elif path.is_dir():  # one bad archive in a folder fails alone
            rel = os.path.relpath(item.key, source).replace(os.sep, "_")
            try:
                yield from list(_archive(item.key, Path(folder) / rel, limits, kind=kind))
            except (ArchiveError, OSError) as exc:
                yield Item(item.key, {**item.value, "unpack": None, "error": str(exc)})
        else:
            yield from _archive(item.key, Path(folder), limits, kind=kind)


def _file(path: str) -> Item:
    """A file as an item: a document, an archive to unpack, or a skip with its reason."""
    name = os.path.basename(path)
    what, detail = (("pdf", None) if is_pdf_name(name) else
                    ("archive", archive_kind(name)) if archive_kind(name) else sniff(path))
    value = {"path": path, "source": path, "archive": None, "member": None,
             "stamp": _stamp(path)}
    if what == "archive":
        value.update(archive=path, unpack=detail)
    elif what == "skip":
        value["skipped"] = detail
    return Item(path, value)


def _walk(root: str) -> Iterator[Item]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            yield _file(os.path.normpath(os.path.join(dirpath, name)))


def _archive(path: str, folder: Path, limits: Limits, outer: _Budget | None = None,
             key: str | None = None, depth: int = 1, kind: str | None = None
             ) -> Iterator[Item]:
    """The members of the archive at ``path``, keyed ``key/member`` (``key``: the
    archive's own key, its path for an outermost one): PDFs, skipped members with their
    reason, members that failed with theirs; archives inside it opened in turn (this one
    is ``depth`` deep; ``kind`` where its content said, else its name says)."""
    kind = kind or archive_kind(path)
    key = key or os.path.normpath(path)
    size = os.path.getsize(path)
    budget = outer.nested(key, size) if outer else _Budget(key, limits, size)
    root = budget.root.archive
    dest = folder / "members"
    if dest.exists():  # a retry or rerun: start clean, never mix two extractions
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    try:
        extract = {"zip": _zip, "tar": _tar, "7z": _sevenzip, "rar": _rar}[kind]
        members = extract(os.path.normpath(path), dest, budget)
    except (ArchiveError, FileNotFoundError):
        raise
    except Exception as exc:  # the libraries' own errors, named with the archive
        raise ArchiveError(f"{key}: cannot read the {kind} archive: "
                           f"{type(exc).__name__}: {exc}") from exc
    for member in members:
        member_key = f"{key}/{member.path}"
        target = dest / member.path
        value = {"path": str(target), "source": member_key, "archive": root,
                 "member": member_key[len(root) + 1:], "stamp": member.stamp}
        if member.error is not None:
            yield Item(member_key, {**value, "error": member.error})
            continue
        what, detail = ("pdf", None) if is_pdf_name(member.path) else sniff(target)
        if what == "pdf":
            yield Item(member_key, value)
            continue
        error = None
        if what == "archive" and depth >= limits.depth:
            error = (f"{member_key}: an archive nested {depth + 1} deep, over the nesting "
                     f"limit ({limits.depth})")
        elif what == "archive":
            try:
                yield from _archive(str(target), folder / "nested" / member.path, limits,
                                    budget, member_key, depth + 1, detail)
            except (ArchiveError, OSError) as exc:
                error = str(exc)
        target.unlink(missing_ok=True)  # opened, or not a document: done with it
        if what == "skip":
            yield Item(member_key, {**value, "skipped": detail})
        elif error is not None:
            yield Item(member_key, {**value, "error": error})


def _plan(archive: str, names: list[tuple[str, bool, bool]]) -> dict[str, str]:
    """Check every member (name, is_file, is_link); map each file's name to its safe
    path (what each file is, its content says once it is out).

    The extractors below return a :class:`Member` for each, sorted.
    """
    chosen: dict[str, str] = {}
    for name, is_file, is_link in names:
        safe = safe_member(archive, name)
        if is_link:
            raise UnsafeArchive(f"{archive}: member {name!r} is a link (refused: links can "
                                f"point outside the extraction folder)")
        if is_file:
            if safe in chosen.values():
                raise ArchiveError(f"{archive}: two members are both named {safe!r}")
            chosen[name] = safe
    return chosen


def _zip(archive: str, dest: Path, budget: _Budget) -> list[Member]:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        plan = _plan(budget.archive, [(i.filename, not i.is_dir(), _zip_is_link(i))
                                      for i in infos])
        errors = {}
        for info in infos:
            if info.filename in plan:
                errors[info.filename] = _take(
                    lambda: zf.open(info), dest / plan[info.filename],
                    budget.meter(plan[info.filename], info.compress_size))
        stamps = {i.filename: f"crc{i.CRC:08x}-{i.file_size}" for i in infos}
    return sorted(Member(safe, stamps[name], errors[name]) for name, safe in plan.items())


def _zip_is_link(info: zipfile.ZipInfo) -> bool:
    return (info.external_attr >> 16) & 0o170000 == 0o120000


def _tar(archive: str, dest: Path, budget: _Budget) -> list[Member]:
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        plan = _plan(budget.archive, [(m.name, m.isfile(), m.issym() or m.islnk())
                                      for m in members])
        errors = {}
        for m in members:
            if m.name in plan:
                errors[m.name] = _take(lambda: tf.extractfile(m), dest / plan[m.name],
                                       budget.meter(plan[m.name]))
        stamps = {m.name: f"{m.size}-{m.mtime}" for m in members}
    return sorted(Member(safe, stamps[name], errors[name]) for name, safe in plan.items())


def _sevenzip(archive: str, dest: Path, budget: _Budget) -> list[Member]:
    py7zr = require("py7zr", "docs", f"{archive}: a 7z archive", ArchiveError)
    with py7zr.SevenZipFile(archive, "r") as zf:
        infos = zf.list()
        plan = _plan(budget.archive, [(i.filename, i.is_file, i.is_symlink) for i in infos])
        stamps = {i.filename: f"crc{i.crc32 or 0:08x}-{i.uncompressed}" for i in infos}
    errors: dict[str, str | None] = {}
    while len(errors) < len(plan):  # again after a member over a limit, without it
        sink = _sevenzip_sink(py7zr, dest, plan, budget, errors)
        with py7zr.SevenZipFile(archive, "r") as zf:
            try:
                zf.extract(targets=[n for n in plan if n not in errors], factory=sink)
            except ArchiveLimit as exc:
                errors[sink.current.name] = str(exc)
                sink.current.meter.refund()
                sink.current.out.close()
                (dest / plan[sink.current.name]).unlink(missing_ok=True)
                continue
        errors.update({n: None for n in plan if n not in errors})
    return sorted(Member(safe, stamps[name], errors[name]) for name, safe in plan.items())


def _sevenzip_sink(py7zr: Any, dest: Path, plan: dict[str, str], budget: _Budget,
                  errors: dict[str, str | None]) -> Any:
    """A py7zr writer factory: each member streamed to its safe path through its meter."""

    class Writer(py7zr.io.Py7zIO):
        def __init__(self, name: str) -> None:
            target = dest / plan[name]
            target.parent.mkdir(parents=True, exist_ok=True)
            self.out = open(target, "wb")
            self.meter = budget.meter(plan[name])
            self.name = name

        def write(self, data: bytes | bytearray) -> int:
            self.meter.add(len(data))
            return self.out.write(data)

        def close(self) -> None:
            self.out.close()
            errors[self.name] = None

        def read(self, size: int | None = None) -> bytes:
            return b""

        def seek(self, offset: int, whence: int = 0) -> int:
            return self.out.seek(offset, whence)

        def flush(self) -> None:
            self.out.flush()

        def size(self) -> int:
            return self.meter.written

    class Sink(py7zr.io.WriterFactory):
        current: Writer  # the member being written

        def create(self, filename: str) -> Any:
            self.current = Writer(filename)
            return self.current

    return Sink()


def _rar(archive: str, dest: Path, budget: _Budget) -> list[Member]:
    """Stored members rarfile reads itself; compressed ones it pipes through a RAR tool
    on PATH (unrar, unar, 7z or bsdtar; ``scripts/system-deps.sh`` installs unar)."""
    rarfile = require("rarfile", "docs", f"{archive}: a RAR archive", ArchiveError)
    try:
        rf = rarfile.RarFile(archive)
    except rarfile.NotRarFile:
        raise ArchiveError(f"{budget.archive}: not a RAR archive (damaged or misnamed)") from None
    with rf:
        infos = rf.infolist()
        if not infos and rf.needs_password():  # rarfile lists nothing it cannot decrypt
            raise ArchiveError(f"{budget.archive}: the RAR archive's file names are "
                               f"encrypted: listing it needs a password, and conveyor "
                               f"takes none")
        plan = _plan(budget.archive, [(i.filename, i.is_file(), _rar_is_link(rarfile, i))
                                      for i in infos])
        errors = {}
        for info in infos:
            if info.filename not in plan:
                continue
            if info.needs_password():  # the member alone: its archive-mates may be clear
                errors[info.filename] = (
                    f"{budget.archive}: member {info.filename!r} is encrypted: extracting "
                    f"it needs a password, and conveyor takes none")
                continue
            try:
                # rf.open copies a compressed member to a temporary file for the tool,
                # and leaves it behind when there is no tool: look for one first
                if info.compress_type != rarfile.RAR_M0:
                    rarfile.tool_setup()
                src = rf.open(info)
            except rarfile.RarCannotExec:
                raise ArchiveError(
                    f"{budget.archive}: member {info.filename!r} is compressed and "
                    f"extracting it needs an unrar tool (unrar, unar, 7z or bsdtar) on "
                    f"PATH; install one (e.g. apt-get install unar) or repack as zip"
                ) from None
            errors[info.filename] = _take(
                lambda: src, dest / plan[info.filename],
                budget.meter(plan[info.filename], info.compress_size))
        stamps = {i.filename: f"crc{i.CRC or 0:08x}-{i.file_size}" for i in infos}
    return sorted(Member(safe, stamps[name], errors[name]) for name, safe in plan.items())


def _rar_is_link(rarfile: Any, info: Any) -> bool:
    """A symbolic link or junction, or (RAR5) a hard link: refused like tar's links.
    A RAR5 "file copy" is not: rarfile reads it from the member it copies."""
    return info.is_symlink() or (
        info.file_redir is not None and info.file_redir[0] == rarfile.RAR5_XREDIR_HARD_LINK)


def _take(open_member: Any, target: Path, meter: _Meter) -> str | None:
    """Extract one member through its meter; the reason it was cut off, or None."""
    try:
        _copy_stream(open_member(), target, meter)
    except ArchiveLimit as exc:
        meter.refund()
        return str(exc)
    return None


def _copy_stream(src: Any, target: Path, meter: _Meter) -> None:
    """Copy a member, counting each block before it is written: nothing past a limit
    reaches the disk, and a member cut off leaves no partial file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with src, open(target, "wb") as out:
            while block := src.read(1 << 20):
                meter.add(len(block))
                out.write(block)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
