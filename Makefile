PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test fit bench bench-accuracy clean

install: $(STAMP)

# Re-install only when the dependency list changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

fit: $(STAMP)
	$(BIN)/python -m mnist_lightning fit --config configs/seed.yaml

clean:
	rm -rf build dist *.egg-info lightning_logs .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py

# The presets in configs/ over three seeds each: about 35 minutes on 2 cores, most of it configs/strong.yaml.
bench-accuracy: $(STAMP)
	$(BIN)/python benchmarks/accuracy.py
