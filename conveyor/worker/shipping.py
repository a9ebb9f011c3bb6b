"""Sending stage code to workers so that their tracebacks still show it.

A stage defined in a script's ``__main__``, a notebook cell or inside a
function cannot be imported by a worker, so cloudpickle sends its code by
value. Since cloudpickle 3.1.3 every such code object arrives with the file
name ``<dynamic-code>``, and a traceback from the worker then shows neither
the stage's file nor the line that raised. And a file the driver read may be
missing where the worker runs (a notebook cell, another Ray node).

So the stage travels with what a traceback needs, whatever the pickler does:

* each code object pickled by value keeps its own file name (restored with
  ``code.replace`` when it is rebuilt), and
* the source lines of those files, as the driver's :mod:`linecache` has them,
  travel alongside and are registered in the worker's :mod:`linecache` under
  the same names before the code is rebuilt.

Code that is pickled by reference (an importable module's functions) is not
touched: the worker imports it and finds its file itself.
"""

from __future__ import annotations

import io
import linecache
import pickle
import types
from typing import Any

import cloudpickle


class _Pickler(cloudpickle.Pickler):
    """cloudpickle's pickler, noting the file of every code object it sends by value."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file)
        self.files: set[str] = set()

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is types.CodeType:
            self.files.add(obj.co_filename)
            rebuild, args = self.dispatch_table[types.CodeType](obj)
            return _code_in_file, (rebuild, args, obj.co_filename)
        return super().reducer_override(obj)


def _code_in_file(rebuild: Any, args: tuple[Any, ...], filename: str) -> types.CodeType:
    """Rebuild a code object the way the pickler chose, under its own file name."""
    code = rebuild(*args)
    return code if code.co_filename == filename else code.replace(co_filename=filename)


def dumps(obj: Any) -> bytes:
    """``obj`` pickled with cloudpickle, with the source lines of the code it carries."""
    with io.BytesIO() as buffer:
        pickler = _Pickler(buffer)
        pickler.dump(obj)
        payload = buffer.getvalue()
    sources = {}
    for name in sorted(pickler.files):
        lines = linecache.getlines(name)
        if lines:
            sources[name] = lines
    return pickle.dumps((sources, payload), protocol=pickle.HIGHEST_PROTOCOL)


def loads(data: bytes) -> Any:
    """The object :func:`dumps` pickled, its sources registered in :mod:`linecache` first."""
    sources, payload = pickle.loads(data)
    for name, lines in sources.items():
        # No modification time: linecache.checkcache() keeps such entries, and the
        # lines are those of the code that runs even if the file changes meanwhile.
        linecache.cache[name] = (sum(map(len, lines)), None, lines, name)
    return cloudpickle.loads(payload)
