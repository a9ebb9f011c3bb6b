"""A pipeline with a group stage slow enough to kill its driver mid-way (tests/test_groups.py).

Each call of ``sums`` appends "start KEY" and "end KEY" to $GROUP_LOG.
"""

import os
import time

from conveyor import Item, Pipeline
from conveyor.stage import group_of

KEYS, PARTITIONS = 40, 16
LOG = os.environ.get("GROUP_LOG", os.devnull)

pipe = Pipeline("grouped")


def log(line: str) -> None:
    with open(LOG, "a") as fh:
        fh.write(line + "\n")


@pipe.stage
def first(x):
    return x


def by(value: int) -> int:
    return value % KEYS


@pipe.group(after=first, by=by, partitions=PARTITIONS)
def sums(key, values):
    log(f"start {key}")
    total = sum(values)
    time.sleep(0.1)
    log(f"end {key}")
    return total


def inputs() -> list[Item]:
    return [Item(f"{i:04d}", i) for i in range(400)]


def expected() -> dict[str, int]:
    return {str(k): sum(i for i in range(400) if i % KEYS == k) for k in range(KEYS)}


def partition_of(key: str) -> str:
    return f"partition-{group_of(by, PARTITIONS, int(key))[1]}"
