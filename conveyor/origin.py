"""Where a pipeline comes from, so that another process can load it again.

A run records its pipeline's :class:`Origin` in the ledger; ``conveyor retry``
and ``conveyor status --plan`` load the pipeline from it, from any working
directory. An origin is a reference ``module:attr`` (or ``/path/file.py:attr``
for a script), the ``sys.path`` entry the module imports from, and, where the
attribute is a function that builds the pipeline (``conveyor docs`` builds its
pipeline from its options), the keyword arguments to call it with.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import PipelineError
from .pipeline import Pipeline


@dataclass(frozen=True)
class Origin:
    """How to load a pipeline again: ``ref`` imported from ``root``, called with ``arguments``."""

    ref: str
    root: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"ref": self.ref, "root": self.root, "arguments": self.arguments},
                          sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Origin":
        data = json.loads(text)
        return cls(data["ref"], data.get("root"), data.get("arguments") or {})


def import_root(module: ModuleType) -> str | None:
    """The ``sys.path`` entry ``module`` imports from (None for a module without a file)."""
    file = getattr(module, "__file__", None)
    if not file:
        return None
    path = Path(file).resolve()
    depth = module.__name__.count(".") + (path.name == "__init__.py")
    return str(path.parents[depth])


def origin_of(pipeline: Pipeline) -> Origin | None:
    """How another process loads ``pipeline`` again: the function recorded by
    :meth:`Pipeline.built_by`, else the module attribute that holds it; else None."""
    if pipeline.recipe is not None:
        factory, arguments = pipeline.recipe
        if "<locals>" in factory.__qualname__:
            return None  # defined inside a function: nothing can import it
        module = sys.modules[factory.__module__]
        return Origin(f"{factory.__module__}:{factory.__qualname__}", import_root(module),
                      arguments)
    name, file = pipeline.defined_in
    module = sys.modules.get(name or "")
    attr = next((k for k, v in vars(module).items() if v is pipeline), None) if module else None
    if attr is None:
        return None
    if name == "__main__":
        return Origin(f"{os.path.abspath(file)}:{attr}") if file else None
    return Origin(f"{name}:{attr}", import_root(module))


def load(ref: str, arguments: dict[str, Any] | None = None, root: str | None = None
         ) -> Pipeline:
    """The pipeline ``ref`` names: ``module:attr`` or ``path/to/file.py:attr``.

    ``attr`` is a :class:`Pipeline`, or a function returning one, called with
    ``arguments``. ``root`` is put on ``sys.path`` first. A module given by
    its path imports under its file's stem, from its folder.

    Raises:
        PipelineError: the reference is malformed, does not import, or does
            not name a pipeline.
    """
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise PipelineError(f"expected MODULE:PIPELINE, got {ref!r}")
    if module_name.endswith(".py") or os.sep in module_name:
        path = Path(module_name).resolve()
        if not path.exists():
            raise PipelineError(f"no such file: {module_name}")
        root, module_name = str(path.parent), path.stem
    elif root is None and "" not in sys.path:
        root = os.getcwd()  # `python -m` would find a module here; so does conveyor
    if root and root not in sys.path:
        sys.path.insert(0, root)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PipelineError(f"cannot import {module_name!r}: {exc}") from None
    target = getattr(module, attr, None)
    if callable(target) and not isinstance(target, Pipeline):
        try:
            target = target(**(arguments or {}))
        except TypeError as exc:
            raise PipelineError(f"{ref!r} cannot be called with {arguments or {}}: {exc}"
                                ) from None
        if isinstance(target, Pipeline) and target.recipe is None:
            target.built_by(getattr(module, attr), **(arguments or {}))
    if not isinstance(target, Pipeline):
        raise PipelineError(f"{ref!r} is not a conveyor Pipeline (got {type(target).__name__})")
    return target
