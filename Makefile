# Set-up and everyday commands. Every target creates .venv first if needed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
VENV_PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
DEMO_OUTPUT ?= runs

.PHONY: install demo test test-slurm docs docs-serve lock clean

install: $(INSTALLED)

# Re-runs only when the lock or the packaging changes, so a second `make install` is a no-op.
$(INSTALLED): requirements.lock setup.py pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || \
	  { echo "tff_resume needs Python 3.11 (TensorFlow Federated 0.87 does not support $$($(PYTHON) --version))."; \
	    echo "Run: make PYTHON=/path/to/python3.11 ..."; exit 1; }
	test -x $(VENV_PYTHON) || $(PYTHON) -m venv $(VENV)
	$(VENV_PYTHON) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements.lock
	$(VENV_PYTHON) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

demo: $(INSTALLED)
	$(VENV_PYTHON) -m experiments.run_emnist --config=configs/demo.py --root_output_dir=$(DEMO_OUTPUT) --experiment_name=demo

# Three pytest workers on two cores, the slowest files first (tests/conftest.py); the suite is bound
# by CPU (241 tests in 881 s here on 2026-12-07; docs/development.md has the figures).
test: $(INSTALLED)
	$(VENV_PYTHON) -m pytest -n 3 --dist loadfile tests \
	  --ignore=tests/slurm_recipe_test.py

# The SLURM recipe on a private SLURM cluster of three nodes on this host (root; installs slurm-wlm
# and munge with apt when missing): about 11 minutes (634 s on 2026-12-07).
test-slurm: $(INSTALLED)
	$(VENV_PYTHON) -m pytest tests/slurm_recipe_test.py

# The documentation site, strictly (a warning fails: broken links, a config field without a comment, a
# public name without a docstring) into build/site; its tools are pinned in docs/requirements.txt and
# live in a venv of their own, apart from the runtime lock. docs-serve rebuilds it on every change.
DOCS_VENV := build/docs-venv
DOCS_INSTALLED := $(DOCS_VENV)/.installed

$(DOCS_INSTALLED): docs/requirements.txt
	test -x $(DOCS_VENV)/bin/python || $(PYTHON) -m venv $(DOCS_VENV)
	$(DOCS_VENV)/bin/pip install --quiet --disable-pip-version-check -r docs/requirements.txt
	touch $@

docs: $(DOCS_INSTALLED)
	NO_MKDOCS_2_WARNING=1 $(DOCS_VENV)/bin/mkdocs build --strict --clean

docs-serve: $(DOCS_INSTALLED)
	NO_MKDOCS_2_WARNING=1 $(DOCS_VENV)/bin/mkdocs serve --strict --dev-addr 127.0.0.1:8000 \
	  --watch configs --watch tff_resume

# Re-solves requirements.txt in a scratch environment and rewrites requirements.lock.
lock:
	rm -rf build/lock-venv && $(PYTHON) -m venv build/lock-venv
	build/lock-venv/bin/pip install --quiet -r requirements.txt
	build/lock-venv/bin/pip install --quiet --no-deps tensorflow-federated==0.87.0
	{ sed -n '1,3p' requirements.lock; build/lock-venv/bin/pip freeze | grep -v '^-e'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean:
	rm -rf $(VENV) build *.egg-info
