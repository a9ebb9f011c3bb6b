"""The artifact store: where encoded values live.

A value up to ``inline_limit`` bytes travels inline and is kept in the ledger
row itself. A larger one is written by the process that produced it to a
content-addressed file ``<root>/values/ab/abcd....json`` (written aside and
renamed, so a reader never sees half of it) and only its reference travels; a
retried item rewrites the same file, so writes are idempotent. Stages that
make large artifacts of their own (rendered pages, model outputs) write them
under :meth:`Store.item_dir` and return the path.

Durability is batched: when the driver shares the run directory's
filesystem, workers do not fsync each file; the store remembers that it
wrote (:meth:`Store.take_wrote`) and the driver calls :meth:`Store.sync`
(one ``syncfs``) before the ledger commit that records those items. A worker
whose driver is elsewhere (Ray) fsyncs each file itself (``fsync=True``).

Values may live elsewhere than the run directory: a run started with
``store=URL`` records the URL in ``<run_dir>/store.url`` (:func:`record_store`)
and every :class:`Store` opened on that run directory (the driver's, each
worker's, a :class:`~conveyor.RunResult`) then reads and writes values through
fsspec at that URL (a shared filesystem path, ``s3://...``). Such a file is
durable when its write returns (fsynced where the filesystem is local), so
it needs no sync before the commit. Per-item folders and gather files stay in
the run directory, which is therefore on a shared filesystem in a cluster.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import socket
from pathlib import Path
from typing import NamedTuple

from . import codec, rundir
from .errors import StoreError
from .optional import require

INLINE_LIMIT = 64 * 1024
# Names this process's half-written files: workers on several machines may share a
# directory (and a pid), and must not write into each other's.
_WRITER = f"{socket.gethostname()}.{os.getpid()}"


class Stored(NamedTuple):
    """An encoded value as the ledger records it: inline bytes or a file reference.

    ``digest`` is the content digest; a value kept inline may leave it ``None``
    (it is cheap to compute from the bytes when it is needed).
    """

    data: bytes | None
    ref: str | None
    digest: str | None
    size: int


class Store:
    """Values and per-item folders under one run directory."""

    def __init__(self, root: str | os.PathLike[str], inline_limit: int = INLINE_LIMIT,
                 fsync: bool = True) -> None:
        self.root = Path(root)
        self.inline_limit = inline_limit
        self.fsync = fsync
        self._wrote = False
        recorded = self.root / rundir.STORE_URL
        self.url = recorded.read_text().strip() if recorded.exists() else None
        self._remote = _Remote(self.url) if self.url else None

    def put(self, data: bytes, digest: str | None = None) -> Stored:
        """Keep ``data``: inline if small, else durably in a file.

        ``digest`` is the data's digest when the caller has it; an inline
        value keeps it (or none), a file is named by it.
        """
        if len(data) <= self.inline_limit:  # most values: kept lean, it runs per input
            return tuple.__new__(Stored, (data, None, digest, len(data)))
        dig = digest or codec.digest(data)
        ref = rundir.value_ref(dig)
        if self._remote is not None:
            self._remote.put(ref, data)
            return Stored(None, ref, dig, len(data))
        path = self.root / ref
        if not path.exists():
            _write_aside(path, data, self.fsync)
            self._wrote = True
        return Stored(None, ref, dig, len(data))

    def get(self, data: bytes | None, ref: str | None) -> bytes:
        """The bytes of a value recorded as ``(data, ref)``."""
        if data is not None:
            return data
        if ref is None:
            raise ValueError("a stored value needs inline data or a reference")
        if self._remote is not None:
            return self._remote.get(ref)
        return (self.root / ref).read_bytes()

    def item_dir(self, stage: str, key: str) -> Path:
        """A folder for one item's large artifacts (created on first use)."""
        path = rundir.artifacts(self.root, stage, safe_name(key))
        path.mkdir(parents=True, exist_ok=True)
        self._wrote = True  # the stage writes there; it must be on disk before "done"
        return path

    def take_wrote(self) -> bool:
        """Whether files were written since the last call (and reset)."""
        wrote, self._wrote = self._wrote, False
        return wrote

    def sync(self) -> None:
        """Flush everything written to the run directory's filesystem to disk."""
        fd = os.open(self.root, os.O_RDONLY)
        try:
            if _libc is None or _libc.syncfs(fd) != 0:
                os.sync()
        finally:
            os.close(fd)


def record_store(run_dir: str | os.PathLike[str], url: str) -> None:
    """Record that ``run_dir`` keeps its large values at ``url`` (an fsspec URL or path).

    Raises:
        StoreError: the run directory already records another store (its
            ledger refers to values there), or fsspec is not installed.
    """
    if "://" not in url:
        url = str(Path(url).resolve())  # workers and later readers may run elsewhere
    _Remote(url)  # fails now, before anything runs, if the URL cannot be used
    path = Path(run_dir) / rundir.STORE_URL
    recorded = path.read_text().strip() if path.exists() else None
    if recorded is None and rundir.is_run(run_dir):
        recorded = "the run directory"  # its ledger refers to values kept there
    if recorded == url:
        return
    if recorded is not None:
        raise StoreError(f"{run_dir} keeps its values at {recorded!r}, not {url!r}; "
                         f"use the same store or a new run directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_aside(path, url.encode(), fsync=True)


class _Remote:
    """Values at an fsspec URL: written aside then moved, so a reader never sees half."""

    def __init__(self, url: str) -> None:
        fsspec = require("fsspec", "store", f"store {url!r}", StoreError)
        self.fs, base = fsspec.core.url_to_fs(url)
        self.base = base.rstrip("/")
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple)
                                else (self.fs.protocol,))

    def put(self, ref: str, data: bytes) -> None:
        path = f"{self.base}/{ref}"
        if self.fs.exists(path):
            return  # content-addressed: the same bytes are there already
        parent, name = path.rsplit("/", 1)
        self.fs.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/.{name}.{_WRITER}.tmp"
        with self.fs.open(tmp, "wb") as fh:
            fh.write(data)
            if self.local:  # an object store commits on close; a disk needs fsync
                fh.flush()
                os.fsync(fh.fileno())
        self.fs.mv(tmp, path)
        if self.local:
            dir_fd = os.open(parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def get(self, ref: str) -> bytes:
        return self.fs.cat_file(f"{self.base}/{ref}")


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(key: str) -> str:
    """A file name for ``key``: readable, and unique thanks to a short hash."""
    readable = _UNSAFE.sub("_", key).strip("._")[:80] or "item"
    return f"{readable}-{hashlib.blake2b(key.encode(), digest_size=4).hexdigest()}"


def _write_aside(path: Path, data: bytes, fsync: bool) -> None:
    """Write beside, then rename into place so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{_WRITER}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)
    if fsync:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


try:
    _libc: ctypes.CDLL | None = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:  # not glibc Linux: sync() instead of syncfs()
    _libc = None
