# egc_lite: `make demo` and `make test` do all the set-up from a fresh clone.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.egc-installed
# Kodak and the training photos: the shared read-only copy when present, else the package
# downloads Kodak into ~/.cache/egc_lite on first use.
SHARED_DATA := $(abspath ../shared/data)
EGC_DATA ?= $(if $(wildcard $(SHARED_DATA)/kodak/kodim01.png),$(SHARED_DATA),)
export EGC_DATA
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip<26.2"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/egc demo --device cpu

test: $(STAMP)
	EGC_PROGRESS=0 $(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
