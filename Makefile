# Two entry points (see README): `make run` (the main job) and `make test`. Both create .venv and
# install affseg into it on first use, and rebuild the extension when csrc/ changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.affseg-installed
SOURCES := setup.py pyproject.toml requirements.txt $(shell find csrc -type f 2>/dev/null)

.PHONY: run test bench clean

$(STAMP): $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-build-isolation -e .
	touch $@

run: $(STAMP)
	$(VENV)/bin/affseg info
	$(VENV)/bin/affseg example

test: $(STAMP)
	$(PY) -m pytest -q tests

clean:
	rm -rf build *.egg-info affseg/_C*.so
