# The two entry points of the README. Each creates the virtual environment from
# setup.cfg when it is missing or older than setup.cfg, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test test-fast clean-venv

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,parity]'
	# taming's VQGAN modules (the VQ parity reference) import with torch alone; its
	# declared dependencies would pull torchvision, lightning and CUDA wheels.
	$(PY) -m pip install --quiet --no-deps 'taming-transformers-rom1504==0.0.6'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m tasks.demo_main --out_dir=demo_out

# OFA_JAX_REQUIRE_PARITY=1: without the parity extra the suite fails, never skips
# the parity tests (tests/conftest.py), so CI cannot go green without them.
test: $(STAMP)
	OFA_JAX_REQUIRE_PARITY=1 $(PY) -m pytest -q -n 2 --dist loadfile --durations=25 $(PYTEST_ARGS)

test-fast: $(STAMP)
	OFA_JAX_REQUIRE_PARITY=1 $(PY) -m pytest -q -n 2 --dist loadfile -m "not slow" $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
