# Two commands do everything on a fresh machine: `make demo` (the full pipeline on the embedded digits data, CPU)
# and `make test`. Both create .venv/ in the repo when no virtual environment is active, and install into it.
PYTHON ?= python3
ifdef VIRTUAL_ENV
BIN := $(VIRTUAL_ENV)/bin
else
BIN := $(CURDIR)/.venv/bin
endif
STAMP := $(BIN)/.vitdeploy-installed
VD := $(BIN)/vitdeploy
DEMO ?= runs/demo
THREADS ?= 2

.PHONY: install demo test test-fast bench fashion-data clean

$(BIN)/python:
	$(PYTHON) -m venv $(CURDIR)/.venv

$(STAMP): pyproject.toml requirements/constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --upgrade pip -c requirements/constraints.txt
	$(BIN)/python -m pip install -c requirements/constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

VARIANTS := vtp-40 hybrid mcf mlp-magnitude

demo: $(STAMP)
	$(VD) train vit_digits --data digits --out $(DEMO)/dense
	for r in $(VARIANTS); do $(VD) compress $(DEMO)/dense --recipe $$r --data digits --out $(DEMO)/$$r || exit 1; done
	for v in dense $(VARIANTS); do \
	  $(VD) export $(DEMO)/$$v --precision fp32,fp16,int8 --calib-data digits --target cpu --out $(DEMO)/$$v/deploy || exit 1; done
	$(VD) eval $(DEMO)/dense/deploy --data digits --out '$(DEMO)/dense/eval.{precision}.json'
	for v in $(VARIANTS); do \
	  $(VD) eval $(DEMO)/$$v/deploy --data digits --reference $(DEMO)/dense/deploy --out "$(DEMO)/$$v/eval.{precision}.json" || exit 1; done
	$(VD) profile $(foreach v,dense $(VARIANTS),$(DEMO)/$(v)/deploy) --backend ort-cpu --batch 1,8 --threads $(THREADS) --iters 200 --op-profile 10 --out $(DEMO)/profile.json
	$(VD) report $(DEMO)/dense $(foreach v,$(VARIANTS),$(DEMO)/$(v)) --profile $(DEMO)/profile.json --out $(DEMO)/report
	@echo; cat $(DEMO)/report/report.md

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

FASHION_DIR := /usr/share/datasets/fashion-mnist

# The Fashion-MNIST benchmarks need the Debian package: installed here when we are root, otherwise one line says how.
fashion-data:
	@test -f $(FASHION_DIR)/t10k-labels-idx1-ubyte.gz || \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	  else echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist', or pass --data fashion-mnist:PATH"; exit 2; fi

BENCH_STAMP := $(BIN)/.vitdeploy-bench-installed
# the dense Fashion-MNIST model first: the other Fashion-MNIST benchmarks compress it
BENCH_ORDER := profiling/bench_fashion_dense.py $(filter-out profiling/bench_fashion_dense.py,$(sort $(wildcard profiling/bench_*.py)))

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -c requirements/constraints.txt -e ".[dev,bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) fashion-data
	@for f in $(BENCH_ORDER); do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(DEMO) build *.egg-info .pytest_cache
