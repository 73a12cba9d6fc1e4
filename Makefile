# Two commands on a fresh clone: `make serve` (install, then run on the embedded SQLite default)
# and `make test` (install with the test extras, then run the whole suite). .ci/run calls `make test`.
# `make flows` installs the service with Prefect (the flow commands, a worker) and runs nothing;
# `make stack` runs the whole stack locally (`billing dev`: API, Prefect, worker, PocketBase,
# mail sink, all from .env).
PYTHON ?= python3
VENV := .venv
PYPROJECT_SUM := $(shell cksum pyproject.toml | cut -d' ' -f1)
# `make serve` installs what the service runs on (SQLite, and PostgreSQL or Redis when
# configured); `make test` adds Prefect, PocketBase and the test tools, which serving never loads.
SERVE_STAMP := $(VENV)/.installed-serve-$(PYPROJECT_SUM)
FLOWS_STAMP := $(VENV)/.installed-flows-$(PYPROJECT_SUM)
TEST_STAMP := $(VENV)/.installed-test-$(PYPROJECT_SUM)
# The LiteLLM proxy is heavy and pins its own dependencies: it lives in its own virtualenv, used
# only by tests/integration/test_litellm_*.py, with the client's distribution (client-dist/)
# installed so the proxy can import client.litellm, and nothing of the server, so those tests
# fail if the callback comes to need it. Never 1.107.0 (a compromised release).
LITELLM_VERSION := 1.106.12
LITELLM_VENV := .venv-litellm
CLIENT_PYPROJECT_SUM := $(shell cksum client-dist/pyproject.toml | cut -d' ' -f1)
LITELLM_STAMP := $(LITELLM_VENV)/.installed-$(LITELLM_VERSION)-$(CLIENT_PYPROJECT_SUM)

.PHONY: serve test install flows stack litellm-proxy

install: $(TEST_STAMP)

$(SERVE_STAMP): KIND := serve
$(SERVE_STAMP): EXTRAS := postgres,redis
$(FLOWS_STAMP): KIND := flows
$(FLOWS_STAMP): EXTRAS := flows,postgres,redis
$(TEST_STAMP): KIND := test
$(TEST_STAMP): EXTRAS := test
$(SERVE_STAMP) $(FLOWS_STAMP) $(TEST_STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet --editable '.[$(EXTRAS)]'
	rm -f $(VENV)/.installed-$(KIND)-*
	touch $@

litellm-proxy: $(LITELLM_STAMP)

$(LITELLM_STAMP): client-dist/pyproject.toml
	$(PYTHON) -m venv --clear $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/pip install --quiet --upgrade pip
	$(LITELLM_VENV)/bin/pip install --quiet 'litellm[proxy]==$(LITELLM_VERSION)'
	$(LITELLM_VENV)/bin/pip install --quiet --editable ./client-dist
	touch $@

serve: $(SERVE_STAMP)
	$(VENV)/bin/billing serve

flows: $(FLOWS_STAMP)

# PocketBase and the mail sink (aiosmtpd) come with the test extra.
stack: $(TEST_STAMP)
	$(VENV)/bin/billing dev

test: $(TEST_STAMP) $(LITELLM_STAMP)
	$(VENV)/bin/python -m pytest
