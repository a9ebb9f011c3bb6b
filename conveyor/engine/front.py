"""What a front end of the engine is, and the lifecycle it drives the engine through.

::

    engine = Engine(pipeline, run_dir, executor, budget, front)
    engine.check_fits()             # every stage can be placed; before anything is written
    engine.open(ledger, events)     # take the ledger; build groups; observe
    engine.start_early()            # optional: a first worker while inputs come in
    ...                             # the front end fills the ledger (inputs, reruns)
    engine.prepared()               # queues read from the ledger; commit
    while not engine.finished():    # or for as long as the front end serves
        engine.turn()
    engine.stop(); engine.commit(); engine.close()

:class:`conveyor.engine.batch.BatchRun` turns it until a batch run is
finished; :class:`conveyor.serve.Service` turns it for as long as it serves
requests, adding inputs as they come (:meth:`~conveyor.engine.loop.Engine.add_inputs`). What
differs between them is what a :class:`FrontEnd` says: whether more work may
always come, and what happens to records on their way into the ledger and
once they are in it.
"""

from __future__ import annotations

from ..ledger.base import Record
from .workerpool import IDLE_SECONDS


class FrontEnd:
    """What a front end of the engine decides; a batch run keeps these defaults."""

    #: More work may always come (serving): workers stay while the stage has none.
    open_ended = False
    #: How long an idle worker beyond ``min_workers`` that the plan does not want lives.
    idle_seconds = IDLE_SECONDS

    def shape(self, records: list[Record]) -> list[Record]:
        """Records as they will be written (a front end may change where outputs go)."""
        return records

    def applied(self, records: list[Record], fused: set[tuple[str, str]]) -> None:
        """Records the ledger took; ``fused`` are the rows they created in their final state."""
