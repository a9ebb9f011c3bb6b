"""A pipeline with a group stage slow enough to kill its driver mid-way (tests/test_groups.py).

Each call of ``sums`` appends "start KEY" and "end KEY" to $GROUP_LOG. With
``GROUP_HOLD=1`` the calls that start once every key has started never return:
the run cannot finish, so a test can kill its driver with partitions done and
one still running, however fast the machine is.
"""

import os
import threading
import time

from conveyor import Item, Pipeline
from conveyor.stage import group_of

KEYS, PARTITIONS = 40, 16
LOG = os.environ.get("GROUP_LOG", os.devnull)
HOLD = os.environ.get("GROUP_HOLD") == "1"

pipe = Pipeline("grouped")


def started() -> int:
    with open(LOG) as fh:
        return sum(line.startswith("start") for line in fh)


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
    if HOLD and started() >= KEYS:  # among the last to start: nothing waits behind it
        threading.Event().wait()  # until the test kills the driver, and this worker with it
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
