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

demo: $(STAMP)
	$(VD) train vit_digits --data digits --out $(DEMO)/dense
	$(VD) compress $(DEMO)/dense --recipe mlp-magnitude --data digits --out $(DEMO)/mlp-magnitude
	$(VD) export $(DEMO)/dense --precision fp32 --out $(DEMO)/dense/deploy
	$(VD) export $(DEMO)/mlp-magnitude --precision fp32 --out $(DEMO)/mlp-magnitude/deploy
	$(VD) eval $(DEMO)/dense/deploy --data digits --out $(DEMO)/dense/eval.json
	$(VD) eval $(DEMO)/mlp-magnitude/deploy --data digits --reference $(DEMO)/dense/deploy --out $(DEMO)/mlp-magnitude/eval.json
	$(VD) profile $(DEMO)/dense/deploy $(DEMO)/mlp-magnitude/deploy --backend ort-cpu --batch 1,8 --threads $(THREADS) --iters 200 --out $(DEMO)/profile.json
	$(VD) report $(DEMO)/dense $(DEMO)/mlp-magnitude --profile $(DEMO)/profile.json --out $(DEMO)
	@echo; cat $(DEMO)/report.md

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	@for f in profiling/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(DEMO) build *.egg-info .pytest_cache
