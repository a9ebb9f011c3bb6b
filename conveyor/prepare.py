"""Getting a run directory's ledger ready before any work: what a rerun reuses.

In order: rows a dead driver left ``running`` go back to ``pending``; stages
that were removed are dropped; stages whose fingerprint changed (or that are
forced, or new) are recomputed together with everything below them, their
rows made again from their upstreams' finished outputs; the inputs are added
(unchanged ones keep everything derived from them, changed ones start over);
failed items get a fresh set of retries. All of it is one atomic group: a
crash or a Ctrl-C while preparing leaves the ledger as it was.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

from . import codec
from .errors import RunInterrupted
from .events import EventLog
from .fingerprint import fingerprints
from .items import input_items
from .ledger.base import KeyCollision, Ledger
from .pipeline import Pipeline
from .store import Store


def prepare(pipeline: Pipeline, ledger: Ledger, store: Store, inputs: Iterable[Any] | None,
            force: tuple[str, ...], events: EventLog,
            interrupted: Callable[[], str | None]) -> dict[str, str]:
    """Bring ``ledger`` up to date with ``pipeline`` and ``inputs``; return stage fingerprints."""
    recovered = ledger.recover()
    if recovered:
        events.emit("recovered", items=recovered)
    order = pipeline.order()
    ledger.set_meta("pipeline", pipeline.name)
    ledger.set_meta("stages", ",".join(pipeline.stages))
    fps = fingerprints(pipeline)
    old = ledger.stage_fingerprints()
    root = pipeline.root().name
    for gone in sorted(set(old) - set(fps)):
        ledger.drop_stage(gone)
        events.emit("stage_removed", stage=gone)
    changed = [n for n in order if n in force or old.get(n) != fps[n]]
    for name in changed:
        if old:
            events.emit("stage_reset", stage=name, forced=name in force, new=name not in old)
        if name == root:
            ledger.reset_stage(name)
        else:
            ledger.drop_stage(name)
            _reroute(pipeline, ledger, store, name, events)
        ledger.set_stage_fingerprint(name, fps[name])
    for name in {up for n in changed for up in pipeline[n].upstream}:
        if pipeline.routes(name):
            ledger.refresh_routed(name)
    if inputs is not None:
        report = ledger.add_inputs(root, ((key, store.put(data, digest))
                                          for key, data, digest in _watch(inputs, interrupted)))
        events.emit("inputs", added=report.added, changed=report.changed,
                    unchanged=report.unchanged, missing=len(report.missing),
                    missing_keys=report.missing[:20])
    ledger.retry_failed()
    return fps


def _watch(inputs: Iterable[Any], interrupted: Callable[[], str | None]
           ) -> Iterator[tuple[str, bytes, str]]:
    """The inputs as (key, bytes, digest), stopping with nothing kept if a signal arrives."""
    for item in input_items(inputs):
        why = interrupted()
        if why is not None:
            raise RunInterrupted(f"interrupted by {why} while reading inputs; nothing was "
                                 f"recorded")
        yield item


def _reroute(pipeline: Pipeline, ledger: Ledger, store: Store, name: str,
             events: EventLog) -> None:
    """Give a (re)defined stage the rows its upstreams' finished outputs route to it."""
    stage = pipeline[name]
    for up in stage.upstream:
        for output_id, key, data, ref in ledger.finished_outputs(up):
            if stage.when is not None:
                try:
                    if not stage.when(codec.decode(store.get(data, ref))):
                        continue
                except Exception:
                    continue  # the producing item recorded no such route before either
            try:
                if stage.reduce:
                    ledger.gather(name, output_id)
                else:
                    ledger.route(name, key, output_id, up)
            except KeyCollision as exc:
                events.emit("route_refused", stage=name, key=key, error=str(exc))
