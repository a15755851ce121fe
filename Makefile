# Set-up and everyday commands. `make run` and `make test` work on a fresh machine (Python 3.11 + venv).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: run test bench clean distclean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): setup.py $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

## run: install and start the node from conf/single.ini in the foreground (Ctrl-C stops it)
run: $(STAMP)
	mkdir -p data
	$(VENV)/bin/datastore-node --config conf/single.ini

## test: install with the test extra and run every test
test: $(STAMP)
	$(PY) -m pytest

## bench: benchmarks against real nodes; prints figures (see docs/BENCHMARKS.md)
bench: $(STAMP)
	$(PY) bench/run.py

clean:
	rm -rf data .pytest_cache build *.egg-info

distclean: clean
	rm -rf $(VENV)
