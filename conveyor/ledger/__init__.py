"""The run ledger: the durable record of every (stage, item). See :mod:`.base`."""

from .base import (STATUSES, Claim, Gathered, InputReport, KeyCollision, Ledger, Output,
                   Status, transition)
from .memory import MemoryLedger
from .sqlite import SqliteLedger

__all__ = ["STATUSES", "Claim", "Gathered", "InputReport", "KeyCollision", "Ledger",
           "MemoryLedger", "Output", "SqliteLedger", "Status", "transition"]
