"""The one exception tree of conveyor.

Everything conveyor raises on purpose derives from :class:`ConveyorError`, so a
caller can catch the library's errors without catching everything else. The CLI
maps the tree onto exit codes: definition and usage errors exit 2, a run with
failed items exits 1, an interrupted run exits 130.
"""

from __future__ import annotations


class ConveyorError(Exception):
    """Base of every error conveyor raises."""


class PipelineError(ConveyorError):
    """The pipeline definition is wrong; nothing about the data."""


class GraphError(PipelineError):
    """The stage graph is invalid: a cycle, an unknown upstream, several first stages."""


class StageDefinitionError(PipelineError):
    """A stage was declared with options that cannot work together."""


class StageContractError(PipelineError):
    """A stage broke its contract at run time (wrong batch length, unserialisable output).

    These are bugs in the stage's code, not bad data: retrying cannot help, so
    the run stops and raises this error naming the stage.
    """


class BudgetError(PipelineError):
    """A stage declares more resources than the whole machine budget holds."""


class InputError(ConveyorError):
    """The inputs cannot be accepted: duplicate keys, values that are not JSON."""


class LedgerError(ConveyorError):
    """The run ledger refused an operation or is unusable."""


class IllegalTransition(LedgerError):
    """A status change the item state machine does not allow."""


class RunLockedError(ConveyorError):
    """Another live driver holds the run directory."""


class RunInterrupted(ConveyorError):
    """The run was stopped by a signal; the ledger is consistent and a rerun resumes."""


class StageTimeout(ConveyorError):
    """A stage's call ran past its ``timeout=`` and was interrupted (inline executor)."""


class StoreError(ConveyorError):
    """The value store cannot be used: another one is recorded, or its backend is missing."""


class MissingDependency(ConveyorError):
    """A feature needs a package that is not installed; the message names the extra."""


class ExecutorUnavailable(ConveyorError):
    """The chosen executor cannot be used here (an optional dependency is missing)."""


class EnvError(ConveyorError):
    """A stage's Python environment cannot be built or used (pip's or uv's output says why).

    The stage's items fail with it; the rest of the pipeline goes on.
    """


class ToolNotFound(EnvError):
    """A native tool a stage calls is not on the worker's PATH; the message says what to install."""
