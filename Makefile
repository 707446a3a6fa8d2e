# make train [ARGS="model=ae trainer.max_epochs=3"]   — create .venv if needed, run python train.py
# make test  [PYTEST_ARGS="-k data"]                   — create .venv if needed, run the test suite
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: train test install clean-outputs

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

train: $(VENV)/.installed
	$(PY) train.py $(ARGS)

# pytest exits 5 when it collects no test: make treats that as a failure like any other.
# PYTEST_WORKERS processes share the tests file by file (pytest-xdist), each torch with one
# thread: two multi-threaded trainings on two cores run several times slower than one at a time.
PYTEST_WORKERS ?= 2
test: $(VENV)/.installed
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)
