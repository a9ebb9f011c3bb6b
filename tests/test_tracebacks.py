"""A failed item's traceback shows the stage's own file, line number and line.

Whatever the pickler does to code sent by value (cloudpickle 3.1.3 names all
of it ``<dynamic-code>``), and even where the file is not on the worker's
disk (a notebook cell), the frame that raised reads as it would in the
driver. Checked for each shape a stage's code comes in, on every executor.
"""

from __future__ import annotations

import linecache
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conveyor import Item, Pipeline, open_run
from pipelines import raising


def frame(filename: str, function: str, line: str) -> str:
    """The two lines a traceback prints for the frame of ``filename`` that holds ``line``."""
    lines = [text.strip() for text in linecache.getlines(filename)]
    number = lines.index(line) + 1
    return f'  File "{filename}", line {number}, in {function}\n    {line}\n'


def only_failure(result_or_dir) -> dict:
    result = open_run(result_or_dir) if isinstance(result_or_dir, Path) else result_or_dir
    with result:
        (failure,) = result.failures()
    return failure


def test_a_closure(executor, run_dir):
    pipe = Pipeline("closure")
    limit = 12

    @pipe.stage
    def fragile(x):
        if x > limit:
            raise ValueError("over the limit")
        return x

    failure = only_failure(pipe.run([Item("a", 1), Item("b", 13)], run_dir=run_dir,
                                    executor=executor))
    assert failure["error"] == "ValueError: over the limit"
    assert frame(__file__, "fragile", 'raise ValueError("over the limit")') in failure["traceback"]


def test_a_class_and_the_method_it_calls(executor, run_dir):
    pipe = Pipeline("klass")

    @pipe.stage(batch_size=2)
    class Scale:
        def setup(self):
            self.factor = 2

        def check(self, value):
            if value < 0:
                raise ArithmeticError("negative input")

        def __call__(self, values):
            for value in values:
                self.check(value)
            return [value * self.factor for value in values]

    failure = only_failure(pipe.run([Item("neg", -1)], run_dir=run_dir, executor=executor))
    tb = failure["traceback"]
    assert frame(__file__, "__call__", "self.check(value)") in tb
    assert frame(__file__, "check", 'raise ArithmeticError("negative input")') in tb


def test_a_module_level_function(executor, run_dir):
    failure = only_failure(raising.pipe.run([Item("x", 13)], run_dir=run_dir,
                                            executor=executor))
    assert frame(raising.__file__, "unlucky",
                 'raise ValueError("thirteen, from a module")') in failure["traceback"]


def test_a_notebook_cell_whose_file_exists_nowhere(executor, run_dir):
    # What IPython does with a cell: compile it under a made-up name and put its lines
    # in linecache. A worker process has neither.
    name = "<ipython-input-7-0123abcd>"
    cell = textwrap.dedent("""\
        def from_cell(x):
            total = x + 1
            raise LookupError(f"nothing for {total}")
        """)
    linecache.cache[name] = (len(cell), None, cell.splitlines(True), name)
    namespace = {"__name__": "__main__"}
    exec(compile(cell, name, "exec"), namespace)
    pipe = Pipeline("notebook")
    pipe.stage(namespace["from_cell"])

    failure = only_failure(pipe.run([Item("x", 1)], run_dir=run_dir, executor=executor))
    assert failure["error"] == "LookupError: nothing for 2"
    assert frame(name, "from_cell", 'raise LookupError(f"nothing for {total}")') \
        in failure["traceback"]


SCRIPT = """\
import sys

from conveyor import Pipeline

pipe = Pipeline("script")


def helper(x):
    return 10 // x


@pipe.stage
def divide(x):
    return helper(x)


if __name__ == "__main__":
    pipe.run([0], run_dir=sys.argv[1], executor=sys.argv[2])
"""


@pytest.mark.parametrize("shape", ["local", pytest.param("ray", marks=pytest.mark.ray)])
def test_a_script_run_as_main(shape, tmp_path):
    if shape == "ray":
        pytest.importorskip("ray")
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    run_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, str(script), str(run_dir), shape],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    failure = only_failure(run_dir)
    assert failure["error"] == "ZeroDivisionError: integer division or modulo by zero"
    tb = failure["traceback"]
    assert frame(str(script), "divide", "return helper(x)") in tb
    assert frame(str(script), "helper", "return 10 // x") in tb
