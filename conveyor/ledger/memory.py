"""An in-memory ledger: the same model and contract as SQLite, nothing on disk.

For runs whose record need not survive the process (tests, serving requests
one at a time). :meth:`MemoryLedger.commit` only marks a group as finished;
durability is the one guarantee this backend does not give.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable, Iterator

from ..errors import IllegalTransition, InputError
from ..store import Stored
from .base import (
    FINISHED,
    Claim,
    Gathered,
    Grouped,
    InputReport,
    KeyCollision,
    Ledger,
    Record,
    Refused,
    Status,
    orphan,
    transition,
)


class MemoryLedger(Ledger):
    """A ledger held in dictionaries; see the module docstring."""

    def __init__(self) -> None:
        self._meta: dict[str, str] = {}
        self._fingerprints: dict[str, str] = {}
        self._rows: dict[int, dict[str, Any]] = {}
        self._by_key: dict[tuple[str, str], int] = {}
        self._outputs: dict[int, dict[str, Any]] = {}
        self._outputs_of: dict[int, list[int]] = {}  # item id -> its output ids
        self._consumers: dict[int, set[int]] = {}  # output id -> rows reading it
        # reduce or group stage -> output id -> (group key, partition), None for a reduce
        self._gathers: dict[str, dict[int, tuple[str | None, int | None]]] = {}
        self._ids = itertools.count(1)

    # -- metadata ---------------------------------------------------------------------

    def get_meta(self, name: str) -> str | None:
        return self._meta.get(name)

    def set_meta(self, name: str, value: str) -> None:
        self._meta[name] = value

    def stage_fingerprints(self) -> dict[str, str]:
        return dict(self._fingerprints)

    def set_stage_fingerprint(self, stage: str, fingerprint: str) -> None:
        self._fingerprints[stage] = fingerprint

    # -- rows and values -------------------------------------------------------------------

    def _new_row(self, stage: str, key: str, input_id: int | None, digest: str | None = None,
                 done: Record | None = None, worker: str | None = None) -> int:
        row_id = next(self._ids)
        row = {"id": row_id, "stage": stage, "key": key, "status": Status.PENDING,
               "attempts": 0, "input_id": input_id, "input_digest": digest,
               "not_before": None, "error": None, "traceback": None, "worker": None,
               "started": None, "ended": None}
        if done is not None:
            row.update(status=done.status, attempts=done.attempt, not_before=done.retry_at,
                       error=done.error, traceback=done.traceback,
                       worker=done.worker or worker,
                       started=done.started, ended=done.ended)
        self._rows[row_id] = row
        self._by_key[(stage, key)] = row_id
        if input_id is not None:
            self._consumers.setdefault(input_id, set()).add(row_id)
        return row_id

    def _new_output(self, item_id: int | None, seq: int, key: str, value: Stored) -> int:
        output_id = next(self._ids)
        self._outputs[output_id] = {"id": output_id, "item_id": item_id, "seq": seq, "key": key,
                                    "data": value.data, "ref": value.ref,
                                    "digest": value.digest, "size": value.size}
        if item_id is not None:
            self._outputs_of.setdefault(item_id, []).append(output_id)
        return output_id

    def _delete_row(self, row_id: int) -> None:
        row = self._rows.pop(row_id)
        del self._by_key[(row["stage"], row["key"])]
        if row["input_id"] is not None:
            self._consumers.get(row["input_id"], set()).discard(row_id)

    def _delete_output(self, output_id: int) -> None:
        out = self._outputs.pop(output_id)
        if out["item_id"] is not None:
            self._outputs_of[out["item_id"]].remove(output_id)
        self._consumers.pop(output_id, None)
        for ids in self._gathers.values():
            ids.pop(output_id, None)

    def _drop_derived(self, item_ids: Iterable[int]) -> None:
        """Remove the outputs of ``item_ids`` and every row and value derived from them."""
        todo = [o for i in item_ids for o in self._outputs_of.get(i, [])]
        while todo:
            output_id = todo.pop()
            if output_id not in self._outputs:
                continue
            for row_id in list(self._consumers.get(output_id, ())):
                todo.extend(self._outputs_of.get(row_id, []))
                self._delete_row(row_id)
            self._delete_output(output_id)

    @staticmethod
    def _reset(row: dict[str, Any]) -> None:
        row.update(status=Status.PENDING, attempts=0, error=None, traceback=None,
                   not_before=None)

    def _stage_rows(self, stage: str) -> list[dict[str, Any]]:
        return [r for r in self._rows.values() if r["stage"] == stage]

    # -- setting up a run -----------------------------------------------------------------------

    def recover(self) -> int:
        moved = 0
        for row in self._rows.values():
            if row["status"] is Status.RUNNING:
                row.update(status=Status.PENDING, worker=None)
                moved += 1
        return moved

    def add_inputs(self, stage: str, inputs: Iterable[tuple[str, Stored]]) -> InputReport:
        given: dict[str, Stored] = {}
        for key, value in inputs:
            if key in given:
                raise InputError(f"duplicate input key {key!r}")
            given[key] = value
        if not given:
            return InputReport(0, 0, 0, [])
        added = changed = 0
        for key, value in given.items():
            row_id = self._by_key.get((stage, key))
            if row_id is None:
                self._new_row(stage, key, self._new_output(None, 0, key, value), value.digest)
                added += 1
                continue
            row = self._rows[row_id]
            if row["input_digest"] == value.digest:
                continue
            self._drop_derived([row_id])
            self._delete_output(row["input_id"])
            row["input_id"] = self._new_output(None, 0, key, value)
            self._consumers.setdefault(row["input_id"], set()).add(row_id)
            row["input_digest"] = value.digest
            self._reset(row)
            changed += 1
        missing = sorted(k for (s, k) in self._by_key if s == stage and k not in given)
        return InputReport(added, changed, len(given) - added - changed, missing)

    def drop_inputs(self, stage: str, keys: list[str]) -> int:
        rows = [self._by_key[(stage, k)] for k in keys if (stage, k) in self._by_key]
        self._drop_derived(rows)
        for row_id in rows:
            input_id = self._rows[row_id]["input_id"]
            self._delete_row(row_id)
            self._delete_output(input_id)
        return len(rows)

    def reset_stage(self, stage: str) -> int:
        rows = self._stage_rows(stage)
        self._drop_derived(r["id"] for r in rows)
        for row in rows:
            self._reset(row)
        return len(rows)

    def drop_stage(self, stage: str) -> int:
        rows = self._stage_rows(stage)
        self._drop_derived(r["id"] for r in rows)
        for row in rows:
            self._delete_row(row["id"])
        self._gathers.pop(stage, None)
        return len(rows)

    def _finished_outputs(self, stage: str) -> list[dict[str, Any]]:
        """Outputs of ``stage``'s finished rows, by row key then position."""
        rows = sorted((r for r in self._stage_rows(stage) if r["status"] in FINISHED),
                      key=lambda r: r["key"])
        return [self._outputs[o] for row in rows for o in self._outputs_of.get(row["id"], [])]

    def finished_outputs(self, stage: str
                         ) -> Iterator[tuple[int, str, bytes | None, str | None]]:
        return iter([(o["id"], o["key"], o["data"], o["ref"])
                     for o in self._finished_outputs(stage)])

    def route(self, target: str, key: str, output_id: int, source: str) -> None:
        self._route(target, key, output_id, source, None)

    def _route(self, target: str, key: str, output_id: int, source: str,
               done: Record | None, worker: str | None = None) -> int:
        if (target, key) not in self._by_key:
            return self._new_row(target, key, output_id, done=done, worker=worker)
        holder = self._rows[self._by_key[(target, key)]]
        producer = self._outputs[holder["input_id"]]["item_id"] if holder["input_id"] else None
        holder_stage = self._rows[producer]["stage"] if producer is not None else ""
        qualified = f"{key}@{source}"
        if holder_stage != source and (target, qualified) not in self._by_key:
            return self._new_row(target, qualified, output_id, done=done, worker=worker)
        raise KeyCollision(
            f"stage {target!r} already has an item keyed {key!r} from stage {source!r}; "
            f"yield conveyor.Item(key, value) with distinct keys")

    def gather(self, stage: str, output_id: int, gkey: str | None = None,
               part: int | None = None) -> None:
        self._gathers.setdefault(stage, {}).setdefault(output_id, (gkey, part))

    def refresh_routed(self, stage: str) -> None:
        for row in self._stage_rows(stage):
            outs = self._outputs_of.get(row["id"], [])
            if row["status"] not in FINISHED or not outs:
                continue
            taken = any(self._consumers.get(o) or any(o in g for g in self._gathers.values())
                        for o in outs)
            row["status"] = Status.DONE if taken else Status.ROUTED_OUT

    def retry_failed(self, stage: str | None = None) -> int:
        moved = 0
        for row in self._rows.values():
            if row["status"] is Status.FAILED and stage in (None, row["stage"]):
                row.update(status=Status.PENDING, attempts=0, not_before=None)
                moved += 1
        return moved

    # -- work -------------------------------------------------------------------------------------

    def claim(self, stage: str, limit: int, worker: str, now: float,
              max_bytes: int | None = None, blocks: bool | None = None) -> list[Claim]:
        if blocks:  # this ledger takes no inputs in as blocks
            return []
        claims: list[Claim] = []
        held = 0
        for row in sorted(self._stage_rows(stage), key=lambda r: r["id"]):
            if len(claims) >= limit:
                break
            if row["status"] is not Status.PENDING:
                continue
            if row["not_before"] is not None and row["not_before"] > now:
                continue
            size = len(self._outputs[row["input_id"]]["data"] or b"") if row["input_id"] else 0
            if max_bytes is not None and claims and held + size > max_bytes:
                break
            held += size
            row.update(status=Status.RUNNING, attempts=row["attempts"] + 1, worker=worker,
                       started=now, ended=None, not_before=None)
            data = ref = None
            if row["input_id"] is not None:
                out = self._outputs[row["input_id"]]
                data, ref = out["data"], out["ref"]
            claims.append(Claim(row["id"], stage, row["key"], row["attempts"], data, ref))
        return claims

    def record(self, records: list[Record], worker: str | None = None) -> list[Refused]:
        for r in records:
            if r.item_id is None:
                continue
            row = self._rows.get(r.item_id)
            if row is None:
                raise IllegalTransition(f"no item with id {r.item_id}")
            if row["status"] is not Status.RUNNING:
                raise IllegalTransition(f"an item cannot go from {row['status']} to {r.status}: "
                                        f"only a running item has a result to record")
            transition(row["status"], r.status)
        fused = {(r.stage, r.key): r for r in records if r.item_id is None}
        created: dict[tuple[str, str], int] = {}
        refused: list[Refused] = []
        for r in records:
            if r.item_id is None and (r.stage, r.key) not in created:
                refused.append(orphan(r))
                continue
            row = self._rows[r.item_id if r.item_id is not None else created[(r.stage, r.key)]]
            made: dict[tuple[str, str], int] = {}
            outputs: list[int] = []
            try:
                for seq, out in enumerate(r.outputs):
                    output_id = self._new_output(row["id"], seq, out.key, out.value)
                    outputs.append(output_id)
                    for target in out.targets:
                        made[(target, out.key)] = self._route(
                            target, out.key, output_id, row["stage"],
                            fused.get((target, out.key)), worker)
                    for stage, gkey, part in out.gathers:
                        self.gather(stage, output_id, gkey, part)
            except KeyCollision as exc:
                for output_id in outputs:
                    for row_id in list(self._consumers.get(output_id, ())):
                        self._delete_row(row_id)
                    self._delete_output(output_id)
                refused.append(Refused(r, str(exc)))
                continue
            if r.item_id is not None:
                row.update(status=r.status, not_before=r.retry_at, error=r.error,
                           traceback=r.traceback, started=r.started, ended=r.ended,
                           worker=r.worker or worker or row["worker"])
            created.update((k, v) for k, v in made.items() if k in fused)
        return refused

    def release(self, item_ids: Iterable[int]) -> None:
        for item_id in item_ids:
            row = self._rows.get(item_id)
            if row is None:
                raise IllegalTransition(f"no item with id {item_id}")
            transition(row["status"], Status.PENDING)
            row.update(status=Status.PENDING, attempts=max(row["attempts"] - 1, 0), worker=None)

    def barrier_rows(self, stage: str) -> dict[str, tuple[Status, str | None]]:
        return {r["key"]: (r["status"], r["input_digest"]) for r in self._stage_rows(stage)}

    def open_barrier(self, stage: str, key: str, input_digest: str) -> None:
        row_id = self._by_key.get((stage, key))
        if row_id is None:
            self._new_row(stage, key, None, input_digest)
            return
        row = self._rows[row_id]
        if row["status"] is not Status.PENDING:
            transition(row["status"], Status.PENDING)
        self._drop_derived([row_id])
        self._reset(row)
        row["input_digest"] = input_digest

    def close_barrier(self, stage: str, key: str) -> None:
        row_id = self._by_key.get((stage, key))
        if row_id is not None:
            self._drop_derived([row_id])
            self._delete_row(row_id)

    def gathered(self, stage: str) -> Iterator[Gathered]:
        outs = sorted((self._outputs[o] for o in self._gathers.get(stage, {})),
                      key=lambda o: (o["key"], o["id"]))
        return iter([Gathered(o["key"], o["digest"], o["data"], o["ref"]) for o in outs])

    def grouped(self, stage: str) -> Iterator[Grouped]:
        rows = []
        for output_id, (gkey, part) in self._gathers.get(stage, {}).items():
            if part is None or gkey is None:
                continue
            o = self._outputs[output_id]
            rows.append(Grouped(part, gkey, o["key"], o["digest"], o["data"], o["ref"]))
        rows.sort(key=lambda g: (g.part, g.gkey, g.key))
        return iter(rows)

    def commit(self) -> None:
        pass  # nothing to make durable

    def forget(self, rows: Iterable[tuple[str, str]]) -> None:
        """Drop finished ``(stage, key)`` rows and their values: a served request is over.

        Not part of the ledger contract: a durable ledger keeps its history.
        """
        for stage, key in rows:
            row_id = self._by_key.get((stage, key))
            if row_id is None:
                continue
            for output_id in list(self._outputs_of.get(row_id, [])):
                self._delete_output(output_id)
            self._outputs_of.pop(row_id, None)
            input_id = self._rows[row_id]["input_id"]
            self._delete_row(row_id)
            if input_id in self._outputs and self._outputs[input_id]["item_id"] is None:
                self._delete_output(input_id)  # a run input only this row read

    # -- reading -------------------------------------------------------------------------------------

    def counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for row in self._rows.values():
            per = counts.setdefault(row["stage"], {})
            per[row["status"].value] = per.get(row["status"].value, 0) + 1
        return counts

    def pending_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self._rows.values():
            if row["status"] is Status.PENDING:
                counts[row["stage"]] = counts.get(row["stage"], 0) + 1
        return counts

    def next_retry(self, stage: str) -> float | None:
        times = [r["not_before"] for r in self._stage_rows(stage)
                 if r["status"] is Status.PENDING and r["not_before"] is not None]
        return min(times) if times else None

    def failures(self, stage: str | None = None) -> list[dict[str, Any]]:
        rows = sorted((r for r in self._rows.values() if r["status"] is Status.FAILED
                       and stage in (None, r["stage"])), key=lambda r: (r["stage"], r["key"]))
        return [{k: r[k] for k in ("stage", "key", "error", "traceback", "attempts")}
                for r in rows]

    def outputs(self, stage: str) -> Iterator[tuple[str, bytes | None, str | None]]:
        return iter([(o["key"], o["data"], o["ref"]) for o in self._finished_outputs(stage)])

    def rows(self, stage: str | None = None) -> Iterator[dict[str, Any]]:
        cols = ("id", "stage", "key", "status", "attempts", "input_digest", "error", "worker",
                "started", "ended")
        for row in sorted(self._rows.values(), key=lambda r: r["id"]):
            if stage in (None, row["stage"]):
                yield {c: (row[c].value if c == "status" else row[c]) for c in cols}

    def close(self) -> None:
        self._rows.clear()
        self._outputs.clear()
