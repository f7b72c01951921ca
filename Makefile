# The two entry points: `make demo` (the main job) and `make test` (the suite). Both set up .venv first:
# torch is installed pinned, before anything else, so that pip takes the CPU build and never a CUDA one.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_VERSION := 2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench clean explorer

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -c requirements.lock -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) experiments/demo_pipeline.py

explorer: $(STAMP)
	G2INTERP_EXPLORER_RUNS=runs/demo $(PY) -m streamlit run apps/explorer.py

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check g2interp tests bench experiments apps

bench: $(STAMP)
	$(PY) bench/capture.py
	$(PY) bench/generate.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
