"""Embedding chunks/s on the CPU: ONNX Runtime (float32, and int8 for the record) vs PyTorch.

One process, the same chunks of about 1,000 characters (docs_embed's), the
same single thread for every backend (what the ``embed`` stage pins each CPU
worker to), batches of 32, every model loaded and warmed up first (not
timed; the ONNX export, if not cached yet, neither). The backends take turns
for three rounds (one with ``--quick``) and each keeps its best round,
so that a burst of load on a shared machine hits one round, not one backend.
Figures: chunks/s by wall clock and by CPU time of this process (steadier on
a busy machine), each over PyTorch's, and the lowest cosine between a
backend's vector and PyTorch's for the same chunk (the quality bar is 0.99).
Also what an ``embed`` worker pays to start with each backend: a fresh
process runs ``Embed.setup()`` and one small batch; its seconds and peak RSS.

int8 is ``onnxruntime.quantization.quantize_dynamic`` of the float32 export
(per-channel weights, constant-weight MatMuls only); it is measured to show
why the backend keeps float32. Target for ONNX float32: ratio >= 1.0.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from typing import Any, Callable

from docs_common import parse, report, workdir

SETUP = """
import json, sys, time
start = time.perf_counter()
from conveyor.docs.embed import Embed
from conveyor.docs.model import encode
stage = Embed()
stage.setup()
encode(stage.model, ["a first batch"] * 4)
seconds = time.perf_counter() - start
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, from the forking parent.
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"backend": stage.backend, "s": seconds, "rss_mb": int(hwm.split()[1]) / 1024,
                  "torch": "torch" in sys.modules}))
"""


def worker_setup(backend: str) -> dict[str, Any]:
    """Seconds and peak RSS of a fresh CPU embed worker's setup with ``backend``."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "CONVEYOR_EMBED_BACKEND": backend,
           "CONVEYOR_THREADS": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", SETUP], env=env, capture_output=True,
                         text=True, check=True)
    record = json.loads(out.stdout.strip().splitlines()[-1])
    assert record["backend"] == backend, record
    return record


def main() -> None:
    args = parse(__doc__)
    count = 16 if args.quick else 256
    rounds = 1 if args.quick else 3
    threads = 1
    os.environ["CONVEYOR_THREADS"] = str(threads)  # what OnnxEncoder's session reads
    import onnxruntime as ort
    import torch
    from docs_embed import chunks
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from conveyor.docs.model import encode, load_model

    torch.set_num_threads(threads)
    texts = chunks(count)
    root = workdir(args.keep)
    models: dict[str, Any] = {"torch": load_model("cpu", backend="torch"),
                              "onnx": load_model("cpu", backend="onnx")}
    int8 = root / "model.int8.onnx"
    quantize_dynamic(str(models["onnx"].path), str(int8), weight_type=QuantType.QInt8,
                     per_channel=True, extra_options={"MatMulConstBOnly": True,
                                                      "DefaultTensorType": 1})
    models["onnx_int8"] = copy.copy(models["onnx"])
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    models["onnx_int8"].session = ort.InferenceSession(str(int8), options,
                                                       providers=["CPUExecutionProvider"])

    setup = {name: worker_setup(name) for name in ("torch", "onnx")}
    runs: dict[str, Callable[[], Any]] = {
        name: (lambda m=m: encode(m, texts, batch_size=32)) for name, m in models.items()}
    vectors = {name: run() for name, run in runs.items()}  # warm-up, and the vectors compared
    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for _ in range(rounds):
        for name, run in runs.items():
            w, c = time.perf_counter(), time.process_time()
            run()
            wall[name] = min(wall.get(name, 1e9), time.perf_counter() - w)
            cpu[name] = min(cpu.get(name, 1e9), time.process_time() - c)
    cosine = {name: round(float((vectors[name] * vectors["torch"]).sum(axis=1).min()), 4)
              for name in ("onnx", "onnx_int8")}
    rate = {name: count / s for name, s in wall.items()}
    cpu_rate = {name: count / s for name, s in cpu.items()}
    report(benchmark="docs_onnx", quick=args.quick, chunks=count, threads=threads,
           rounds=rounds, chars_per_chunk=round(sum(map(len, texts)) / count),
           conveyor_chunks_per_s=round(rate["onnx"], 2),
           peer="sentence-transformers on PyTorch, same process, same threads",
           peer_chunks_per_s=round(rate["torch"], 2),
           ratio=round(rate["onnx"] / rate["torch"], 3), target_ratio=1.0,
           cpu_ratio=round(cpu_rate["onnx"] / cpu_rate["torch"], 3),
           int8_chunks_per_s=round(rate["onnx_int8"], 2),
           int8_ratio=round(rate["onnx_int8"] / rate["torch"], 3),
           int8_cpu_ratio=round(cpu_rate["onnx_int8"] / cpu_rate["torch"], 3),
           min_cosine=cosine["onnx"], int8_min_cosine=cosine["onnx_int8"],
           worker_setup_s={k: round(v["s"], 2) for k, v in setup.items()},
           worker_rss_mb={k: round(v["rss_mb"]) for k, v in setup.items()},
           onnx_worker_imports_torch=setup["onnx"]["torch"],
           load_avg=round(os.getloadavg()[0], 1))


if __name__ == "__main__":
    main()
