# make train [ARGS="model=ae trainer.max_epochs=3"]   — create .venv if needed, run python train.py
# make test  [PYTEST_ARGS="-k data"]                   — create .venv (and, as root, install SLURM) if needed, run the test suite
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: train test install slurm clean-outputs

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

train: $(VENV)/.installed
	$(PY) train.py $(ARGS)

# tests/test_slurm.py starts a throwaway SLURM cluster: it needs Debian's SLURM daemons and munge.
# As root on Debian (CI, the dev machines) they are installed here; elsewhere those tests are
# skipped, saying so (install them with: sudo apt-get install slurmctld slurmd slurm-client munge).
SLURM_PACKAGES ?= slurmctld slurmd slurm-client munge
slurm:
	@if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing SLURM and munge for the SLURM tests: $(SLURM_PACKAGES)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SLURM_PACKAGES) >/dev/null; \
	else echo "no SLURM here and not root: the SLURM tests will be skipped (apt-get install $(SLURM_PACKAGES))"; fi

# pytest exits 5 when it collects no test: make treats that as a failure like any other.
# PYTEST_WORKERS processes share the tests (pytest-xdist), each torch with one thread: two
# multi-threaded trainings on two cores run several times slower than one at a time. Tests go to
# whichever worker is free, except those marked xdist_group("<name>"), which share one worker:
# the SLURM tests (one test cluster) and those on a module's trained fixture.
PYTEST_WORKERS ?= 2
test: $(VENV)/.installed slurm
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)
