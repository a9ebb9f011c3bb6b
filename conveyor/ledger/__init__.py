"""The run ledger: the durable record of every (stage, item). See :mod:`.base`.

The package holds the contract (records, claims, statuses) that workers share; the
ledgers themselves are :mod:`.sqlite` and :mod:`.memory`, imported from there so
that a worker, which never opens a ledger, does not load them."""

from .base import (
    FINISHED,
    STATUSES,
    Claim,
    Gather,
    Gathered,
    Grouped,
    InputReport,
    KeyCollision,
    Ledger,
    Output,
    Record,
    Refused,
    Status,
    transition,
)

__all__ = ["FINISHED", "STATUSES", "Claim", "Gather", "Gathered", "Grouped", "InputReport",
           "KeyCollision", "Ledger", "Output", "Record", "Refused", "Status", "transition"]
