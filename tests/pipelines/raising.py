"""A module-level stage that raises: its code reaches workers by reference (an import)."""

from conveyor import Pipeline

pipe = Pipeline("raising")


@pipe.stage
def unlucky(x):
    if x == 13:
        raise ValueError("thirteen, from a module")
    return x
