"""Getting a run directory's ledger ready before any work: what a rerun reuses.

In order: rows a dead driver left ``running`` go back to ``pending``; stages
that were removed are dropped; stages whose fingerprint changed (or that are
forced, or new) are recomputed together with everything below them, their
rows made again from their upstreams' finished outputs; the inputs are added
(unchanged ones keep everything derived from them, changed ones start over,
those gone from a listed place are dropped: :class:`~conveyor.items.Listing`);
failed items get a fresh set of retries. All of it is one atomic group: a
crash or a Ctrl-C while preparing leaves the ledger as it was.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable

from .. import codec
from ..items import Inputs, Listing
from ..ledger import blocks
from ..ledger.base import KeyCollision, Ledger
from ..observe.events import EventLog
from ..origin import origin_of
from ..pipeline import Pipeline
from ..stage import group_of
from ..store import Store
from ..validation import boundary
from .fingerprint import fingerprints


def prepare(pipeline: Pipeline, ledger: Ledger, store: Store, inputs: Iterable[Any] | None,
            force: tuple[str, ...], retry: tuple[str, ...] | None, events: EventLog,
            interrupted: Callable[[], str | None],
            taking: Callable[[int], None] | None = None) -> dict[str, str]:
    """Bring ``ledger`` up to date with ``pipeline`` and ``inputs``; return stage fingerprints.

    ``retry`` names the stages whose failed items get a fresh set of retries
    (None: every stage); ``taking`` is told how many inputs have been read, about
    once a second while they are being read.
    """
    # Committed first: `conveyor status` from another process lists the stages from the
    # run's first moments, not only once a long listing of inputs has been taken in.
    ledger.set_meta("pipeline", pipeline.name)
    ledger.set_meta("stages", ",".join(pipeline.stages))
    ledger.commit()
    recovered = ledger.recover()
    if recovered:
        events.emit("recovered", items=recovered)
    order = pipeline.order()
    origin = origin_of(pipeline)
    if origin is not None:  # so that `conveyor retry` and `status --plan` can load it again
        ledger.set_meta("pipeline_origin", origin.to_json())
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
            reroute(pipeline, ledger, store, name, events)
        ledger.set_stage_fingerprint(name, fps[name])
    for name in {up for n in changed for up in pipeline[n].upstream}:
        if pipeline.routes(name):
            ledger.refresh_routed(name)
    if inputs is not None:
        report = ledger.add_inputs(root, Inputs(inputs, store.put, interrupted, taking))
        listed = inputs if isinstance(inputs, Listing) else Listing(())
        gone = [k for k in report.missing if listed.covers(k)]
        missing = [k for k in report.missing if not listed.covers(k)]
        ledger.drop_inputs(root, gone)
        summary = {"added": report.added, "changed": report.changed,
                   "unchanged": report.unchanged, "missing": len(missing),
                   "missing_keys": missing[:20], "gone": len(gone), "gone_keys": gone[:20]}
        events.emit("inputs", **summary)
        ledger.set_meta("inputs", json.dumps(summary))
    if retry is None:
        ledger.retry_failed()
    for name in retry or ():
        ledger.retry_failed(name)
    return fps


def reroute(pipeline: Pipeline, ledger: Ledger, store: Store, name: str,
             events: EventLog) -> None:
    """Give a (re)defined stage the rows its upstreams' finished outputs route to it."""
    stage = pipeline[name]
    packed: list[int] = []  # blocks above whose items must each be seen: run again
    for up in stage.upstream:
        # The predicate and a group's key function see a value as its stage returned it
        # (a typed stage's model), as they do in the worker that routes fresh outputs.
        returned = boundary(pipeline[up])
        for output_id, key, data, ref in ledger.finished_outputs(up):
            if blocks.is_block(key) and (stage.when is not None or stage.barrier):
                packed.append(-output_id)  # a block's packed outputs: its row's own value
                continue
            gkey, part = None, None
            if stage.when is not None or stage.group:
                try:
                    value = returned.check_output(up, codec.decode(store.get(data, ref)))
                    if stage.when is not None and not stage.when(value):
                        continue
                    if stage.group:
                        gkey, part = group_of(stage.by, stage.partitions, value)
                except Exception:
                    continue  # the producing item recorded no such route before either
            try:
                if stage.barrier:
                    ledger.gather(name, output_id, gkey, part)
                else:
                    ledger.route(name, key, output_id, up)
            except KeyCollision as exc:
                events.emit("route_refused", stage=name, key=key, error=str(exc))
    if packed:
        ledger.recompute(packed)


def plan_rerun(pipeline: Pipeline, ledger: Ledger, force: tuple[str, ...] = ()
               ) -> list[dict[str, Any]]:
    """What running ``pipeline`` again on this ledger would do, stage by stage.

    Each entry has ``stage``, ``action`` (``reuse``, ``recompute``, ``drop``),
    ``why``, and the rows the stage holds: ``done``, ``failed`` (retried),
    ``pending`` (run), which a recompute replaces.
    """
    fps, old, counts = fingerprints(pipeline), ledger.stage_fingerprints(), ledger.counts()
    changed = {n for n in fps if n in force or old.get(n) != fps[n]}
    plan = []
    for name in pipeline.order():
        c = counts.get(name, {})
        if name not in changed:
            action, why = "reuse", "unchanged"
        elif name in force:
            action, why = "recompute", "forced"
        elif name not in old:
            action, why = "recompute", "new stage"
        elif any(up in changed for up in pipeline[name].upstream):
            action, why = "recompute", "below a changed stage"
        else:
            action, why = "recompute", "its code or parameters changed"
        plan.append({"stage": name, "action": action, "why": why,
                     "done": c.get("done", 0) + c.get("routed-out", 0),
                     "failed": c.get("failed", 0),
                     "pending": c.get("pending", 0) + c.get("running", 0)})
    for name in sorted(set(old) - set(fps)):
        c = counts.get(name, {})
        plan.append({"stage": name, "action": "drop", "why": "no longer in the pipeline",
                     "done": c.get("done", 0) + c.get("routed-out", 0),
                     "failed": c.get("failed", 0), "pending": c.get("pending", 0)})
    return plan
