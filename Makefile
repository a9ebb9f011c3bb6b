# The two commands a newcomer runs (see README.md):
#   make demo   create .venv, install, run the document pipeline on a generated sample corpus,
#               then build a dataset from it
#   make test   create .venv, install with test dependencies, run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The version set verified together (scripts/lock.sh writes it); pyproject.toml has lower bounds.
CONSTRAINTS := constraints.txt

.PHONY: demo test venv bench system-deps lock clean

# pip compiles an installed wheel's modules; an editable install leaves that to the
# first import, which a shell with PYTHONDONTWRITEBYTECODE=1 never does: every driver and
# worker process would compile conveyor from source (about 0.1 s each here). Up-to-date
# files are skipped, so this costs nothing when there is nothing to do.
venv: $(STAMP)
	$(PY) -m compileall -q conveyor

# torch first, pinned: 2.13.0 is the CPU build on disk; any other spec would pull
# gigabytes of CUDA packages. Everything else then finds its torch satisfied.
$(STAMP): pyproject.toml $(CONSTRAINTS) Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) --upgrade pip
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) torch==2.13.0
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e '.[docs,serve,ray,store,dataset,bench,dev]'
	$(PY) -m pip check
	touch $(STAMP)

demo: venv
	$(PY) -m conveyor.docs.demo runs/demo
	$(PY) -m conveyor.dataset.demo runs/dataset

system-deps:
	./scripts/system-deps.sh

test: venv system-deps
	$(PY) -m pytest -q

# The suite against the newest releases; constraints.txt rewritten only if it passes.
lock:
	./scripts/lock.sh

bench: venv
	for b in hetero cpu3 overhead first rerun memory groups killdriver dedupe dataset; do $(PY) benchmarks/$$b.py; done

clean:
	rm -rf $(VENV) .venv-latest runs .pytest_cache
