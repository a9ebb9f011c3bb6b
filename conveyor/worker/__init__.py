"""The worker side: what runs wherever a stage's code runs.

::

    driver ── protocol messages (INIT, TASKS, STOP) ──▶ process.main
                                                          │ shipping.loads(spec)
                                                          │ runner.GroupRunner: setup once,
                                                          ▼ call the stage, encode outputs
    driver ◀── protocol messages (READY, RESULTS, SETUP_FAILED) ───┘

:mod:`.protocol` is the contract between a driver and its workers, shared by
the local and Ray executors: message kinds, the record wire encoding, the
shared-memory slot that names the call in progress, and thread pinning.
:mod:`.process` is the worker process (``python -m conveyor.worker.process``);
:mod:`.envshim` starts it in a stage's own Python environment
(``python -m conveyor.worker.envshim``); :mod:`.actor` is the Ray executor's
actor, the worker process's counterpart there; :mod:`.runner` calls the stage's
code and is shared by every executor (the inline one runs it in the
driver); :mod:`.shipping` sends stage code with its source lines.

It may import the top-level modules (pipeline, store, codec, items, context,
validation, envs, errors) and :mod:`conveyor.ledger.base` (records and
claims); never the engine, an executor or a front end.
"""
