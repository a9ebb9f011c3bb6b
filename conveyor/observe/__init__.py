"""Seeing a run: its event stream, metrics, live progress and the HTML report.

::

    engine ──▶ observer.Observer ──▶ events.EventLog (RUN_DIR/events.jsonl)
                  │ metrics.RunMetrics: per-stage counters, worker and machine samples
                  │ logs: at each tick, logs grown past their size moved to NAME.log.1
                  └ progress: the model (fed by events) and its views (table, lines)
    conveyor report ──▶ report.analyse: digest.RunDigest (the events in one pass,
                        bounded) ──▶ report.render (charts.py: SVG)

The engine calls the observer; views and the report read only the run
directory (events and ledger), never the driver's memory. It may import the
top-level modules (pipeline, resources, result, rundir, runstate) and
:mod:`conveyor.ledger.base`; never the engine, executors or front ends.
"""
