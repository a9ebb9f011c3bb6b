"""The ``embed`` stage: chunks in, vectors out, a batch at a time, model loaded once.

The model (all-MiniLM-L6-v2, or the one :meth:`Embed.using` names) is
loaded in :meth:`Embed.setup`, once per worker process, on the worker's
device and with the backend ``CONVEYOR_EMBED_BACKEND`` names (``auto``, the
default; ``torch``; ``onnx``: see :mod:`conveyor.docs.model`). Each output
records the model and the backend that embedded it, and the index the
backends of its chunks, so that :func:`conveyor.docs.search.search` embeds
queries with the same ones. Vectors do not travel as
JSON (384 floats are ~8 KB of text per chunk): each batch writes one
float32 ``.npy`` file under the first item's artifact folder, named by a
digest of the batch's texts so a rerun never overwrites a file other items
still point to, and each output carries the file and its row::

    {...chunk fields..., "vectors": "<path>.npy", "row": 3, "model": "...", "device": "cpu",
     "backend": "onnx"}
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from .model import MODEL_NAME, backend_of, encode, load_model, model_ref, pick_device

BACKEND_VAR = "CONVEYOR_EMBED_BACKEND"


def write_vectors(folder: Path, texts: list[str], vectors: Any) -> str:
    """Save a batch's vectors to a file named by its texts' digest; return the path."""
    import numpy as np

    h = hashlib.blake2b(digest_size=12)
    for text in texts:
        h.update(text.encode())
        h.update(b"\0")
    path = folder / f"vectors-{h.hexdigest()}.npy"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, vectors)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return str(path)


class Embed:
    """all-MiniLM-L6-v2 (or :attr:`model_id`) over batches of chunks; see the module
    docstring."""

    model_id = MODEL_NAME  # the model's reference, as conveyor.docs.model.model_ref gives it

    @classmethod
    def using(cls, model: str | None = None) -> type["Embed"]:
        """The stage embedding with ``model`` (None: the shipped MiniLM); raises
        :class:`~conveyor.docs.errors.ModelError` where it is not on this machine."""
        return type(cls.__name__, (cls,), {"model_id": model_ref(model)})

    def setup(self) -> None:
        self.device = pick_device()
        self.model = load_model(self.device, self.model_id,
                                backend=os.environ.get(BACKEND_VAR) or "auto")
        self.backend = backend_of(self.model)

    def __call__(self, chunks: list[dict[str, Any]], ctx: Any) -> list[dict[str, Any]]:
        texts = [c["text"] for c in chunks]
        vectors = encode(self.model, texts, batch_size=len(texts))
        path = write_vectors(ctx.item_dir(ctx.keys[0]), texts, vectors)
        return [{**c, "vectors": path, "row": i, "model": self.model_id, "device": self.device,
                 "backend": self.backend}
                for i, c in enumerate(chunks)]
