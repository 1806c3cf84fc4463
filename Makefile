# Two commands do everything: `make demo` and `make test`. Each creates/reuses .venv and installs first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export WANDB_MODE ?= offline

.PHONY: install test demo bench clean

# torch 2.14.1 + torchvision 0.29.1: a matching pair (the CUDA build; it also runs on CPUs). One venv
# serves the demo, the tests and the GPU cluster (~6 GB with torch's CUDA libraries).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[test,demo]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests -m "not gpu" $(PYTEST_ARGS)

# DVDP vs fixed resolution on CPU (~7 min on 2 cores after install); DEMO_ARGS e.g. "--inception /path/to/inception-2015-12-05.pt"
demo: $(STAMP)
	$(VENV)/bin/dvdp-hr demo --run-dir runs/demo $(DEMO_ARGS)

bench: $(STAMP)
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) bench/sampling_cost.py

clean:
	rm -rf $(VENV) .cache runs
