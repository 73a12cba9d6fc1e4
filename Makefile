# Two commands on a fresh clone: `make serve` (install, then run on the embedded SQLite default)
# and `make test` (install with the test extras, then run the whole suite). .ci/run calls `make test`.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
# The LiteLLM proxy is heavy and pins its own dependencies: it lives in its own virtualenv, used
# only by tests/integration/test_litellm_*.py, with this project installed so the proxy can
# import client.litellm. Never 1.107.0 (a compromised release).
LITELLM_VERSION := 1.106.12
LITELLM_VENV := .venv-litellm
LITELLM_STAMP := $(LITELLM_VENV)/.installed-$(LITELLM_VERSION)-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: serve test install litellm-proxy

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet --editable '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

litellm-proxy: $(LITELLM_STAMP)

$(LITELLM_STAMP): pyproject.toml
	$(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/pip install --quiet --upgrade pip
	$(LITELLM_VENV)/bin/pip install --quiet 'litellm[proxy]==$(LITELLM_VERSION)'
	$(LITELLM_VENV)/bin/pip install --quiet --editable .
	rm -f $(LITELLM_VENV)/.installed-*
	touch $@

serve: $(STAMP)
	$(VENV)/bin/billing serve

test: $(STAMP) $(LITELLM_STAMP)
	$(VENV)/bin/python -m pytest
