# Two commands on a fresh machine with Python 3.11:
#   make demo   trains and evaluates the digits recipe on real speech (CPU, minutes), ending with a WER
#   make test   runs the whole test suite
# Both create (or reuse) the virtual environment .venv by themselves.

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test lint venv bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	bash tools/system_deps.sh demo
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash recipes/digits/run.sh

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(VENV)/bin/python tools/benchmark.py

clean:
	rm -rf $(VENV) recipes/*/exp recipes/*/data
