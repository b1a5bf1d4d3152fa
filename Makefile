# Two commands set everything up on a fresh machine:
#   make book   # builds the book (PROFILE=quick by default; smoke|quick|paper)
#   make test   # ruff, the unit tests, nbval over the notebooks and a smoke build of the book
# Both create .venv and install the package on first use.

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

.PHONY: book test unit nbval book-smoke lint venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

book: venv
	$(BIN)/chaosnb book --profile $(PROFILE)

test: lint unit book-smoke nbval

lint: venv
	$(BIN)/ruff check .

unit: venv
	$(BIN)/python -m pytest -q tests

# nbval re-executes the smoke-profile notebooks that book-smoke wrote (their runs now come from the cache)
# and compares the cells marked NBVAL_CHECK_OUTPUT (the key numbers) with the outputs papermill recorded.
nbval: venv
	$(BIN)/python -m pytest -q --nbval-lax -p no:cacheprovider _build/smoke/src/book

book-smoke: venv
	$(BIN)/chaosnb book --profile smoke --build-dir _build/smoke

clean:
	rm -rf _build
