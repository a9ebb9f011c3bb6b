"""Errors of the document pipeline, part of conveyor's one exception tree.

A stage that meets a bad document raises one of these; conveyor fails that
item with the message (``BadDocument: encrypted: password required``) and the
run goes on with the other documents. Messages start with a short reason a
person can act on (``encrypted``, ``not a PDF``, ``truncated``, ``empty
file``, ``corrupt``), then the detail.
"""

from __future__ import annotations

from ..errors import ConveyorError


class DocsError(ConveyorError):
    """Base of the document pipeline's errors."""


class BadDocument(DocsError):
    """A file that cannot be processed as a PDF; the message starts with the reason."""


class ArchiveError(DocsError):
    """An archive that cannot be read (damaged, unsupported, or a tool is missing)."""


class UnsafeArchive(ArchiveError):
    """An archive member would be written outside its extraction folder (path traversal)."""


class ArchiveLimit(ArchiveError):
    """An archive member went past an extraction limit (size, compression ratio, total,
    nesting depth); the message names the limit."""


class IndexMissing(DocsError):
    """A run directory has no finished index to search."""


class RemoteInputError(DocsError):
    """A remote input (an fsspec URL) that cannot be listed or downloaded: missing, refused,
    unreachable, or over the size limit for one file."""


class ModelError(DocsError):
    """An embedding model that cannot be used: not on this machine (nothing is
    downloaded), or not the model an index was built with."""
