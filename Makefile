# Two commands do all setup: `make demo` and `make test`. Each creates .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU torch where there is no NVIDIA driver (a CUDA build is several GB); users with a GPU get the default build.
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
STAMP := $(VENV)/.installed

.PHONY: demo test up down docs clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
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
	$(BIN)/python -m modules.reference > docs/configuration.md

clean:
	rm -rf $(VENV) .maas
