"""What a file is, by its first bytes: a PDF, an archive (and which kind), or what else.

The name says what a file claims to be; the content what it is. ``expand``
asks :func:`sniff` about every file it meets that is not named ``*.pdf``: a
PDF under another name is a document, an archive under another name is
opened, and anything else is skipped with the reason :func:`sniff` gives
(``not a document: a PNG image``), recorded by the pipeline's ``skipped``
stage. A file named ``*.pdf`` is always a document: if it is not a PDF,
``inspect`` fails it with the reason, which is louder than a skip.
"""

from __future__ import annotations

import os

HEAD = 1024  # a PDF's %PDF- marker may follow up to this much junk, as readers allow

# (offset, magic, what) in the order checked; archives first, by the kind expand opens
ARCHIVES = ((0, b"PK\x03\x04", "zip"), (0, b"PK\x05\x06", "zip"),
            (0, b"7z\xbc\xaf\x27\x1c", "7z"), (0, b"Rar!\x1a\x07", "rar"),
            (0, b"\x1f\x8b", "tar"), (0, b"BZh", "tar"), (0, b"\xfd7zXZ\x00", "tar"),
            (257, b"ustar", "tar"))
OTHERS = ((0, b"\x89PNG", "a PNG image"), (0, b"\xff\xd8\xff", "a JPEG image"),
          (0, b"GIF8", "a GIF image"), (0, b"II*\x00", "a TIFF image"),
          (0, b"MM\x00*", "a TIFF image"), (0, b"\xd0\xcf\x11\xe0", "an old Office document"),
          (0, b"\x7fELF", "an executable"), (0, b"MZ", "a Windows executable"))


def sniff(path: str | os.PathLike[str]) -> tuple[str, str | None]:
    """``("pdf", None)``, ``("archive", kind)`` (``zip``, ``tar``, ``7z``, ``rar``) or
    ``("skip", reason)`` for the file at ``path``."""
    with open(path, "rb") as fh:
        head = fh.read(HEAD)
    if not head:
        return "skip", "not a document: an empty file"
    for offset, magic, kind in ARCHIVES:  # first: a zip storing a PDF holds %PDF- early
        if head[offset:offset + len(magic)] == magic:
            return "archive", kind
    if b"%PDF-" in head:
        return "pdf", None
    for offset, magic, what in OTHERS:
        if head[offset:offset + len(magic)] == magic:
            return "skip", f"not a document: {what}"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not only a character cut at the end of the read
            return "skip", "not a document: binary data of an unknown kind"
    return "skip", "not a document: text"
