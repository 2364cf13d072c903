# The two set-up commands of the README:
#   make book   install everything into .venv and build the book into _build/html
#   make test   install everything into .venv and run every check (what .ci/run calls)
SHELL  := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Offline data beside the checkout (CI and the development machines); elsewhere data are downloaded.
export GRADREG_DATA ?= $(if $(wildcard ../shared/data/MNIST),$(abspath ../shared/data),)

.PHONY: install book test clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e ".[book,test,cluster]" 2>&1 | { grep -v "^WARNING: Location" || true; }
	$(BIN)/python -c "import torch, gradreg; print('installed: torch', torch.__version__)"
	touch $@

install: $(VENV)/.installed

book: install
	bash tools/book_assets.sh   # the widget manager and RequireJS from npm (pinned), served by the book
	rm -rf _build/.jupyter_cache _build/html
	$(BIN)/jupyter-book build --all -W --keep-going .

test: install
	bash tools/check.sh

clean:
	rm -rf _build $(VENV)
