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
from .base import (Claim, Gathered, InputReport, KeyCollision, Ledger, Output, Status,
                   transition)

_FINISHED = (Status.DONE, Status.ROUTED_OUT)


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
        self._gathers: dict[str, set[int]] = {}  # reduce stage -> output ids
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

    def _new_row(self, stage: str, key: str, input_id: int | None, digest: str | None) -> int:
        row_id = next(self._ids)
        self._rows[row_id] = {
            "id": row_id, "stage": stage, "key": key, "status": Status.PENDING, "attempts": 0,
            "input_id": input_id, "input_digest": digest, "fingerprint": None,
            "not_before": None, "error": None, "traceback": None, "worker": None,
            "started": None, "ended": None}
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
            ids.discard(output_id)

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

    def _row(self, item_id: int, new: Status) -> dict[str, Any]:
        row = self._rows.get(item_id)
        if row is None:
            raise IllegalTransition(f"no item with id {item_id}")
        transition(row["status"], new)
        return row

    @staticmethod
    def _reset(row: dict[str, Any]) -> None:
        row.update(status=Status.PENDING, attempts=0, error=None, traceback=None,
                   not_before=None, fingerprint=None)

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
            self._consumers.pop(row["input_id"], None)
            self._delete_output(row["input_id"])
            row["input_id"] = self._new_output(None, 0, key, value)
            self._consumers.setdefault(row["input_id"], set()).add(row_id)
            row["input_digest"] = value.digest
            self._reset(row)
            changed += 1
        missing = sorted(k for (s, k) in self._by_key if s == stage and k not in given)
        return InputReport(added, changed, len(given) - added - changed, missing)

    def reset_stage(self, stage: str) -> int:
        ids = [r["id"] for r in self._rows.values() if r["stage"] == stage]
        self._drop_derived(ids)
        for row_id in ids:
            self._reset(self._rows[row_id])
        return len(ids)

    def drop_stage(self, stage: str) -> int:
        ids = [r["id"] for r in self._rows.values() if r["stage"] == stage]
        self._drop_derived(ids)
        for row_id in ids:
            self._delete_row(row_id)
        self._gathers.pop(stage, None)
        return len(ids)

    def _finished_outputs(self, stage: str) -> list[dict[str, Any]]:
        """Outputs of ``stage``'s finished rows, by row key then position."""
        rows = sorted((r for r in self._rows.values()
                       if r["stage"] == stage and r["status"] in _FINISHED),
                      key=lambda r: r["key"])
        return [self._outputs[o] for row in rows for o in self._outputs_of.get(row["id"], [])]

    def finished_outputs(self, stage: str
                         ) -> Iterator[tuple[int, str, str, bytes | None, str | None]]:
        return iter([(o["id"], o["key"], o["digest"], o["data"], o["ref"])
                     for o in self._finished_outputs(stage)])

    def route(self, target: str, key: str, output_id: int, digest: str, source: str) -> None:
        if (target, key) not in self._by_key:
            self._new_row(target, key, output_id, digest)
            return
        holder = self._rows[self._by_key[(target, key)]]
        producer = self._outputs[holder["input_id"]]["item_id"] if holder["input_id"] else None
        holder_stage = self._rows[producer]["stage"] if producer is not None else ""
        qualified = f"{key}@{source}"
        if holder_stage != source and (target, qualified) not in self._by_key:
            self._new_row(target, qualified, output_id, digest)
            return
        raise KeyCollision(
            f"stage {target!r} already has an item keyed {key!r} from stage {source!r}; "
            f"yield conveyor.Item(key, value) with distinct keys")

    def gather(self, stage: str, output_id: int) -> None:
        self._gathers.setdefault(stage, set()).add(output_id)

    def refresh_routed(self, stage: str) -> None:
        for row in self._rows.values():
            outs = self._outputs_of.get(row["id"], [])
            if row["stage"] != stage or row["status"] not in _FINISHED or not outs:
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

    def claim(self, stage: str, limit: int, worker: str, now: float) -> list[Claim]:
        claims = []
        for row in sorted(self._rows.values(), key=lambda r: r["id"]):
            if len(claims) >= limit:
                break
            if row["stage"] != stage or row["status"] is not Status.PENDING:
                continue
            if row["not_before"] is not None and row["not_before"] > now:
                continue
            row.update(status=Status.RUNNING, attempts=row["attempts"] + 1, worker=worker,
                       started=now, ended=None, not_before=None)
            data = ref = None
            if row["input_id"] is not None:
                out = self._outputs[row["input_id"]]
                data, ref = out["data"], out["ref"]
            claims.append(Claim(row["id"], row["key"], row["attempts"], data, ref))
        return claims

    def complete(self, item_id: int, outputs: list[Output], status: Status, fingerprint: str,
                 now: float) -> Status:
        row = self._row(item_id, status)
        made: list[int] = []
        try:
            for seq, out in enumerate(outputs):
                output_id = self._new_output(item_id, seq, out.key, out.value)
                made.append(output_id)
                for target in out.targets:
                    self.route(target, out.key, output_id, out.value.digest, row["stage"])
                for reduce in out.gathers:
                    self.gather(reduce, output_id)
        except KeyCollision:
            for output_id in made:
                for row_id in list(self._consumers.get(output_id, ())):
                    self._delete_row(row_id)
                self._delete_output(output_id)
            raise
        row.update(status=status, fingerprint=fingerprint, ended=now, error=None,
                   traceback=None)
        return status

    def fail(self, item_id: int, error: str, traceback: str | None, now: float,
             retry_at: float | None) -> Status:
        status = Status.PENDING if retry_at is not None else Status.FAILED
        row = self._row(item_id, status)
        row.update(status=status, error=error, traceback=traceback, ended=now,
                   not_before=retry_at)
        return status

    def release(self, item_ids: Iterable[int]) -> None:
        for item_id in item_ids:
            row = self._row(item_id, Status.PENDING)
            row.update(status=Status.PENDING, attempts=max(row["attempts"] - 1, 0), worker=None)

    def reduce_row(self, stage: str) -> tuple[Status, str | None] | None:
        for row in self._rows.values():
            if row["stage"] == stage:
                return row["status"], row["input_digest"]
        return None

    def open_reduce(self, stage: str, key: str, input_digest: str) -> None:
        for row in self._rows.values():
            if row["stage"] == stage:
                if row["status"] is not Status.PENDING:
                    transition(row["status"], Status.PENDING)
                self._drop_derived([row["id"]])
                self._reset(row)
                row["input_digest"] = input_digest
                return
        self._new_row(stage, key, None, input_digest)

    def gathered(self, stage: str) -> Iterator[Gathered]:
        outs = sorted((self._outputs[o] for o in self._gathers.get(stage, ())),
                      key=lambda o: (o["key"], o["id"]))
        return iter([Gathered(o["key"], o["digest"], o["data"], o["ref"]) for o in outs])

    def commit(self) -> None:
        pass  # nothing to make durable

    # -- reading -------------------------------------------------------------------------------------

    def counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for row in self._rows.values():
            per = counts.setdefault(row["stage"], {})
            per[row["status"].value] = per.get(row["status"].value, 0) + 1
        return counts

    def next_retry(self, stage: str) -> float | None:
        times = [r["not_before"] for r in self._rows.values()
                 if r["stage"] == stage and r["status"] is Status.PENDING
                 and r["not_before"] is not None]
        return min(times) if times else None

    def failures(self, stage: str | None = None) -> list[dict[str, Any]]:
        rows = sorted((r for r in self._rows.values() if r["status"] is Status.FAILED
                       and stage in (None, r["stage"])), key=lambda r: (r["stage"], r["key"]))
        return [{k: r[k] for k in ("stage", "key", "error", "traceback", "attempts")}
                for r in rows]

    def outputs(self, stage: str) -> Iterator[tuple[str, bytes | None, str | None]]:
        return iter([(o["key"], o["data"], o["ref"]) for o in self._finished_outputs(stage)])

    def rows(self, stage: str | None = None) -> Iterator[dict[str, Any]]:
        cols = ("id", "stage", "key", "status", "attempts", "input_digest", "fingerprint",
                "error", "worker", "started", "ended")
        for row in sorted(self._rows.values(), key=lambda r: r["id"]):
            if stage in (None, row["stage"]):
                yield {c: (row[c].value if c == "status" else row[c]) for c in cols}

    def close(self) -> None:
        self._rows.clear()
        self._outputs.clear()
