# egc_lite: `make demo`, `make lab` and `make test` do all the set-up from a fresh clone.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.egc-installed
# Every package, transitive ones included, at an exact version with its hashes (`make lock`).
LOCK := requirements.lock
PIP_VERSION := 26.1.2
# The lock tool lives in its own small venv: it is not a dependency of the kit.
LOCK_VENV := .lock-tools
UV_VERSION := 0.13.9
LOCK_EXTRAS := --extra dev --extra lab
LOCK_TARGET := --python-version 3.11 --python-platform x86_64-manylinux_2_28
# The lock is for Linux x86_64; elsewhere (macOS, ARM) pip resolves pyproject.toml's ranges.
ifeq ($(shell uname -sm),Linux x86_64)
DEPS := -r $(LOCK)
else
DEPS := -e ".[dev,lab]"
endif
# Kodak and the training photos: the shared read-only copy when present, else the package
# downloads Kodak into ~/.cache/egc_lite on first use (`egc demo` uses its own image then).
SHARED_DATA := $(abspath ../shared/data)
EGC_DATA ?= $(if $(wildcard $(SHARED_DATA)/kodak/kodim01.png),$(SHARED_DATA),)
export EGC_DATA
export HF_HUB_OFFLINE ?= 1
LAB_ARGS ?=
LOCK_ARGS ?=

.PHONY: install demo lab test test-browser book lock clean

install: $(STAMP)

# The venv holds exactly the lock's versions (pip checks each file's hash), then the package
# itself, editable, without resolving anything again.
$(STAMP): $(LOCK) pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "pip==$(PIP_VERSION)"
	$(PY) -m pip install --quiet $(DEPS)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/egc demo --device cpu

# JupyterLab in notebooks/, with this venv's python3 kernel (and its widgets extension); as root
# (a container) JupyterLab refuses to start without --allow-root.
lab: $(STAMP)
	JUPYTER_PREFER_ENV_PATH=1 $(abspath $(VENV))/bin/jupyter lab --ServerApp.root_dir=$(abspath notebooks) \
		$(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

test: $(STAMP)
	EGC_PROGRESS=0 $(PY) -m pytest -q

# The notebooks executed with their default parameters and rendered as a static HTML site in book/
# (git-ignored): book/index.html links one page per notebook and the figures each run wrote (into
# book/figures, not the repository's figures/). About 10 minutes on one CPU thread.
# `make book BOOK_ARGS="--copy-figures figures"` also refreshes the committed figures/0N_*.png.
BOOK_DIR ?= book
BOOK_ARGS ?=
book: $(STAMP)
	EGC_PROGRESS=0 $(PY) -m egc_lite.evaluate.book $(BOOK_DIR) --notebooks notebooks $(BOOK_ARGS)

# The widget panels of notebooks 02, 03 and 04 in JupyterLab driven by headless Chromium
# (tests/test_widgets_browser.py, 1 to 2 minutes each). Installs what it needs: Debian's chromium with apt (root or sudo; Playwright's own
# browser download is not used) and the playwright package when the venv lacks it. Here a missing
# browser fails the test; in `make test` the same test skips when chromium or playwright is absent.
CHROMIUM ?= /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
test-browser: $(STAMP)
	test -x $(CHROMIUM) || ($(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends chromium)
	$(PY) -c "import playwright" 2>/dev/null || $(PY) -m pip install --quiet "playwright>=1.40"
	EGC_PROGRESS=0 EGC_REQUIRE_BROWSER=1 EGC_CHROMIUM=$(CHROMIUM) $(PY) -m pytest -q -rs tests/test_widgets_browser.py

# Regenerate requirements.lock from pyproject.toml after changing a dependency there; versions
# already in the lock are kept where they still fit (`make lock LOCK_ARGS=--upgrade` moves every
# package to its newest allowed release). Commit both files together. Hashes: pip verifies every
# file it installs against them (the wheels served by this machine's local mirrors match PyPI's).
lock:
	test -x $(LOCK_VENV)/bin/uv || ($(PYTHON) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/python -m pip install --quiet "uv==$(UV_VERSION)")
	$(LOCK_VENV)/bin/uv pip compile pyproject.toml $(LOCK_EXTRAS) $(LOCK_TARGET) --generate-hashes \
		--custom-compile-command "make lock" --quiet $(LOCK_ARGS) -o $(LOCK)

clean:
	rm -rf $(VENV) $(LOCK_VENV) .pytest_cache .hypothesis $(BOOK_DIR)
