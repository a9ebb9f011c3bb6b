"""Sample documents and archives the document tests make, and the few ways they read a run.

Everything here is made on the spot (nothing shipped, nothing downloaded): PDFs from one
sentence each, zips from a mapping of member names to bytes.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

from conveyor import RunResult, open_run
from conveyor.docs.archives import expand_to, input_items
from conveyor.docs.corpus import text_pdf
from conveyor.docs.extract import extract
from conveyor.docs.pipeline import build_pipeline
from conveyor.docs.profile import inspect

OWLS = "Owls hunt at night using sharp hearing."
TIDES = "Tides rise and fall twice a day, pulled by the moon."
BEES = "Bees carry nectar back to the hive, where it slowly turns into honey."
GLACIERS = "Glaciers carve valleys as the ice flows slowly downhill under its own weight."

PDF_A = text_pdf([["Alpha document about glaciers and ice sheets."]])
PDF_B = text_pdf([["Beta document about lighthouses and their keepers."]])


def pdf(text: str) -> bytes:
    """A one-page PDF holding ``text`` and nothing else (no title line)."""
    return text_pdf([[text]], first_title=False)


def zipped(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    """A zip archive of ``members`` (name: bytes), in memory."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def expanded(source: Path, out: Path) -> dict[str, dict]:
    """The items ``expand`` makes of ``source`` (members written under ``out``), by key."""
    return {key: value for key, value in expand_to(str(source), out)}


def first_page(value: dict) -> str:
    """The text of the first page of an expanded item, read as the pipeline reads it."""
    return extract(inspect(value))["pages"][0]["text"]


def page_text(extracted: dict[str, Any]) -> str:
    """The text of every page of an ``extract`` output, joined."""
    return " ".join(page["text"] for page in extracted["pages"])


def ended(run_dir: Path) -> dict[tuple[str, str], Any]:
    """When each (stage, key) row last finished: a row run again ends later."""
    with open_run(run_dir) as result:
        return {(r["stage"], r["key"]): r["ended"] for r in result.ledger.rows()}


def rerun_rows(before: dict, after: dict) -> set[tuple[str, str]]:
    """The (stage, key) rows of ``after`` (from :func:`ended`) that ran since ``before``."""
    return {row for row in after if after[row] != before.get(row)}


def run_folder(folder: Path, run_dir: Path, **options: Any) -> RunResult:
    """The whole docs pipeline on the files under ``folder``, in the driver's process;
    ``options`` go to ``build_pipeline``."""
    return build_pipeline(embed_gpus=0, **options).run(
        input_items([str(folder)]), run_dir=run_dir, executor="inline")


def assert_failures(result: RunResult, folder: Path, equal: dict[tuple[str, str], str],
                    containing: dict[tuple[str, str], str]) -> None:
    """The run's failures, keyed by (stage, path under ``folder``), are those of ``equal``
    (with that error) and those of ``containing`` (an error that holds that text), no other."""
    failures = {(r["stage"], r["key"][len(str(folder)) + 1:]): r["error"]
                for r in result.failures()}
    assert failures == {**equal, **{key: failures.get(key) for key in containing}}
    for key, text in containing.items():
        assert text in failures[key], (key, failures[key])
