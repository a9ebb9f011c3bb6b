"""Side inputs as a stage's code sees them: ``ctx.side(name)``.

The driver writes each side stage's outputs to a lookup file when the stages
reading it may start (see :mod:`conveyor.engine.barriers`); a worker opens it
read-only on first use and keeps it open for every item it runs. A reduce is
read as its one value; any other stage as a read-only mapping key -> output
that looks values up on demand, so a side of millions of keys costs its
readers no memory.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .. import codec, rundir
from ..store import Store


class SideView(Mapping[str, Any]):
    """A finished stage's outputs by key, looked up in its lookup file as needed."""

    def __init__(self, path: Path, store: Store) -> None:
        self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        self._store = store

    def __getitem__(self, key: str) -> Any:
        row = self._db.execute("SELECT data, ref FROM side WHERE key=?", (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return codec.decode(self._store.get(row[0], row[1]))

    def __contains__(self, key: object) -> bool:
        return self._db.execute("SELECT 1 FROM side WHERE key=?", (key,)).fetchone() is not None

    def __len__(self) -> int:
        return self._db.execute("SELECT count(*) FROM side").fetchone()[0]

    def __iter__(self) -> Iterator[str]:
        for (key,) in self._db.execute("SELECT key FROM side ORDER BY key"):
            yield key


class Sides:
    """The side inputs of one stage in one worker, opened on first use."""

    def __init__(self, run_dir: str, store: Store, reduces: Mapping[str, bool]) -> None:
        self._run_dir = Path(run_dir)
        self._store = store
        self._reduces = dict(reduces)  # side stage -> whether it is a reduce
        self._open: dict[str, Any] = {}

    def get(self, stage: str, name: str) -> Any:
        """Side input ``name`` of ``stage``: a reduce's value, or a :class:`SideView`."""
        if name not in self._reduces:
            raise KeyError(f"stage {stage!r} reads no side input {name!r}; it reads "
                           f"{', '.join(map(repr, self._reduces))}")
        if name not in self._open:
            view = SideView(self._run_dir / rundir.side_ref(name), self._store)
            self._open[name] = view[name] if self._reduces[name] else view
        return self._open[name]
