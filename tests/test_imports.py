"""Importing conveyor stays light: no Ray, torch or FastAPI until a feature needs them."""

import subprocess
import sys


def test_import_conveyor_imports_no_heavy_dependency():
    code = ("import sys, conveyor, conveyor.cli.app; "
            "print(sorted(m for m in ('ray', 'torch', 'fastapi', 'sentence_transformers') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
