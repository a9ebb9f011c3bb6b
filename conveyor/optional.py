"""Optional dependencies: imported when a feature needs them, never by ``import conveyor``.

Every feature that needs a package outside conveyor's own requirements gets
it through :func:`require`, which names the extra that installs it when it
is missing (``pip install 'conveyor[ray]'``), in the error type the feature
raises anyway (a store error for a store, an executor error for an executor).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import ConveyorError, MissingDependency


def require(module: str, extra: str, feature: str,
            error: type[ConveyorError] = MissingDependency) -> ModuleType:
    """Import ``module`` for ``feature``, or raise ``error`` saying which extra to install.

    Raises:
        ConveyorError: ``error``, when ``module`` (or something it needs) is
            not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = exc.name or module
        raise error(f"{feature} needs {missing}: pip install 'conveyor[{extra}]'") from None
