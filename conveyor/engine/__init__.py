"""The engine: everything between a declared pipeline and its workers.

::

    Pipeline.run ─▶ batch.BatchRun ─┬─ lock.RunLock     one driver per run dir
                                    ├─ prepare.prepare  recovery, reruns, inputs
                                    └─ loop.Engine ◀── serve.Service (the other front end)
                                         │ turn(): scheduler.plan / lease_order (pure policy)
                                         │         workerpool: start, lease, stop workers
                                         │         backpressure: queue fill, room to take more
                                         │         watchdog: timeouts, RAM limits
                                         ▼
                                    executors ──▶ workers ──▶ records ──▶ ledger

It owns the run loop (:mod:`.loop`) and the lifecycle its front ends drive
it through (:mod:`.front`: open, start_early, prepared, turn, commit, stop,
close, finished), the batch-run front end (:mod:`.batch`), input
preparation and rerun planning (:mod:`.prepare`, :mod:`.fingerprint`), the
scheduling policy (:mod:`.scheduler`), live workers and their CPU leases
(:mod:`.workerpool`), reduces, groups and side inputs (:mod:`.barriers`),
queue backpressure (:mod:`.backpressure`), per-stage state (:mod:`.state`),
fusion of linear chains (:mod:`.fusion`), the watchdog and the run lock,
and the driver's heap setting (:mod:`.heap`).

It may import the top-level modules (pipeline, resources, store, items,
codec, errors, rundir, origin), :mod:`conveyor.ledger`,
:mod:`conveyor.executors`, :mod:`conveyor.worker` (the protocol and the
specs it sends) and :mod:`conveyor.observe`. Nothing here imports a front
end (:mod:`conveyor.serve`, :mod:`conveyor.cli`).
"""
