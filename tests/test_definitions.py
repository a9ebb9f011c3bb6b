"""Pipeline definition errors: each raises a PipelineError naming the stage, before any work."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from conveyor import (BudgetError, GraphError, Item, Pipeline, PipelineError, StageDefinitionError,
                      open_run)


def test_decorators_return_the_callable_unchanged():
    pipe = Pipeline("p")

    def f(x):
        return x + 1

    class C:
        def __call__(self, x):
            return x

    assert pipe.stage(f) is f
    assert pipe.stage(after=f)(C) is C
    assert pipe.reduce(f, name="r", after=C) is f
    assert list(pipe.stages) == ["f", "C", "r"]
    assert (pipe["f"].target, pipe["C"].target, pipe["r"].target) == (f, C, f)
    assert pipe["C"].upstream == ("f",)


def test_name_option_and_string_upstreams():
    pipe = Pipeline("p")
    pipe.stage(lambda x: x, name="first")
    pipe.stage(lambda x: x, name="second", after="first")
    pipe.validate()
    assert pipe["second"].upstream == ("first",)


def test_unknown_upstream_object():
    pipe = Pipeline("p")

    def stray(x):
        return x

    with pytest.raises(GraphError, match="stage 'g'.*is not a stage of pipeline 'p'"):
        @pipe.stage(after=stray)
        def g(x):
            return x


def test_unknown_upstream_name():
    pipe = Pipeline("p")

    @pipe.stage
    def a(x):
        return x

    @pipe.stage(after="nope")
    def b(x):
        return x

    with pytest.raises(GraphError, match="stage 'b' comes after 'nope'"):
        pipe.validate()


def test_cycle_is_named():
    pipe = Pipeline("p")
    pipe.stage(lambda x: x, name="root")
    pipe.stage(lambda x: x, name="a", after=["root", "c"])
    pipe.stage(lambda x: x, name="b", after="a")
    pipe.stage(lambda x: x, name="c", after="b")
    with pytest.raises(GraphError, match="cycle: .*a -> .*"):
        pipe.validate()


def test_two_first_stages(tmp_path):
    pipe = Pipeline("p")

    @pipe.stage
    def a(x):
        return x

    @pipe.stage
    def b(x):
        return x

    with pytest.raises(GraphError, match="'a', 'b' all have no upstream"):
        pipe.run(["x"], run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_duplicate_stage_name():
    pipe = Pipeline("p")
    pipe.stage(lambda x: x, name="a")
    with pytest.raises(StageDefinitionError, match="already has a stage named 'a'"):
        pipe.stage(lambda x: x, name="a")


@pytest.mark.parametrize("options,message", [
    ({"cpus": 0}, "cpus must be > 0"),
    ({"ram": "lots"}, "not a size: 'lots'"),
    ({"gpus": 1.5}, "gpus above 1 must be whole devices"),
    ({"batch_size": 0}, "batch_size must be a positive integer"),
    ({"concurrency": 0}, "concurrency must be a positive integer"),
    ({"retries": -1}, "retries must be a non-negative integer"),
    ({"timeout": 0}, "timeout must be > 0"),
    ({"env": {"A": 1}}, "env must map strings to strings"),
    ({"prefetch": 0}, "prefetch must be a positive integer"),
    ({"prefetch": 1.5}, "prefetch must be a positive integer"),
])
def test_bad_stage_options_name_the_stage(options, message):
    pipe = Pipeline("p")
    with pytest.raises(StageDefinitionError, match=f"stage 'bad': .*{message}"):
        @pipe.stage(**options)
        def bad(x):
            return x


def test_when_on_the_first_stage():
    pipe = Pipeline("p")
    with pytest.raises(StageDefinitionError, match="stage 'a': when= routes"):
        @pipe.stage(when=lambda v: True)
        def a(x):
            return x


def test_reduce_needs_an_upstream():
    pipe = Pipeline("p")
    with pytest.raises(TypeError):
        pipe.reduce(lambda v: v, name="r")  # after= is a required argument
    with pytest.raises(StageDefinitionError, match="stage 'r': a reduce needs after="):
        pipe.reduce(lambda v: v, name="r", after=[])


def test_batch_stage_cannot_be_a_generator():
    pipe = Pipeline("p")
    with pytest.raises(StageDefinitionError, match="stage 'g': a batch stage .* generator"):
        @pipe.stage(batch_size=4)
        def g(values):
            yield from values


def test_load_must_take_a_value_and_is_for_item_stages():
    pipe = Pipeline("p")

    @pipe.stage
    def first(x):
        return x

    with pytest.raises(StageDefinitionError, match="stage 'Bare': load.self, value. takes one"):
        @pipe.stage(after=first)
        class Bare:
            def load(self):
                return None

            def __call__(self, x):
                return x

    with pytest.raises(StageDefinitionError, match="stage 'Total': load.. prefetches item "
                                                   "inputs; a reduce"):
        @pipe.reduce(after=first)
        class Total:
            def load(self, value):
                return value

            def __call__(self, values):
                return sum(values)


def test_a_stage_with_load_heads_its_own_group():
    """Fused below another stage, its load() would run in the call's thread; as the head
    of its group, the worker's prefetch thread runs it ahead of the calls."""
    from conveyor.engine.fusion import fuse

    pipe = Pipeline("p")

    @pipe.stage
    def a(x):
        return x

    @pipe.stage(after=a)
    class Read:
        def load(self, value):
            return value

        def __call__(self, value):
            return value

    @pipe.stage(after=Read)
    def c(x):
        return x

    assert [g.stages for g in fuse(pipe)] == [("a",), ("Read", "c")]


def test_a_stage_needing_more_than_the_budget_is_refused_before_running(tmp_path):
    pipe = Pipeline("p")

    @pipe.stage(gpus=1)
    def embed(x):
        return x

    with pytest.raises(BudgetError, match="stage 'embed' needs gpus=1 but the budget has 0"):
        pipe.run(["x"], run_dir=tmp_path / "run", gpus=0)
    with pytest.raises(BudgetError, match="stage 'embed' needs cpus=1 but the budget has 0.5"):
        pipe.run(["x"], run_dir=tmp_path / "run", cpus=0.5, gpus=1)
    result = pipe.run(["x"], run_dir=tmp_path / "run", gpus=1, executor="inline")
    assert result.ok
    assert open_run(tmp_path / "run").ok


def test_every_definition_error_is_a_pipeline_error():
    for cls in (GraphError, StageDefinitionError, BudgetError):
        assert issubclass(cls, PipelineError)


def test_force_names_an_existing_stage(tmp_path):
    pipe = Pipeline("p")
    pipe.stage(lambda x: x, name="a")
    with pytest.raises(KeyError, match="no stage 'zzz'"):
        pipe.run(["x"], run_dir=tmp_path / "run", force=["zzz"])


def test_tuned_copies_the_pipeline_with_one_stage_changed(tmp_path):
    pipe = Pipeline("tune")

    @pipe.stage(batch_size=8)
    def double(xs):
        return [x * 2 for x in xs]

    single = pipe.tuned("double", batch_size=1, retries=2)
    assert (single["double"].batch_size, single["double"].retries) == (1, 2)
    assert (pipe["double"].batch_size, pipe["double"].retries) == (8, 0)
    assert dict(single.run([Item("a", 1), Item("b", 2)], run_dir=tmp_path / "r",
                           executor="inline").outputs("double")) == {"a": 2, "b": 4}
    with pytest.raises(StageDefinitionError, match="not cpus"):
        pipe.tuned("double", cpus=4)
    with pytest.raises(StageDefinitionError, match="stage 'double': batch_size"):
        pipe.tuned("double", batch_size=0)
    with pytest.raises(KeyError, match="no stage 'nope'"):
        pipe.tuned("nope", retries=1)


def test_the_ray_executor_without_ray_says_what_to_install(tmp_path):
    """Runs where Ray is not installed too (the child hides it if it is)."""
    code = textwrap.dedent(f"""
        import sys
        sys.modules["ray"] = None  # as if Ray were not installed
        from conveyor import ExecutorUnavailable, Pipeline
        pipe = Pipeline("no-ray")
        pipe.stage(lambda x: x)
        try:
            pipe.run(["a"], run_dir={str(tmp_path / "run")!r}, executor="ray")
        except ExecutorUnavailable as exc:
            print(exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout == "the ray executor needs ray: pip install 'conveyor[ray]'\n", out.stderr


def test_a_store_url_without_fsspec_says_what_to_install(tmp_path):
    """Runs where fsspec is not installed too (the child hides it if it is)."""
    code = textwrap.dedent(f"""
        import sys
        sys.modules["fsspec"] = None  # as if fsspec were not installed
        from conveyor import Pipeline, StoreError
        pipe = Pipeline("no-fsspec")
        pipe.stage(lambda x: x)
        try:
            pipe.run(["a"], run_dir={str(tmp_path / "run")!r}, store="s3://bucket/values")
        except StoreError as exc:
            print(exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout == ("store 's3://bucket/values' needs fsspec: "
                          "pip install 'conveyor[store]'\n"), out.stderr
    assert not (tmp_path / "run").exists()  # refused before anything was written
