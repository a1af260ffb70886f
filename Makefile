# Two doors for a fresh machine: `make demo` (the main job on the bundled demo data) and
# `make test`. Both create .venv and install what they need; torch stays on the local CPU build
# through constraints.txt (GPU machines install the package without it and keep their CUDA torch).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export NO_ALBUMENTATIONS_UPDATE := 1
export RAY_USAGE_STATS_ENABLED := 0
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0

.PHONY: setup demo test lint bench clean browser gpu-check

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/neo demo --out runs/demo

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

# The shard-browser test drives Debian's chromium headless (no browser download is possible
# offline). Installed when missing and we may (root); otherwise that one test skips locally.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	  echo "note: chromium/chromedriver not installed; the browser test will skip"

lint: $(STAMP)
	$(BIN)/ruff check neo_data neo_model pipelines tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_pack.py

# One H100/H200, torch + transformers (no Ray), < 8 min: one JSON and a table
# (benchmarks/gpu_check.py; --dry-run runs the same code on CPU in the test suite).
gpu-check:
	PYTHONPATH=$(CURDIR) $(BIN)/python benchmarks/gpu_check.py --out runs/gpu_check

clean:
	rm -rf runs .pytest_cache
