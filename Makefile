# Self-bootstrapping targets: each creates .venv on first use and reuses it afterwards.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo reproduce test lint install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lplr-train --gin_file=digits_fc_gd.gin --workdir=runs/demo
	@echo "Results: runs/demo (summary.json, metrics.jsonl, plots/, tb/)"

# The paper's three experiments on real data (13-20 min on 2 CPU cores; resumable: rerun it).
reproduce: $(STAMP)
	$(BIN)/lplr-reproduce --workdir=runs/reproduce
	@echo "Results: runs/reproduce/REPRODUCTION.md"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Two pytest workers, each taking whole test files (a file's fixtures are built once): 7-8
# min on 2 cores, against 13-15 min in one process (many tests wait on subprocesses).
test: lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests

clean:
	rm -rf $(VENV) runs .pytest_cache
