"""The run ledger: the durable record of every (stage, item). See :mod:`.base`."""

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
from .memory import MemoryLedger
from .sqlite import SqliteLedger

__all__ = ["FINISHED", "STATUSES", "Claim", "Gather", "Gathered", "Grouped", "InputReport",
           "KeyCollision", "Ledger", "MemoryLedger", "Output", "Record", "Refused", "SqliteLedger",
           "Status", "transition"]
