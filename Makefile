# The two commands a newcomer runs (see README.md):
#   make demo   create .venv, install, run the document pipeline on a generated sample corpus
#   make test   create .venv, install with test dependencies, run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv bench system-deps clean

venv: $(STAMP)

# torch first, pinned: 2.13.0 is the CPU build on disk; any other spec would pull
# gigabytes of CUDA packages. Everything else then finds its torch satisfied.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[docs,serve,ray,dev]'
	touch $(STAMP)

demo: venv
	$(PY) -m conveyor.docs.demo runs/demo

system-deps:
	./scripts/system-deps.sh

test: venv system-deps
	$(PY) -m pytest -q

bench: venv
	for b in hetero cpu3 overhead first rerun memory; do $(PY) benchmarks/$$b.py; done

clean:
	rm -rf $(VENV) runs .pytest_cache
