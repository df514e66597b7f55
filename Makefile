# The README's two commands: `make run` (set up + start the app) and `make test` (set up + run the tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-requirements
PORT ?= 8501

.PHONY: install run test bench

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	cp requirements.txt $(STAMP)

install: $(STAMP)

run: install
	$(PY) -m lsm_core serve --port $(PORT)

test: install
	$(PY) -m pytest

bench: install
	$(PY) bench/throughput.py
	$(PY) bench/cells.py
	$(PY) bench/history.py
