# Everything a fresh machine needs: `make demo` restores a generated tape, `make test` tests.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test test-all clean bench-models bench-quality bench-pipeline bench-order bench-checkpoints bench-sizes bench-neural bench-encoder images browser

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

demo: setup
	mkdir -p demo
	$(PY) -m orchestrator.commands.demo demo/tape.mp4
	$(VENV)/bin/orchestrator submit demo/tape.mp4 -o demo/tape.restored.mp4 -y
	@echo "before: demo/tape.mp4   after: demo/tape.restored.mp4"

test: setup browser
	$(PY) -m pytest -m "not slow and not gpu" -q $(PYTEST_ARGS)

# The web page's test drives Debian's chromium; without it (not root, no apt) it skips.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "chromium not installed: the browser test will be skipped"; }

test-all: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) demo

bench-models: setup
	$(PY) -m bench.models

bench-quality: setup
	$(PY) -m bench.quality

bench-pipeline: setup
	$(PY) -m bench.pipeline

bench-order: setup
	$(PY) -m bench.order

bench-checkpoints: setup
	$(PY) -m bench.checkpoints

bench-sizes: setup
	$(PY) -m bench.sizes

# BENCH_ARGS="--device cuda" on a GPU; "--models tape,rvrt --frames 2" to limit it
bench-neural: setup
	$(PY) -m bench.neural $(BENCH_ARGS)

bench-encoder: setup
	$(PY) -m bench.encoder

images: setup
	$(PY) -m deploy.images
