PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install lock format test fit bench bench-accuracy clean

install: $(STAMP)

# Exactly the versions in requirements.lock (hashes checked), then the project itself; again only when they change.
# uv installs them: 51 s into an empty venv against 132 s for pip (2-core AMD EPYC, 2026-12-02), the longest step of
# `make test` from a fresh clone, and the project (editable) in 3 s against 11 s. uv reads no pip configuration: pip's
# wheel folders and extra indexes (local mirrors on some machines) are handed to it, every index may offer a pinned
# version (the hashes decide which file is right), and where uv cannot be had, pip installs the same files.
UV := uv==0.13.9
UV_FROM_PIP = UV_FIND_LINKS="$$(echo $$PIP_FIND_LINKS $$($(BIN)/python -m pip config get global.find-links 2>/dev/null) | tr ' ' ,)" \
	UV_EXTRA_INDEX_URL="$$($(BIN)/python -m pip config get global.extra-index-url 2>/dev/null)"
UV_INSTALL = $(UV_FROM_PIP) $(BIN)/uv pip install --python $(BIN)/python --quiet --native-tls --compile-bytecode \
	--index-strategy unsafe-best-match
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(UV) && $(UV_INSTALL) --require-hashes -r requirements.lock \
		&& $(UV_INSTALL) --no-deps -e . \
		|| { $(BIN)/python -m pip install --quiet --require-hashes -r requirements.lock \
		&& $(BIN)/python -m pip install --quiet --no-deps -e .; }
	touch $(STAMP)

# requirements.lock from pyproject.toml's ranges (every extra) and requirements.in's pins, for this machine's
# platform and Python (Linux x86-64, 3.11). Hashing the torch wheels makes this take several minutes.
lock: $(STAMP)
	$(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --all-extras --strip-extras --no-emit-index-url --no-emit-find-links \
		--output-file requirements.lock pyproject.toml requirements.in

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Every tier (README's Development section), after the system programs the tests drive (scripts/test-programs
# installs what is missing); the first pytest line is the quick edit loop. Two workers, a test file
# each at a time (module fixtures are built once), the longest files first (tests/conftest.py; --no-loadscope-reorder
# keeps that order, where xdist would send the files with the most tests first). The system tier runs on its own:
# with the in-process tiers beside it, or in one pytest run with them, the whole was slower here (README).
test: $(STAMP)
	scripts/test-programs
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -m "not system" -n 2 --dist loadfile --no-loadscope-reorder --durations=10
	$(BIN)/python -m pytest -m system -n 2 --dist loadfile --no-loadscope-reorder --durations=10

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
