"""Opening PDFs with pypdfium2, turning every way a file can be unusable into a clear reason.

Every stage that reads a PDF opens it through :func:`open_pdf`, so the
reasons are the same wherever a bad file is met:

- ``empty file``: zero bytes;
- ``not a PDF``: no ``%PDF-`` header near the start;
- ``encrypted: password required``: a user password protects it;
- ``truncated: ...``: the file stops before its ``%%EOF`` marker (a partial
  download or copy); refused even when PDFium could salvage some pages, since
  the lost pages would vanish silently;
- ``corrupt: ...``: PDFium cannot parse it, or it has no pages.

pypdfium2 is imported here, lazily, never at ``import conveyor.docs`` time.
PDFium is not thread-safe: use one document per thread, as the stages do.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import BadDocument

HEADER_WINDOW = 1024  # the PDF spec allows junk before %PDF- within the first KiB
TAIL_WINDOW = 8192  # where %%EOF must appear (readers accept trailing junk)


def check_bytes(path: str | os.PathLike[str]) -> int:
    """The file's size, after checking it is non-empty, a PDF, and not truncated.

    Raises:
        BadDocument: ``empty file``, ``not a PDF`` or ``truncated: ...``.
    """
    size = os.path.getsize(path)
    if size == 0:
        raise BadDocument("empty file")
    with open(path, "rb") as fh:
        head = fh.read(HEADER_WINDOW)
        if b"%PDF-" not in head:
            raise BadDocument(f"not a PDF: the file starts with {head[:16]!r}, not %PDF-")
        fh.seek(max(0, size - TAIL_WINDOW))
        tail = fh.read()
    if b"%%EOF" not in tail:
        raise BadDocument(f"truncated: the file ends at byte {size} without the %%EOF "
                          f"marker that closes a complete PDF")
    return size


def open_pdf(path: str | os.PathLike[str]) -> Any:
    """A ``pypdfium2.PdfDocument`` for ``path``; raises :class:`BadDocument` with the reason."""
    import pypdfium2 as pdfium
    import pypdfium2.raw as raw

    check_bytes(path)
    try:
        doc = pdfium.PdfDocument(str(Path(path)))
    except pdfium.PdfiumError as exc:
        code = getattr(exc, "err_code", None)
        if code == raw.FPDF_ERR_PASSWORD:
            raise BadDocument("encrypted: password required") from None
        if code == raw.FPDF_ERR_SECURITY:
            raise BadDocument("encrypted: unsupported security handler") from None
        raise BadDocument(f"corrupt: PDFium cannot parse the file ({exc})") from None
    if len(doc) == 0:
        doc.close()
        raise BadDocument("corrupt: the document has no pages")
    return doc


def is_encrypted(doc: Any) -> bool:
    """Whether an opened document uses a security handler (e.g. only an owner password)."""
    import pypdfium2.raw as raw

    return raw.FPDF_GetSecurityHandlerRevision(doc.raw) != -1


def visible_box(page: Any) -> tuple[float, float, float, float]:
    """The part of the page a reader sees: the CropBox clipped to the MediaBox.

    In unrotated page space, as ``(left, bottom, right, top)``.
    """
    ml, mb, mr, mt = page.get_mediabox()
    cl, cb, cr, ct = page.get_cropbox()
    box = (max(ml, cl), max(mb, cb), min(mr, cr), min(mt, ct))
    if box[2] <= box[0] or box[3] <= box[1]:  # a CropBox outside the MediaBox is ignored
        return (ml, mb, mr, mt)
    return box


def page_text(page: Any) -> str:
    """The text layer of the visible part of a page, lines separated by ``\\n``."""
    left, bottom, right, top = visible_box(page)
    textpage = page.get_textpage()
    try:
        text = textpage.get_text_bounded(left=left, bottom=bottom, right=right, top=top)
    finally:
        textpage.close()
    return normalise_newlines(text)


def normalise_newlines(text: str) -> str:
    """``\\r\\n`` and ``\\r`` to ``\\n``, no trailing spaces on lines, no NULs."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")
