# Two entry points (see README): `make demo` and `make test`. Both install everything first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: install demo test bench bench-quick clean-state

# torch first, pinned to the CPU build (2.13.0), so that nothing later pulls CUDA wheels.
$(VENV)/.installed: pyproject.toml
	@echo "installing torch 2.13.0 (CPU) and fedsilo with its dependencies into $(VENV) (about 2 minutes)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq torch==2.13.0
	$(PY) -m pip install -qq -e ".[test]"
	@touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/fedsilo demo-data examples/heart/federation.yaml
	$(VENV)/bin/fedsilo run examples/heart/federation.yaml

# two processes, one test file each at a time: the end-to-end files spend much of their time waiting
# on servers and subprocesses, and a file keeps its module-scoped servers to itself
test: install
	$(PY) -m pytest -n 2 --dist loadfile

bench: install
	$(PY) benchmarks/heart.py
	$(PY) benchmarks/heterogeneity.py
	$(PY) benchmarks/round_overhead.py

bench-quick: install
	$(PY) benchmarks/heart.py --quick
	$(PY) benchmarks/heterogeneity.py --quick
	$(PY) benchmarks/round_overhead.py --quick

clean-state:
	rm -rf .fedsilo
