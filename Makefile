# The README's two entry points: `make run` (the main job: `affseg demo`, then `affseg bench --quick`)
# and `make test` (what CI runs). Each one
# creates .venv and installs affseg into it on first use, and rebuilds the extension when csrc/
# changes. `make bench` rewrites benchmarks/RESULTS.md.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.affseg-installed
SOURCES := setup.py pyproject.toml requirements.txt $(shell find csrc -type f 2>/dev/null)

.PHONY: run test bench gpu-check clean

$(STAMP): $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-build-isolation -e .
	touch $@

run: $(STAMP)
	$(VENV)/bin/affseg demo

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

# On a GPU machine, with its system python3 (torch + triton preinstalled, no network): build the CUDA
# extension, run the cuda and Triton tests, time every fused op; writes benchmarks/RESULTS-gpu.md.
gpu-check:
	python3 benchmarks/gpu_check.py

clean:
	rm -rf build *.egg-info affseg/_C*.so
