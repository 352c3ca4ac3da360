# The two set-up commands (see README): `make demo` runs the main job, `make test` runs the test suite.
# Both create or reuse the virtual environment in .venv and (re)install dogclf when pyproject.toml changes.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.dogclf-installed
export SAGEMAKER_SUPPRESS_V2_WARNING := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test docs install dist compat clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -e '.[all,test,docs]'
	touch $(STAMP)

install: $(STAMP)

# The main job; extra options through DEMO_ARGS, e.g. `make demo DEMO_ARGS=--tiny`.
DEMO_ARGS ?=
demo: $(STAMP)
	$(BIN)/python examples/workflow_local.py --out runs/demo $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q

docs: $(STAMP)
	$(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html

# The wheel and sdist, in dist/.
dist: $(STAMP)
	$(BIN)/python -m build --outdir dist .

# The training entry point and the inference handler on the SageMaker containers' versions (torch 2.5.1 / py3.11,
# torch 2.6.0 / py3.12), in throwaway venvs cached under ~/.cache/dogclf-compat (docs/install.rst).
compat: $(STAMP)
	$(BIN)/python tools/compat.py

clean:
	rm -rf $(VENV) docs/_build runs .pytest_cache .hypothesis dist build dogclf.egg-info
