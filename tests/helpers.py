"""Helpers for tests; importable from worker processes too (they get the driver's sys.path)."""

from __future__ import annotations

import os
from pathlib import Path


def read_log(path: Path) -> list[str]:
    """Lines a stage appended to an execution log (one line per call)."""
    if not path.exists():
        return []
    return path.read_text().splitlines()


def append_log(path: str | os.PathLike[str], line: str) -> None:
    """Append one line atomically (O_APPEND), safe from several worker processes."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)
