"""NumPy values crossing process boundaries as JSON (README: "Values cross process
boundaries as JSON (NumPy arrays and pydantic models are converted)").

A stage returns NumPy scalars and arrays; the stage below it (in another worker
process on the ``local`` executor) and ``result.outputs()`` see plain Python
values: floats, ints, bools and nested lists of them, with the same values.
"""

from __future__ import annotations

import os

import numpy as np
import pydantic

from conveyor import Item, Pipeline


def _plain(value):
    """The value with its Python types spelled out, so a test compares types exactly."""
    if isinstance(value, list):
        return ["list", [_plain(v) for v in value]]
    if isinstance(value, dict):
        return ["dict", {k: _plain(v) for k, v in value.items()}]
    return [type(value).__name__, value]


def numpy_pipeline(make) -> Pipeline:
    """produce (NumPy values from ``make``) -> look (reports what it received, with types)."""
    pipe = Pipeline("numpy-values")

    @pipe.stage
    def produce(name):
        return make(name)

    @pipe.stage(after=produce)
    def look(value):
        return {"received": _plain(value), "pid": os.getpid()}

    return pipe


def make_scalar(name):
    return {
        "f32": np.float32(1.5),
        "f32_negative": np.float32(-0.25),
        "f64": np.float64(2.0 ** -10),
        "i64": np.int64(2 ** 40 + 1),
        "i32": np.int32(-7),
        "u8": np.uint8(255),
        "bool": np.bool_(True),
        "bool_false": np.bool_(False),
    }[name]


SCALARS = {
    "f32": ["float", 1.5],
    "f32_negative": ["float", -0.25],
    "f64": ["float", 2.0 ** -10],
    "i64": ["int", 2 ** 40 + 1],
    "i32": ["int", -7],
    "u8": ["int", 255],
    "bool": ["bool", True],
    "bool_false": ["bool", False],
}


def test_numpy_scalars_arrive_as_python_numbers_downstream_and_in_outputs(executor, run_dir):
    pipe = numpy_pipeline(make_scalar)
    result = pipe.run(list(SCALARS), run_dir=run_dir, executor=executor)
    assert result.ok
    produced = dict(result.outputs("produce"))
    assert {k: _plain(v) for k, v in produced.items()} == SCALARS
    received = {k: v["received"] for k, v in result.outputs("look")}
    assert received == SCALARS


def make_array(name):
    return {
        "float32_2d": np.array([[0.5, 1.0, -2.25], [3.0, 0.125, 1e6]], dtype=np.float32),
        "float64_2d": np.arange(6, dtype=np.float64).reshape(2, 3) / 4,
        "int64_1d": np.array([2 ** 40, -3, 0], dtype=np.int64),
        "bool_1d": np.array([True, False, True]),
        "bool_2d": np.array([[True, False], [False, False]]),
        "empty": np.zeros((0,), dtype=np.float32),
        # Arrays that are views: transposed and strided (not C-contiguous).
        "transposed": np.arange(6, dtype=np.int64).reshape(2, 3).T,
        "strided": np.arange(10, dtype=np.float64)[::3],
        "in_a_dict": {"embedding": np.array([0.5, -0.5], dtype=np.float32),
                      "score": np.float32(0.75), "n": np.int64(3)},
    }[name]


ARRAYS = {
    "float32_2d": ["list", [["list", [["float", 0.5], ["float", 1.0], ["float", -2.25]]],
                            ["list", [["float", 3.0], ["float", 0.125], ["float", 1e6]]]]],
    "float64_2d": ["list", [["list", [["float", 0.0], ["float", 0.25], ["float", 0.5]]],
                            ["list", [["float", 0.75], ["float", 1.0], ["float", 1.25]]]]],
    "int64_1d": ["list", [["int", 2 ** 40], ["int", -3], ["int", 0]]],
    "bool_1d": ["list", [["bool", True], ["bool", False], ["bool", True]]],
    "bool_2d": ["list", [["list", [["bool", True], ["bool", False]]],
                         ["list", [["bool", False], ["bool", False]]]]],
    "empty": ["list", []],
    "transposed": ["list", [["list", [["int", 0], ["int", 3]]],
                            ["list", [["int", 1], ["int", 4]]],
                            ["list", [["int", 2], ["int", 5]]]]],
    "strided": ["list", [["float", 0.0], ["float", 3.0], ["float", 6.0], ["float", 9.0]]],
    "in_a_dict": ["dict", {"embedding": ["list", [["float", 0.5], ["float", -0.5]]],
                           "score": ["float", 0.75], "n": ["int", 3]}],
}


def test_numpy_arrays_arrive_as_nested_lists_downstream_and_in_outputs(executor, run_dir):
    pipe = numpy_pipeline(make_array)
    result = pipe.run(list(ARRAYS), run_dir=run_dir, executor=executor)
    assert result.ok, result.failures()
    produced = dict(result.outputs("produce"))
    assert {k: _plain(v) for k, v in produced.items()} == ARRAYS
    received = {k: v["received"] for k, v in result.outputs("look")}
    assert received == ARRAYS


def test_values_cross_worker_processes_on_the_local_executor(run_dir):
    """On ``local`` the producing and consuming stages run in worker processes of their
    own (not the driver): the conversion happens at a real process boundary."""

    pipe = Pipeline("numpy-pids")

    @pipe.stage(cpus=1)
    def produce(x):
        return {"pid": os.getpid(), "value": np.array([[x, x + 0.5]], dtype=np.float32)}

    @pipe.stage(after=produce, cpus=0.5)
    def look(v):
        return {"producer": v["pid"], "pid": os.getpid(), "value": _plain(v["value"])}

    result = pipe.run([Item("a", 1.0)], run_dir=run_dir, executor="local", cpus=2)
    ((key, out),) = result.outputs("look")
    assert key == "a"
    assert out["value"] == ["list", [["list", [["float", 1.0], ["float", 1.5]]]]]
    assert os.getpid() not in (out["producer"], out["pid"])
    assert out["producer"] != out["pid"]


class Point(pydantic.BaseModel):
    x: float
    label: str


def test_a_pydantic_model_from_an_untyped_stage_arrives_as_a_dict(executor, run_dir):
    pipe = Pipeline("model-values")

    @pipe.stage
    def produce(x):
        return Point(x=x, label=f"p{x}")

    @pipe.stage(after=produce)
    def look(value):
        return _plain(value)

    result = pipe.run([Item("a", 0.5)], run_dir=run_dir, executor=executor)
    assert dict(result.outputs("produce")) == {"a": {"x": 0.5, "label": "p0.5"}}
    assert dict(result.outputs("look")) == {
        "a": ["dict", {"x": ["float", 0.5], "label": ["str", "p0.5"]}]}
