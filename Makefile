VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= examples/mailrunner.yaml

.PHONY: run test lint bench screenshots clean

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[all,test]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/mailrunner serve -c $(CONFIG)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests examples bench scripts
	$(VENV)/bin/ruff format --check src tests examples bench scripts
	$(VENV)/bin/mypy --strict src

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/run.py

# docs/inbox.png and docs/message.png, from a fresh server in headless Debian Chromium
screenshots: $(STAMP)
	$(PY) scripts/screenshots.py

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
