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

.PHONY: install demo test test-fast bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(CURDIR)/.venv

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[dev]"
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
	$(VD) report $(DEMO)/dense $(foreach v,$(VARIANTS),$(DEMO)/$(v)) --profile $(DEMO)/profile.json --out $(DEMO)
	@echo; cat $(DEMO)/report.md

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	@for f in profiling/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(DEMO) build *.egg-info .pytest_cache
