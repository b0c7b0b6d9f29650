# Two entry points on a fresh machine:  `make demo`  and  `make test`.
# Each creates its own virtual environment, installs torch first (pinned, so pip
# never pulls a multi-GB CUDA build by accident), then the package.
# GPU users: make demo TORCH_SPEC="torch==2.13.0" TORCH_INDEX="--index-url https://<your-wheel-index>"

PYTHON      ?= python3
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
DEMO_VENV   ?= .venv
DEMO_ARGS   ?=
TEST_VENV   ?= .venv-test

.PHONY: demo test bench clean

$(DEMO_VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/pip install --quiet --upgrade pip
	$(DEMO_VENV)/bin/pip install --quiet "$(TORCH_SPEC)" $(TORCH_INDEX)
	$(DEMO_VENV)/bin/pip install --quiet -e ".[ray,service]"
	touch $@

$(TEST_VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(TEST_VENV)
	$(TEST_VENV)/bin/pip install --quiet --upgrade pip
	$(TEST_VENV)/bin/pip install --quiet "$(TORCH_SPEC)" $(TORCH_INDEX)
	$(TEST_VENV)/bin/pip install --quiet -e ".[test,ray,service]"
	touch $@

demo: $(DEMO_VENV)/.installed
	OMP_NUM_THREADS=1 $(DEMO_VENV)/bin/python examples/service_demo.py $(DEMO_ARGS)

test: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/lint-imports
	$(TEST_VENV)/bin/mypy
	OMP_NUM_THREADS=1 RAY_AUTH_MODE=disabled $(TEST_VENV)/bin/python -m pytest

bench: $(DEMO_VENV)/.installed
	OMP_NUM_THREADS=1 $(DEMO_VENV)/bin/metatune bench hypergrad

clean:
	rm -rf $(DEMO_VENV) $(TEST_VENV)
