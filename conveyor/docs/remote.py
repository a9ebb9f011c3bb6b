"""Remote inputs: objects at an fsspec URL (``s3://bucket/corpus/``, ``gs://…``,
``https://host/file.pdf``).

A URL is an object or a prefix. :func:`remote_items` lists a prefix on the
driver, one directory level at a time, and makes each object an input of its
own, keyed by its URL and stamped by its ETag (or its size and modification
time where the store gives no ETag): a rerun adds the objects that are new,
starts over those whose stamp changed, and reuses the rest. Nothing is
downloaded there; :func:`download` runs in the ``expand`` worker that needs
the object, streaming it into that item's folder, counted against the size
limit for one file (:attr:`~.archives.Limits.member_bytes`) as it is written.

Credentials and endpoints come from the store's own configuration, as for any
fsspec user: for S3 the standard ``AWS_*`` variables (``AWS_ENDPOINT_URL`` for
an S3-compatible server, ``AWS_MAX_ATTEMPTS`` for botocore's retries),
``~/.aws``, or fsspec's config (``FSSPEC_S3_ENDPOINT_URL``, ``~/.config/fsspec``).
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path
from typing import Any, Iterator

from ..items import Item
from ..optional import require
from ..resources import format_size
from .errors import RemoteInputError

BLOCK = 1 << 20
_URL = re.compile(r"([a-z][a-z0-9+.-]*)(?:::[a-z][a-z0-9+.-]*)*://", re.IGNORECASE)


def is_remote(path: str) -> bool:
    """Whether ``path`` is a URL for fsspec (``s3://``, ``simplecache::s3://``) rather than
    a local path; ``file://`` is local."""
    match = _URL.match(path)
    return match is not None and match.group(1) != "file"


def _open(url: str) -> tuple[Any, str]:
    """A fresh filesystem for ``url`` and the path in it: fsspec's cached instances
    remember what they listed and the endpoint and credentials they were made with."""
    fsspec = require("fsspec", "docs", f"the remote input {url!r}", RemoteInputError)
    try:
        return fsspec.core.url_to_fs(url, skip_instance_cache=True)
    except (ImportError, ValueError) as exc:  # no package for the protocol, or unknown
        raise RemoteInputError(f"{url}: cannot open: {exc}") from None


def _info(fs: Any, path: str, url: str) -> dict[str, Any]:
    try:
        return fs.info(path)
    except FileNotFoundError:
        raise RemoteInputError(f"no such object or prefix: {url}") from None
    except Exception as exc:  # credentials, permissions, an endpoint that does not answer
        raise RemoteInputError(f"{url}: cannot read it: {type(exc).__name__}: {exc}") from None


def check(url: str) -> None:
    """Raise :class:`RemoteInputError` unless ``url`` is an object or a prefix with objects."""
    fs, path = _open(url)
    _info(fs, path, url)


def stamp(info: dict[str, Any]) -> str:
    """What an object is now: its ETag (or the like) where the store gives one, else its
    size and modification time."""
    for field in ("ETag", "etag", "md5Hash", "Content-MD5", "Digest"):
        if info.get(field):
            return f"etag:{str(info[field]).strip(chr(34))}"
    for field in ("LastModified", "mtime", "updated", "last_modified", "Last-Modified",
                  "created"):
        if info.get(field):
            return f"{info.get('size')}-{info[field]}"
    return f"{info.get('size')}"


def remote_items(url: str) -> Iterator[Item]:
    """The inputs at ``url``: the object it names, or every object under the prefix (in
    sorted order, a directory level listed at a time), each ``{"path": URL, "stamp": ...}``.

    Raises:
        RemoteInputError: nothing is there (an empty bucket is found out once listed), or
            the store cannot be listed.
    """
    fs, path = _open(url)
    info = _info(fs, path, url)
    if info.get("type") != "directory":
        yield _item(fs, info)
        return
    found = False
    try:
        for obj in _objects(fs, info["name"]):
            found = True
            yield _item(fs, obj)
    except Exception as exc:
        raise RemoteInputError(f"{url}: listing failed: {type(exc).__name__}: {exc}") from None
    if not found:
        raise RemoteInputError(f"no objects under {url}")


def _objects(fs: Any, prefix: str) -> Iterator[dict[str, Any]]:
    """The objects under ``prefix``, depth first in name order, listed a level at a time
    (fsspec's ``walk`` would leave out a level it cannot list; this raises)."""
    for info in sorted(fs.ls(prefix, detail=True), key=lambda i: i["name"]):
        if info["name"].rstrip("/") == prefix.rstrip("/"):
            continue  # the prefix's own marker object ("folder/", size 0)
        if info["type"] == "directory":
            yield from _objects(fs, info["name"])
        elif info["type"] == "file":
            yield info


def _item(fs: Any, info: dict[str, Any]) -> Item:
    url = fs.unstrip_protocol(info["name"])
    return Item(url, {"path": url, "stamp": stamp(info)})


def download(url: str, folder: str | os.PathLike[str], max_bytes: int) -> tuple[Path, str]:
    """Stream the object at ``url`` into ``folder`` (under its own name); the local path
    and the object's stamp. It is written aside and renamed, so a retry never finds half
    of it; one over ``max_bytes`` (by its size, or as it streams) is cut off and leaves
    nothing.

    Raises:
        RemoteInputError: the object is missing, cannot be read, or is over the limit.
    """
    fs, path = _open(url)
    info = _info(fs, path, url)
    if info.get("type") == "directory":
        raise RemoteInputError(f"{url} is a prefix, not an object: list it into inputs "
                               f"with conveyor.docs.archives.input_items (as conveyor docs "
                               f"does)")
    over = (f"{url}: the object is over the size limit for one file "
            f"({format_size(max_bytes)})")
    if (info.get("size") or 0) > max_bytes:
        raise RemoteInputError(over)
    name = posixpath.basename(path.rstrip("/")) or "object"
    target = Path(folder) / name
    tmp = target.with_name(f".{name}.part")
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        with fs.open(path, "rb") as src, open(tmp, "wb") as out:
            while block := src.read(BLOCK):
                written += len(block)
                if written > max_bytes:  # the size the store gave was wrong: count, not trust
                    raise RemoteInputError(over)
                out.write(block)
    except BaseException as exc:  # a limit, the store, or an interrupt: no partial file
        tmp.unlink(missing_ok=True)
        if isinstance(exc, RemoteInputError) or not isinstance(exc, Exception):
            raise
        raise RemoteInputError(f"{url}: download failed: {type(exc).__name__}: {exc}"
                               ) from None
    os.replace(tmp, target)
    return target, stamp(info)
