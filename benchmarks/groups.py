"""groups: word count over 1,000,000 values: a group stage against Ray Data and a single reduce.

20,000 generated documents of 50 words from a 50,000-word vocabulary. Three
ways, timed from the documents to the counts, in the same process run:

* conveyor: ``words`` (a generator: one value per word) -> ``count``, a group
  by word (``partitions`` = 4 x cores), once per distinct word;
* conveyor: ``words`` -> one ``reduce`` counting with a dict (the peer a user
  would write without groups);
* Ray Data: ``from_items(docs).flat_map(words).groupby("word", num_partitions=
  partitions).map_groups(count)`` (the same number of partitions as ours), every
  row materialised; ``ray.init`` not timed, measured after conveyor.

Each conveyor run is checked exactly against ``collections.Counter``. Also:
the driver's peak RSS running the group at 100,000 and at 1,000,000 values
(each in a fresh process; target: growth <= 100 MB), and a run in which one
partition's worker is killed (SIGKILL) mid-way: only that partition runs again.
"""

from __future__ import annotations

import collections
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import NO_RAY, RayData, emit, machine, parser

from conveyor import Item, Pipeline

WORDS_PER_DOC, VOCABULARY = 50, 50_000


def documents(n: int) -> list[Item]:
    rng = random.Random(7)
    return [Item(f"d{i:06d}", " ".join(f"w{rng.randrange(VOCABULARY)}"
                                       for _ in range(WORDS_PER_DOC))) for i in range(n)]


def split(doc: str):
    for word in doc.split():
        yield {"word": word}


def grouped(partitions: int, log: str | None = None) -> Pipeline:
    pipe = Pipeline("wordcount-group")

    @pipe.stage
    def words(doc):
        yield from split(doc)

    @pipe.group(after=words, by=lambda v: v["word"], partitions=partitions, retries=1)
    def count(key, values, ctx):
        if log:  # which worker runs which partition, for the kill run
            with open(log, "a") as fh:
                fh.write(f"{os.getpid()} {key}\n")
        return sum(1 for _ in values)

    return pipe


def reduced() -> Pipeline:
    pipe = Pipeline("wordcount-reduce")

    @pipe.stage
    def words(doc):
        yield from split(doc)

    @pipe.reduce(after=words, ram="2GiB")
    def count(values):
        counts: dict[str, int] = {}
        for v in values:
            counts[v["word"]] = counts.get(v["word"], 0) + 1
        return counts

    return pipe


def timed_run(pipe: Pipeline, docs: list[Item], run_dir: Path) -> tuple[float, dict]:
    start = time.perf_counter()
    result = pipe.run(docs, run_dir=run_dir, cpus=machine()["cpus"])
    seconds = time.perf_counter() - start
    assert result.ok, result.failures()[:3]
    if pipe.name.endswith("reduce"):
        counts = result.output("count")
    else:
        counts = dict(result.outputs("count"))
    return seconds, counts


def ray_data(docs: list[Item], partitions: int) -> dict:
    peer = RayData.start(machine()["cpus"])
    if peer is None:
        return {"ray_data": NO_RAY, "ray_data_values_per_s": None}

    def words(row):
        return [{"word": w} for w in row["doc"].split()]

    def count(group):
        return {"word": group["word"][:1], "n": [len(group["word"])]}

    try:
        rows = [{"doc": d.value} for d in docs]
        _, seconds = peer.time(lambda: peer.ray.data.from_items(rows).flat_map(words)
                               .groupby("word", num_partitions=partitions)
                               .map_groups(count, batch_format="numpy"))
    finally:
        peer.stop()
    return {"ray_version": peer.version, "ray_data_s": round(seconds, 2),
            "ray_data_values_per_s": round(len(docs) * WORDS_PER_DOC / seconds)}


def child(n_docs: int, run_dir: str, partitions: int) -> None:
    """Run the group pipeline here and report this process's peak RSS."""
    timed_run(grouped(partitions), documents(n_docs), Path(run_dir))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mb": peak}))


def peak_mb(n_docs: int, root: Path, partitions: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--child", str(n_docs),
                          str(root / f"rss-{n_docs}"), str(partitions)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


def killed_run(docs: list[Item], root: Path, partitions: int) -> dict:
    """Kill the worker of the first partition seen running, once; count what ran twice."""
    log = root / "calls.log"
    pipe = grouped(partitions, str(log))
    victim: dict = {}

    def kill_one() -> None:
        while not victim:
            lines = log.read_text().splitlines() if log.exists() else []
            if len(lines) >= 50:  # a partition is well under way
                pid, key = lines[-1].split()
                victim.update(pid=int(pid), key=key)
                os.kill(int(pid), signal.SIGKILL)
                return
            time.sleep(0.01)

    threading.Thread(target=kill_one, daemon=True).start()
    seconds, counts = timed_run(pipe, docs, root / "killed")
    assert counts == expected(docs)
    from conveyor.stage import group_of

    calls = collections.Counter(line.split()[1] for line in log.read_text().splitlines())
    part = {w: group_of(lambda v: v, partitions, w)[1] for w in calls}
    rerun_parts = {part[w] for w, n in calls.items() if n > 1}
    return {"killed_partition": part[victim["key"]], "partitions_run_twice": sorted(rerun_parts),
            "killed_run_s": round(seconds, 2)}


def expected(docs: list[Item]) -> dict[str, int]:
    return dict(collections.Counter(w for d in docs for w in d.value.split()))


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
        return
    args = parser(__doc__).parse_args()
    n_docs = 400 if args.quick else 20_000
    cores = machine()["cpus"]
    partitions = 4 * cores
    root = Path(args.run_dir or tempfile.mkdtemp(prefix="bench-groups-"))
    docs = documents(n_docs)
    values = n_docs * WORDS_PER_DOC
    want = expected(docs)

    group_s, counts = timed_run(grouped(partitions), docs, root / "group")
    assert counts == want
    reduce_s, counts = timed_run(reduced(), docs, root / "reduce")
    assert counts == want
    killed = killed_run(docs, root, partitions)
    small, large = (40, 400) if args.quick else (2_000, 20_000)
    rss_small, rss_large = peak_mb(small, root, partitions), peak_mb(large, root, partitions)
    peer = ray_data(docs, partitions)
    ours = values / group_s
    emit("groups", n_docs=n_docs, values=values, distinct=len(want), partitions=partitions,
         group_values_per_s=round(ours), group_s=round(group_s, 2),
         reduce_values_per_s=round(values / reduce_s), reduce_s=round(reduce_s, 2),
         of_reduce=round(reduce_s / group_s, 3), **peer,
         ratio=round(ours / peer["ray_data_values_per_s"], 3)
         if peer.get("ray_data_values_per_s") else None, target_ratio=1.0,
         rss_values=[small * WORDS_PER_DOC, large * WORDS_PER_DOC],
         driver_peak_mb=[round(rss_small, 1), round(rss_large, 1)],
         rss_growth_mb=round(rss_large - rss_small, 1), rss_bound_mb=100, **killed)


if __name__ == "__main__":
    main()
