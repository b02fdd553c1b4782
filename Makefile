# Two commands do all setup: `make demo` and `make test`. Each creates .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch: with an NVIDIA driver, the default (CUDA) build; without one, the CPU build, from a local wheel cache when pip
# is configured with one (find-links), else from PyTorch's CPU wheel index. A CUDA build on a CPU machine costs several GB.
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
STAMP := $(VENV)/.installed

.PHONY: demo test up down docs lock clean

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then \
		$(BIN)/python -m pip install --quiet "torch>=2.5"; \
	elif ! $(BIN)/python -m pip install --quiet --no-index --no-deps "torch==$(TORCH_VERSION)" 2>/dev/null; then \
		$(BIN)/python -m pip install --quiet --no-deps --index-url "$(TORCH_CPU_INDEX)" "torch==$(TORCH_VERSION)"; \
	fi
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

demo: $(STAMP)
	$(BIN)/maas demo

test: $(STAMP)
	$(BIN)/python -m pytest

# The local stack: Prefect UI on http://127.0.0.1:4200, a worker, every deployment, the bucket watcher.
up: $(STAMP)
	$(BIN)/maas up

down: $(STAMP)
	$(BIN)/maas down

docs: $(STAMP)
	$(BIN)/python -m maas.modules.reference > docs/configuration.md

# Rewrites constraints.txt from a working .venv (after changing pyproject's dependencies); torch stays out of it.
lock: $(STAMP)
	{ sed -n '1,2p' constraints.txt; $(BIN)/python -m pip freeze --all --exclude-editable | grep -v -E '^(torch|pip)=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) .maas
