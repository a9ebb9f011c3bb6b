"""The dataset card: ``DEST/README.md``, what a reader of the dataset needs to know."""

from __future__ import annotations

import json
from typing import Any, Mapping


def dataset_card(manifest: Mapping[str, Any]) -> str:
    """A Hugging Face dataset card for an export described by ``manifest``."""
    p = manifest["parameters"]
    ext = "parquet" if manifest["format"] == "parquet" else "json"
    data = [s for s in manifest["shards"] if s["path"].startswith("data/")]
    langs = ", ".join(f"{lang} ({n})" for lang, n in manifest["languages"].items()) or "none"
    rejected = ", ".join(f"{why} ({n})" for why, n in manifest["rejected_by"].items()) or "none"
    rules = json.dumps(p.get("rules", {}), sort_keys=True)
    pattern = "data/train-*." + ("parquet" if ext == "parquet" else "jsonl")
    return f"""---
configs:
- config_name: default
  data_files:
  - split: train
    path: {pattern}
---

# {p.get("name", "dataset")}

Text extracted from a PDF collection (text layers with pypdfium2, scanned pages with
rapidocr), cleaned, filtered, deduplicated and written by `conveyor dataset`.

- **Documents**: {manifest["rows"]} kept in {len(data)} shard(s); {manifest["rejected"]}
  rejected (listed with their reasons under `rejected/`).
- **Languages**: {langs}.
- **Rejected by**: {rejected}.
- **Cleaning**: ftfy repair, NFC, soft hyphens and replacement characters removed,
  words broken at line ends joined, running headers, footers and page numbers removed,
  whitespace normalised. `page_offsets[i]` is where page `i + 1` starts in `text`.
- **Filters** (a document failing any is rejected): {rules}.
- **PII**: {p.get("pii", "redact")} (e-mail addresses, IP addresses and phone numbers
  become `<EMAIL>`, `<IP>`, `<PHONE>`; counts per row in `pii`).
- **Deduplication**: {p.get("dedupe", "fuzzy")}: exact (hash of the normalised text), then
  MinHash-LSH on word 5-grams, 20 bands x 8 rows, pairs checked at estimated Jaccard
  >= 0.8; one survivor per cluster (best quality, then most words, then id), the others
  rejected with `duplicate_of`.

## Features

`id`, `source`, `text`, `pages`, `page_offsets`, `lang`, `method` (text, ocr or
mixed), the quality signals (`words`, `mean_word_length`, `symbol_ratio`,
`alpha_fraction`, `stop_words`, `dup_line_fraction`, `top_2gram_fraction`,
`garbage_fraction`, `replacement_fraction`, `ocr_share`, `lang_score`) and `pii`.

## Loading

```python
from datasets import load_dataset
ds = load_dataset("{ext}", data_files="{pattern}", split="train")
```

`manifest.json` lists every shard with its rows, bytes and sha256.
"""
