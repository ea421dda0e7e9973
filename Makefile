# The newcomer's commands: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fcos_d2-installed
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: setup test lint demo clean gpu-wheels gpu-check bench-check

setup: $(STAMP)

$(STAMP): setup.py tools/install_detectron2.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torchvision.ops" 2>/dev/null || $(PY) -m pip install $(TORCH)
	bash tools/install_detectron2.sh $(PY)
	$(PY) -m pip install -e ".[test]"
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q tests

# House rules (pyproject.toml): ruff's lint and its formatter, line length 100.
lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

demo: setup
	$(PY) tools/run_demo.py

# Before stopping, on an idle machine: fcos_d2 vs Detectron2's FCOS, interleaved, beside the
# last ratios in docs/benchmark/cpu.json (prints; never fails). Add ARGS=--record to append.
bench-check: setup
	$(PY) tools/bench_check.py $(ARGS)

# Wheels for a lent GPU machine (no network there; torch is already installed): carry .whl/.
gpu-wheels: setup
	PYTHON=$(PY) bash tools/offline_wheels.sh .whl 3.12

# On the GPU machine: bash tools/gpu_check.sh (results under $$OUT). Here: the CPU dry run.
gpu-check: setup
	PYTHON=$(PY) bash tools/gpu_check.sh --dry-run

clean:
	rm -rf output
