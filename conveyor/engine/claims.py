"""Claiming a group's rows for a worker: whole blocks, or item rows split from them.

Where a run's inputs were taken in as blocks (:mod:`conveyor.ledger.blocks`),
a group whose workers run blocks (:attr:`GroupState.runs_blocks`) claims them
as they are, a row standing for hundreds of items. Any other group claims
item rows, and splits a block into item rows when it has too few: one block
at a time, and, while its pace is not known yet, only when nothing of it runs,
so that its first items (SMALLEST at least) measure it before more blocks are split.
"""

from __future__ import annotations

from ..ledger import blocks
from ..ledger.base import Claim, Ledger
from .state import GroupState, StageState
from .workerpool import Worker

WINDOW_BYTES = 64 * 2**20  # a worker's window holds at most this many bytes of inline inputs


def claim_for(ledger: Ledger, group: GroupState, worker: Worker, want: int, now: float
          ) -> list[Claim]:
    """Rows of up to ``want`` items for a worker of ``group``, deepest stage of the group
    first, within the worker's WINDOW_BYTES; the stages' counters move with them."""
    claims: list[Claim] = []
    items = 0
    held = sum(len(c.data or b"") for c in worker.inflight.values())
    for member in reversed(group.members):
        if items >= want or not member.pending or member.wait_until > now:
            continue
        if held >= WINDOW_BYTES and (claims or worker.inflight):
            break
        got = claim_rows(ledger, group, member, want - items, f"w{worker.id}", now,
                         WINDOW_BYTES - held)
        held += sum(len(c.data or b"") for c in got)
        n = sum(blocks.size(c.key) for c in got)
        member.pending -= n
        member.running += n
        items += n
        claims.extend(got)
        if not got and member.pending:  # all of it is backing off before a retry
            member.wait_until = ledger.next_retry(member.stage.name) or now
    return claims


def claim_rows(ledger: Ledger, group: GroupState, member: StageState, want: int,
               worker: str, now: float, max_bytes: int) -> list[Claim]:
    """Up to ``want`` items' rows of ``member`` for ``worker``, now running."""
    name = member.stage.name
    got: list[Claim] = []
    if group.takes_blocks:
        got = ledger.claim(name, -(-want // blocks.TARGET), worker, now, max_bytes=max_bytes,
                           blocks=True)
        group.met_blocks = group.met_blocks or bool(got)
        want -= sum(blocks.size(c.key) for c in got)
        max_bytes -= sum(len(c.data or b"") for c in got)
        if want <= 0 or (got and max_bytes <= 0):
            return got
        return got + ledger.claim(name, want, worker, now, max_bytes=max(max_bytes, 0),
                                  blocks=False)
    got = ledger.claim(name, want, worker, now, max_bytes=max_bytes, blocks=False)
    if len(got) < want and (group.paced or not group.running):
        packed = ledger.claim(name, 1, worker, now, blocks=True)
        if packed:
            group.met_blocks = True
            ledger.split([c.id for c in packed])
            got += ledger.claim(name, want - len(got), worker, now, max_bytes=max_bytes,
                                blocks=False)
    return got
