# Two commands set everything up on a fresh machine:
#   make book   # builds the book (PROFILE=quick by default; smoke|quick|paper)
#   make test   # ruff, the unit tests, a smoke build of the book, the browser check of it, nbval
# Both create .venv and install the package on first use; `make test` also installs Debian's chromium
# (apt-get, as root) when /usr/bin/chromium is missing.

PYTHON ?= python3
VENV ?= .venv
PROFILE ?= quick
BIN := $(VENV)/bin
SHARED_DATA := $(abspath ../shared/data)
ifeq ($(CHAOSNB_DATA),)
ifneq ($(wildcard $(SHARED_DATA)),)
export CHAOSNB_DATA := $(SHARED_DATA)
endif
endif

CHROMIUM ?= /usr/bin/chromium

.PHONY: book test unit nbval book-smoke browser chromium lint venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

book: venv
	$(BIN)/chaosnb book --profile $(PROFILE)

test: lint unit book-smoke browser nbval

# headless Chromium for the browser check (driven by Playwright for Python, which uses this binary)
chromium:
	@test -x $(CHROMIUM) || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core; }

lint: venv
	$(BIN)/ruff check .

unit: venv chromium
	$(BIN)/python -m pytest -q tests

# nbval re-executes the smoke-profile notebooks that book-smoke wrote (their runs now come from the cache)
# and compares the cells marked NBVAL_CHECK_OUTPUT (the key numbers) with the outputs papermill recorded.
nbval: venv
	$(BIN)/python -m pytest -q --nbval-lax -p no:cacheprovider _build/smoke/src/book

book-smoke: venv
	$(BIN)/chaosnb book --profile smoke --build-dir _build/smoke

# every page of the smoke book opened in headless Chromium from the local files, every request beyond file:
# blocked: no JavaScript error, images loaded, math rendered, internal links resolve; screenshots for reviewers
browser: venv chromium
	$(BIN)/python -m chaosnb.book check _build/smoke/_build/html --screenshots _build/smoke/screenshots

clean:
	rm -rf _build
