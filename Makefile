# The two commands a newcomer runs (see README.md):
#   make demo   create .venv, install, run the demo pipeline on a generated sample corpus
#   make test   create .venv, install with test dependencies, run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: venv
	$(PY) examples/textstats.py runs/demo

test: venv
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
