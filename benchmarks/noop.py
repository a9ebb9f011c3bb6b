"""The no-op pipeline several benchmarks share: three stages that return their input."""

from __future__ import annotations

from conveyor import Pipeline

pipe = Pipeline("noop")


@pipe.stage
def first(x):
    return x


@pipe.stage(after=first)
def second(x):
    return x


@pipe.stage(after=second)
def third(x):
    return x
