# Two entry points: `make test` (the README's test command) and `make demo` (the main job).
# Both create .venv on first use and install the package with what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# What is installed: the package and its dependencies (CORE: enough for `make demo`), plus the dense extra
# (DENSE: `make demo-dense`), plus everything the tests need (STAMP: `make test`, `make venv`). A demo on a fresh
# machine so installs only what it runs; a later `make test` adds the rest. DOCS: mkdocs and its plugins (`make docs`).
STAMP := $(VENV)/.datvit-installed
CORE := $(VENV)/.datvit-core
DENSE := $(VENV)/.datvit-dense
DOCS := $(VENV)/.datvit-docs
# Every install takes the tested versions pinned in constraints.txt (pyproject.toml only bounds the ranges).
PIP_INSTALL := $(PY) -m pip install -c constraints.txt

.PHONY: test test-fast lint demo venv clean bench fashion-mnist demo-dense docs

venv: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip >/dev/null

$(CORE): pyproject.toml constraints.txt | $(PY)
	$(PIP_INSTALL) -e .
	touch $(CORE)

$(DENSE): $(CORE)
	$(PIP_INSTALL) -e '.[dense]'
	touch $(DENSE)

$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PIP_INSTALL) -e '.[test]'
	touch $(STAMP) $(CORE) $(DENSE) $(DOCS)

# `make test`: the whole suite in one pytest process (what CI runs). It once crashed with SIGSEGV there: OpenVINO
# unmapped a signal stack a thread still used (fixed: datvit.preserve_signal_stack; tests/test_runtime.py).
test: $(STAMP)
	$(PY) -m pytest -q

# `make test-fast`: the tests not marked slow (tests/conftest.py lists the slow modules), for the edit-test loop;
# under two minutes on 2 cores. CI runs the whole suite.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# `make lint`: ruff's lint rules and format check (configured in pyproject.toml) over the code and the tests
lint: $(STAMP)
	$(PY) -m ruff check src tests
	$(PY) -m ruff format --check src tests

# `make demo`: a small DAT trained on Fashion-MNIST for a few minutes on CPU, evaluated on the 10,000 test
# images; checkpoint, curves and report.md in demo_output/fashion_mnist/. DEMO_ARGS go to `datvit train`
# (e.g. DEMO_ARGS='--epochs 1', or DEMO_ARGS='--data-dir DIR' for IDX files elsewhere).
DEMO_ARGS ?=

demo: $(CORE) fashion-mnist
	$(PY) -m datvit demo $(DEMO_ARGS)

# `make demo-dense`: Fashion-MNIST scenes (128×128, boxes + instance masks + semantic maps) written offline, then a
# DAT-nano Mask R-CNN and UperNet and the same two with a convnext_atto backbone trained a few minutes each;
# report.md with mAP, mIoU, curves and predictions in demo_output/dense/. DENSE_ARGS go to `datvit demo-dense`
# (e.g. DENSE_ARGS='--epochs 1', or '--data-dir DIR').
DENSE_ARGS ?=

demo-dense: $(DENSE) fashion-mnist
	$(PY) -m datvit demo-dense $(DENSE_ARGS)

# Fashion-MNIST comes from the Debian package dataset-fashion-mnist; install it when missing and possible.
FIND_FMNIST := $(PY) -c "from datvit.data.fashion_mnist import find_fashion_mnist; find_fashion_mnist()"
fashion-mnist: $(CORE)
	@case "$(DEMO_ARGS) $(DENSE_ARGS)" in *--data-dir*|*--fashion-mnist-dir*) exit 0;; esac; \
	$(FIND_FMNIST) 2>/dev/null && exit 0; \
	echo "Fashion-MNIST not found: installing the Debian package dataset-fashion-mnist"; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then SUDO=; \
	elif command -v apt-get >/dev/null && command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO=sudo; \
	else echo "cannot install it from here: run 'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu), or"; \
	  echo "make demo DEMO_ARGS='--data-dir DIR' with the four IDX files (add --dataset-download when online)"; exit 1; fi; \
	$$SUDO apt-get install -y dataset-fashion-mnist || { $$SUDO apt-get update && $$SUDO apt-get install -y dataset-fashion-mnist; }; \
	$(FIND_FMNIST)

bench: $(STAMP)
	$(PY) -m datvit bench

# `make docs`: the documentation site (mkdocs + Material; guides from docs/, the API reference from the
# docstrings) built with --strict into site/ — a broken link or a docstring that does not render fails it.
$(DOCS): $(CORE)
	$(PIP_INSTALL) -e '.[docs]'
	touch $(DOCS)

docs: $(DOCS)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) build site *.egg-info src/*.egg-info .pytest_cache
