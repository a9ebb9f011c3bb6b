"""A stage in a Python environment of its own, and a stage that calls a native tool.

    pdftext (pdftotext, from Debian's poppler-utils) ──▶ words (six==1.16.0, its own venv)

The driver's environment has a newer ``six``; ``words`` declares
``requirements=["six==1.16.0"]``, so conveyor builds (once, then reuses from
``$CONVEYOR_CACHE``) a virtual environment with that version and runs the
stage's workers under its interpreter. Each output records the ``six``
version and the interpreter the worker actually ran with, and the driver
prints its own, so the difference is visible.

Run it with ``python examples/pinned_env.py RUN_DIR``: it writes two small
PDFs next to the run directory, runs the pipeline, and prints one JSON line
per document and one for the driver.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conveyor import Pipeline
from conveyor.tools import require

pipe = Pipeline("pinned_env")

SIX = "1.16.0"  # older than the driver's six: the two environments conflict


@pipe.stage(cpus=0.5)
def pdftext(path: str) -> dict:
    """The PDF's text, extracted by the ``pdftotext`` command-line tool."""
    tool = require("pdftotext", package="poppler-utils")
    out = subprocess.run([tool, "-q", path, "-"], capture_output=True, text=True, check=True)
    return {"path": path, "text": out.stdout.strip()}


@pipe.stage(after=pdftext, cpus=0.5, requirements=[f"six=={SIX}"])
def words(doc: dict) -> dict:
    """Counts words with the pinned ``six``, and reports what it ran with."""
    import six

    text = six.ensure_text(doc["text"])
    return {"path": doc["path"], "text": text, "words": len(text.split()),
            "six": six.__version__, "python": sys.executable}


def write_pdf(path: Path, text: str) -> None:
    """A one-page PDF showing ``text`` in Helvetica (enough for pdftotext)."""
    stream = f"BT /F1 18 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
               b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
               b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream)]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)
    path.write_bytes(bytes(out))


def main(run_dir: Path) -> int:
    import six

    corpus = run_dir.parent / "pdfs"
    corpus.mkdir(parents=True, exist_ok=True)
    texts = {"alpha.pdf": "Pinned environments keep old code running",
             "beta.pdf": "Native tools come from the system"}
    for name, text in texts.items():
        write_pdf(corpus / name, text)
    result = pipe.run([str(corpus / name) for name in texts], run_dir=run_dir)
    for _, value in sorted(result.outputs("words")):
        print(json.dumps({"stage": "words", **value}))
    for failure in result.failures():
        print(json.dumps({"failed": failure["stage"], "key": failure["key"],
                          "error": failure["error"]}))
    print(json.dumps({"stage": "driver", "six": six.__version__, "python": sys.executable}))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
