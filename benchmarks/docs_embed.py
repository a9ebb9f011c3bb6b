"""Embedding chunks/s: conveyor's embed stage vs sentence-transformers alone.

Both embed the same chunks of about 1,000 characters with all-MiniLM-L6-v2
on the CPU. The peer is the plain call a user would write in one process,
``model.encode(texts, batch_size=32)`` on PyTorch using every core (model
loaded first, not timed). conveyor runs the ``embed`` stage exactly as
``build_pipeline(embed_gpus=0)`` declares it (one CPU and one thread per
worker, batches of 32, the default backend: ONNX Runtime on the CPU) over one
item per chunk; its time includes starting the workers and loading the model
in each (the ONNX export is cached before, as after any first run).
Target: ratio >= 0.9.
"""

from __future__ import annotations

import random

from docs_common import parse, report, run_pipeline, timed, workdir


def chunks(count: int, seed: int = 3) -> list[str]:
    from conveyor.docs.topics import TOPICS

    rng = random.Random(seed)
    sentences = [s for t in TOPICS.values() for s in t["sentences"]]  # type: ignore[union-attr]
    out = []
    for _ in range(count):
        text = ""
        while len(text) < 950:
            text += rng.choice(sentences) + " "
        out.append(text.strip())
    return out


def main() -> None:
    args = parse(__doc__)
    count = 8 if args.quick else 768
    import torch

    from conveyor import Item, Pipeline
    from conveyor.docs.embed import Embed
    from conveyor.docs.model import encode, load_model
    from conveyor.docs.pipeline import build_pipeline
    from conveyor.resources import detect_cpus

    root = workdir(args.keep)
    texts = chunks(count)
    cores = detect_cpus()
    torch.set_num_threads(max(1, int(cores)))
    load_model("cpu", backend="onnx")  # exports to the cache now if it is not there yet
    model = load_model("cpu", backend="torch")
    encode(model, texts[:8])  # warm up
    _, peer_s = timed(lambda: encode(model, texts, batch_size=32))
    model = None  # freed before the pipeline's workers load theirs

    declared = build_pipeline(embed_gpus=0)["embed"]
    pipe = Pipeline("bench-embed")
    pipe.stage(Embed, name="embed", cpus=declared.resources.cpus,
               threads=declared.resources.threads, ram=declared.resources.ram,
               batch_size=declared.batch_size)
    inputs = [Item(f"c{i:05d}", {"text": t}) for i, t in enumerate(texts)]
    ours_s = run_pipeline(pipe, inputs, root / "run")
    peer, ours = count / peer_s, count / ours_s
    report(benchmark="docs_embed", quick=args.quick, chunks=count,
           chars_per_chunk=round(sum(map(len, texts)) / count), cpus=cores, device="cpu",
           conveyor_chunks_per_s=round(ours, 2),
           peer=f"sentence-transformers alone, one process, torch threads={int(cores)}",
           backend="auto",
           peer_chunks_per_s=round(peer, 2), ratio=round(ours / peer, 3), target_ratio=0.9,
           conveyor_s=round(ours_s, 2), peer_s=round(peer_s, 2))


if __name__ == "__main__":
    main()
