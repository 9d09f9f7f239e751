# The two commands of the README's quick start. Both create/update a local virtual environment first.
#   make run    install, then run the default job (python -m refimpl.run)
#   make test   install, then check the architecture contracts (.importlinter) and run the test suite (what CI runs)
#   make bench  the microbenchmark suite at the goal shapes; rewrites docs/bench/ and the README's "What it costs"
#   make gpu-check OUT=dir   the CuPy backend on this machine's GPU: tests, goals, timings → dir/gpu_check.json
#                            (no install step: the python of GPU_PYTHON with CuPy; docs/backends.md)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
EXTRAS ?= numba,mlx,dev,sweep,tracking
comma  := ,
STAMP  := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: run test test-slow lint-imports bench gpu-check venv clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "refimpl needs Python >= 3.10, found " + sys.version.split()[0]'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed-*
	touch $@

run: $(STAMP)
	$(PY) -m refimpl.run

test: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache --no-logo
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m bench --size bench --threads 2 --readme

OUT        ?= runs/gpu-check
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))

gpu-check:
	PYTHON=$(GPU_PYTHON) bash bench/gpu_check.sh $(OUT)

lint-imports: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache --no-logo

test-slow: $(STAMP)
	$(PY) -m pytest -m "slow or not slow"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
