"""A small pipeline for a Ray cluster: CPU work, a GPU stage, and a reduce.

Each item records the host it ran on and, on the GPU stage, the device Ray
gave the actor, so the run shows where work went::

    conveyor run examples/slurm/pipeline.py:pipe --inputs-file inputs.txt \\
        --run-dir /shared/runs/demo --executor ray --address auto
    conveyor status /shared/runs/demo

Without a GPU in the cluster, give the GPU stage declared devices
(``--gpus 1`` on a one-machine Ray started with ``ray start --head --num-gpus 1``).
"""

import os
import socket

from conveyor import Pipeline

pipe = Pipeline("slurm-demo")


@pipe.stage(cpus=1)
def prepare(text: str) -> dict:
    """CPU work: runs on any node."""
    return {"text": text, "words": len(text.split()), "cpu_host": socket.gethostname()}


@pipe.stage(after=prepare, cpus=1, gpus=1, batch_size=8)
class Score:
    """GPU work: Ray places it on a node that advertises GPUs; the model loads once."""

    def setup(self) -> None:
        self.device = os.environ.get("CUDA_VISIBLE_DEVICES", "")  # set by Ray

    def __call__(self, docs: list[dict]) -> list[dict]:
        return [{**d, "score": d["words"] * 2, "gpu_host": socket.gethostname(),
                 "device": self.device} for d in docs]


@pipe.reduce(after=Score)
def summary(docs) -> dict:
    """One global view at the end, on any node."""
    docs = list(docs)
    return {"docs": len(docs), "score": sum(d["score"] for d in docs),
            "gpu_hosts": sorted({d["gpu_host"] for d in docs})}
