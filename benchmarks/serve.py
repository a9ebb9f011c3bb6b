"""Serving: examples/textclass.py (CPU → MiniLM → CPU) behind ``conveyor serve``.

Three measurements in one run, each against a real server process on
127.0.0.1 and clients in this process (httpx, asyncio):

* ``batched``: the example as written (``Classify`` takes batches of 32) under
  ``--clients`` concurrent clients: requests/s, p50 and p99 latency, mean batch.
* ``unbatched``: the same with ``Classify`` tuned to ``batch_size=1``.
* overhead: one client at a time through HTTP against the three stage
  functions called directly in this process, model loaded once and torch
  given the served stage's thread count (p50 each).

Prints one JSON line: the figures, batched/unbatched throughput, and the
per-request overhead (ms and as direct/served).
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from pathlib import Path

from common import emit, parser

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "tests"))

import textclass  # noqa: E402

unbatched = textclass.pipe.tuned("Classify", batch_size=1)  # served by spec below

SUBJECTS = ["The striker", "Our team", "The lab", "Researchers", "The company", "Investors",
            "The forecast", "A storm front", "The coach", "The central bank"]
VERBS = ["reported", "expected", "celebrated", "measured", "announced", "warned about"]
OBJECTS = ["a late goal in the final", "record quarterly profits", "heavy rain on Sunday",
           "a new particle in the detector", "falling share prices", "a title-winning season",
           "strong winds along the coast", "results of the clinical experiment"]


def texts(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} "
            f"(note {i})." for i in range(n)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def load(url: str, bodies: list[str], clients: int) -> tuple[float, list[float]]:
    """Send every body from ``clients`` concurrent clients; (seconds, latencies)."""
    import httpx

    queue: asyncio.Queue[str] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    latencies: list[float] = []

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            text = queue.get_nowait()
            started = time.perf_counter()
            response = await http.post("/run", json={"text": text})
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise RuntimeError(f"{response.status_code}: {response.text}")

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        return time.perf_counter() - started, latencies


def batches(url: str) -> tuple[float, float]:
    """Classify's batch-size histogram so far: (sum of sizes, number of batches)."""
    import httpx

    metrics = httpx.get(f"{url}/metrics").text
    figures = {}
    for line in metrics.splitlines():
        for kind in ("sum", "count"):
            if line.startswith(f'conveyor_stage_batch_size_{kind}{{stage="Classify"}}'):
                figures[kind] = float(line.split()[-1])
    return figures["sum"], figures["count"]


def served(spec: str, bodies: list[str], clients: int, serial: int) -> dict[str, float]:
    from test_serve import Server  # the tests' server process helper

    server = Server(spec, "--cpus", "2")
    try:
        server.wait_ready()
        asyncio.run(load(server.url, bodies[:clients], clients))  # first calls: lazy imports
        before = batches(server.url)  # the warm-up's batches are not the load's
        seconds, latencies = asyncio.run(load(server.url, bodies, clients))
        after = batches(server.url)
        figures = {"requests_per_s": len(bodies) / seconds,
                   "p50_ms": percentile(latencies, 0.5) * 1000,
                   "p99_ms": percentile(latencies, 0.99) * 1000,
                   "mean_batch": (after[0] - before[0]) / (after[1] - before[1])}
        if serial:
            _, one_by_one = asyncio.run(load(server.url, bodies[:serial], 1))
            figures["serial_p50_ms"] = percentile(one_by_one, 0.5) * 1000
        return figures
    finally:
        server.terminate()


def direct(bodies: list[str]) -> float:
    """p50 ms of the three stages called in this process, the model loaded once, with
    as many torch threads as the served stage is pinned to (its ``threads``)."""
    import torch

    torch.set_num_threads(textclass.pipe["Classify"].resources.threads)
    model = textclass.Classify()
    model.setup()
    latencies = []
    for text in bodies:
        started = time.perf_counter()
        prepared = textclass.preprocess(textclass.Text(text=text))
        textclass.postprocess(model([prepared])[0])
        latencies.append(time.perf_counter() - started)
    return percentile(latencies[5:], 0.5) * 1000


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=600)
    p.add_argument("--clients", type=int, default=32)
    args = p.parse_args()
    n, serial = (40, 10) if args.quick else (args.requests, 100)
    bodies = texts(n)
    batched = served(f"{ROOT / 'examples' / 'textclass.py'}:pipe", bodies, args.clients, serial)
    single = served(f"{Path(__file__).resolve()}:unbatched", bodies, args.clients, 0)
    direct_ms = direct(bodies[:serial + 5])
    emit("serve", requests=n, clients=args.clients, batched=batched, unbatched=single,
         batching_speedup=batched["requests_per_s"] / single["requests_per_s"],
         direct_p50_ms=direct_ms, overhead_ms=batched["serial_p50_ms"] - direct_ms,
         ratio=direct_ms / batched["serial_p50_ms"],
         peer="the same stage functions called directly in one process")


if __name__ == "__main__":
    main()
