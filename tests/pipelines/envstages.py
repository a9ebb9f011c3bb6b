"""Stages for tests/test_envs.py, importable in a stage's own environment (no pytest here)."""

import sys


def which_six(value):
    """The value, with the six version and the interpreter this worker runs."""
    import six

    return {"value": value, "six": six.__version__, "python": sys.executable}


def same(value):
    return value
