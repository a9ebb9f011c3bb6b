"""What every ``conveyor`` command shares: exit codes, the two consoles, the counts table.

Imported by :mod:`conveyor.cli.app` and by feature packages' commands
(:mod:`conveyor.docs.cli`), so that those need not import the app that
registers them.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ..resources import format_size
from ..result import RunResult

#: 0 the run is ok; 1 some items failed (or are left pending); 2 a usage,
#: definition or input error (nothing ran); 130 interrupted (rerun to resume).
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

console = Console()
errors = Console(stderr=True)


def print_counts(result: RunResult) -> None:
    """The per-stage counts of a run, as a table on stdout."""
    table = Table(title=f"{result.pipeline} — {result.run_dir}")
    table.add_column("stage")
    for column in ("done", "routed-out", "failed", "pending", "running"):
        table.add_column(column, justify="right")
    spilled = result.spilled
    for stage, c in result.counts.items():
        # a group's items are its partitions; say so, with what they spilled to disk
        name = f"{stage} (partitions, {format_size(spilled[stage])} spilled)" \
            if stage in spilled else stage
        table.add_row(name, *(str(c[k]) for k in ("done", "routed-out", "failed", "pending",
                                                  "running")))
    console.print(table)
