"""conveyor: multi-stage pipelines whose stages need different hardware.

Declare stages as plain Python with the resources they need; conveyor streams
items through them on this machine (or a Ray cluster), never overcommits the
budget, records every (stage, item) durably and resumes where it stopped.

    from conveyor import Pipeline

    pipe = Pipeline("demo")

    @pipe.stage(cpus=1)
    def double(x):
        return 2 * x

    result = pipe.run([1, 2, 3], run_dir="runs/demo")
"""

__version__ = "0.1.0"  # first: modules below may read it while this package loads

import importlib
from typing import TYPE_CHECKING, Any

from .context import Context, context
from .errors import (
    BudgetError,
    ConveyorError,
    EnvError,
    ExecutorUnavailable,
    GraphError,
    InputError,
    LedgerError,
    PipelineError,
    RunInterrupted,
    RunLockedError,
    StageContractError,
    StageDefinitionError,
    StoreError,
    ToolNotFound,
)
from .items import Item
from .resources import Budget, Resources
from .stage import Stage

__all__ = [
    "Budget", "BudgetError", "Context", "ConveyorError", "EnvError", "ExecutorUnavailable",
    "GraphError", "InputError", "Item", "LedgerError", "Pipeline", "PipelineError", "Resources",
    "RunInterrupted", "RunLockedError", "RunResult", "Stage", "StageContractError",
    "StageDefinitionError", "StoreError", "ToolNotFound", "context", "open_run",
]

# The driver's side loads on first use (PEP 562): every worker process imports this
# package, and the pipeline and result modules (the engine's ledger, reports) would
# add ~40 ms to each worker's start, on the path to a stage's first item.
_DRIVER = {"Pipeline": "pipeline", "RunResult": "result", "open_run": "result"}

if TYPE_CHECKING:
    from .pipeline import Pipeline
    from .result import RunResult, open_run


def __getattr__(name: str) -> Any:
    if name not in _DRIVER:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_DRIVER[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_DRIVER))
