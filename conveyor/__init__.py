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
from .pipeline import Pipeline
from .resources import Budget, Resources
from .result import RunResult, open_run
from .stage import Stage

__all__ = [
    "Budget", "BudgetError", "Context", "ConveyorError", "EnvError", "ExecutorUnavailable",
    "GraphError", "InputError", "Item", "LedgerError", "Pipeline", "PipelineError", "Resources",
    "RunInterrupted", "RunLockedError", "RunResult", "Stage", "StageContractError",
    "StageDefinitionError", "StoreError", "ToolNotFound", "context", "open_run",
]
