"""The pipeline of the run directory kept in tests/fixtures/ (made by conveyor at 2cd2187,
before the floor plan moved modules): a run dir written then must still open and resume.

Each call appends "stage key" to $LEGACY_LOG; ``check`` fails for "w3" until
$LEGACY_FIXED is set.
"""

import os

from conveyor import Pipeline

pipe = Pipeline("legacy")


def log(stage: str, key: str) -> None:
    with open(os.environ.get("LEGACY_LOG", os.devnull), "a") as fh:
        fh.write(f"{stage} {key}\n")


@pipe.stage
def upper(word):
    log("upper", word)
    return word.upper()


@pipe.stage(after=upper)
def check(word):
    log("check", word)
    if word == "W3" and not os.environ.get("LEGACY_FIXED"):
        raise ValueError("W3 is not ready")
    return {"word": word, "length": len(word)}


@pipe.reduce(after=check)
def total(values):
    log("total", "total")
    return sum(v["length"] for v in values)
