# The two commands a fresh machine needs: `make demo` and `make test` (each sets up first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# libb64-0d is not data: perf_analyzer (tritonclient 2.51.0's binary, trainer/benchmarks/perf_analyzer.py) links libb64.so.0d.
DEBIAN_DATA := dataset-fashion-mnist opencv-doc mate-backgrounds gnome-backgrounds plasma-workspace-wallpapers \
	ukui-wallpapers lomiri-wallpapers lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 sway-backgrounds palapeli-data \
	gcompris-qt-data scratch kalzium-data tuxpaint-data gnome-control-center-data lxqt-themes fonts-noto-color-emoji libb64-0d

.PHONY: setup demo lint test test-fast bench architecture-map clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -e '.[all,cpu,dev]'
	# Only the tritonserver binary and python backend are used; --no-deps keeps pytriton's pins out.
	$(BIN)/python -m pip install --no-deps nvidia-pytriton==0.7.0
	# Real labelled photos (fashion-mnist) and the built-in corpus's photographs, screenshots and
	# illustrations (clients/corpus_manifest.json) come from Debian packages, where apt can install them.
	@missing=$$(for p in $(DEBIAN_DATA); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		(command -v apt-get >/dev/null && (DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing >/dev/null || \
		(apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing >/dev/null))) || \
		echo "note: could not install $$missing (apt-get install $$missing); the corpus and fashion-mnist datasets will name what is missing"; \
	fi
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/equiprobe demo

lint: setup
	$(BIN)/ruff check services clients trainer tests deploy

test: setup
	$(BIN)/python -m pytest -x -q

# The tests that start no Triton server (marker `server`, set in tests/conftest.py).
test-fast: setup
	$(BIN)/python -m pytest -x -q -m "not server"

bench: setup
	$(BIN)/equiprobe bench serve

# deploy/architecture.png, the README's map of the served models and the data flow.
architecture-map: setup
	$(BIN)/python deploy/architecture_map.py

clean:
	rm -rf build .pytest_cache
