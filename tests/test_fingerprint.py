"""Fingerprints: what a change to a stage recomputes, and what it leaves alone."""

from __future__ import annotations

from conveyor import Pipeline
from conveyor.engine.fingerprint import fingerprints


def build(threshold: float = 0.5, code: str = "x * 2", version: str | None = None,
          when_limit: int = 10) -> Pipeline:
    pipe = Pipeline("fp")
    scope: dict = {}
    exec(f"def first(x):\n    return x\n\ndef second(x, limit={threshold}):\n"
         f"    return {code}\n\ndef third(x):\n    return x\n", scope)
    pipe.stage(scope["first"])
    pipe.stage(scope["second"], after="first", version=version,
               when=lambda v: v < when_limit)
    pipe.stage(scope["third"], after="second")
    return pipe


def changed(a: Pipeline, b: Pipeline) -> set[str]:
    fa, fb = fingerprints(a), fingerprints(b)
    return {name for name in fa if fa[name] != fb[name]}


def test_the_same_definition_has_the_same_fingerprints():
    assert changed(build(), build()) == set()


def test_a_change_recomputes_that_stage_and_below_only():
    assert changed(build(), build(code="x * 3")) == {"second", "third"}
    assert changed(build(), build(threshold=0.7)) == {"second", "third"}  # a default value
    assert changed(build(), build(version="2")) == {"second", "third"}
    assert changed(build(), build(when_limit=20)) == {"second", "third"}  # a closed-over value


def test_unplain_closures_do_not_make_every_run_new():
    def make():
        marker = object()  # its repr differs each time

        def stage(x):
            return x if marker else None

        pipe = Pipeline("p")
        pipe.stage(stage)
        return pipe

    assert changed(make(), make()) == set()
