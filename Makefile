# The two commands a fresh machine needs: `make demo` and `make test` (each sets up first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -e '.[cpu,dev]'
	# Only the tritonserver binary and python backend are used; --no-deps keeps pytriton's pins out.
	$(BIN)/python -m pip install --no-deps nvidia-pytriton==0.7.0
	# Real labelled photos (fashion-mnist) come from a Debian package, where apt can install it.
	@dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || ! command -v apt-get >/dev/null || \
		apt-get install -y -q dataset-fashion-mnist >/dev/null || \
		(apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null) || \
		echo "note: could not install dataset-fashion-mnist; the fashion-mnist dataset will say so"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/equiprobe demo

test: setup
	$(BIN)/python -m pytest -x -q

bench: setup
	$(BIN)/equiprobe bench serve

clean:
	rm -rf build .pytest_cache
