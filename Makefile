# The README's two commands: `make run` (set up + start the app) and `make test` (set up + run the tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-requirements
PACKAGE_STAMP := $(VENV)/.installed-package
PORT ?= 8501

.PHONY: install browser run test test-fast lint bench

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	cp requirements.txt $(STAMP)

# the project itself, editable (`lsm` and `python -m lsm_core` from any folder); offline: no build isolation,
# the venv's own setuptools builds it, and the dependencies are requirements.txt's, installed just before
$(PACKAGE_STAMP): $(STAMP) pyproject.toml
	$(PY) -c "import setuptools" 2>/dev/null || $(PY) -m pip install --quiet setuptools
	$(PY) -m pip install -qq --no-deps --no-build-isolation -e .
	touch $(PACKAGE_STAMP)

install: $(PACKAGE_STAMP)

run: install browser
	$(PY) -m lsm_core serve --port $(PORT)

# Debian's chromium: it draws the figures downloaded as SVG, PDF and PNG (kaleido), and the browser tests run in
# it (root installs it; otherwise those downloads say so, the browser tests skip, and fail under CI=true)
browser:
	@test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } ; } || \
	  echo "chromium is not installed: figures download as HTML only, and browser tests skip (apt-get install chromium)"

# the linters and the type checker (configured in pyproject.toml): clean, or the tests do not run
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: install browser lint
	$(PY) -m pytest

# the tests not marked slow (a few minutes less; the browser, fault and load-like tests are slow)
test-fast: install lint
	$(PY) -m pytest -m "not slow"

bench: install
	$(PY) bench/throughput.py
	$(PY) bench/cells.py
	$(PY) bench/history.py
	$(PY) bench/results_page.py
	$(PY) bench/history_pages.py
	$(PY) bench/quality.py
	$(PY) bench/saliency.py
	$(PY) bench/load.py
	$(PY) bench/active.py
	$(PY) bench/composition.py
	$(PY) bench/formats.py
	$(PY) bench/first_model.py
