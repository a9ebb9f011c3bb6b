"""Native tools a stage calls (``pdftotext``, ``ffmpeg``): find them, or say what to install.

A tool is part of a stage's environment as much as its Python packages, but
it comes from the system's package manager, not pip. A stage looks its tool
up on the worker's ``PATH`` with :func:`require`; when it is missing, the
item fails with a message naming the package to install, instead of a bare
``FileNotFoundError`` from ``subprocess``.
"""

from __future__ import annotations

import shutil

from .errors import ToolNotFound


def require(tool: str, package: str) -> str:
    """The path of ``tool`` on this worker's PATH.

    Raises:
        ToolNotFound: "pdftotext not found: install poppler-utils".
    """
    path = shutil.which(tool)
    if path is None:
        raise ToolNotFound(f"{tool} not found: install {package}")
    return path
