# Two commands do all set-up on a fresh machine:
#   make app    -> virtualenv + dependencies + demo (built once) + dashboard
#   make test   -> virtualenv + dependencies + the whole test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: app serve test test-fast bench lint format demo clean-venv

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	# torch first, from its pin: anything else first would pull a multi-GB CUDA build
	$(BIN)/pip install -q $$(head -n 1 requirements.txt)
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP) lint
	$(BIN)/python -m pytest -n 2 --dist loadscope -q -p no:cacheprovider --durations=25 $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadscope -q -m "not slow" $(PYTEST_ARGS)

app: $(STAMP)
	$(BIN)/streamlit run app/main.py

# a team server: refuses a non-loopback ADDRESS unless sign-in is configured (README, "Deploying for a team")
ADDRESS ?= 127.0.0.1
PORT ?= 8501
serve: $(STAMP)
	$(BIN)/python -m app.serve --address $(ADDRESS) --port $(PORT)

demo: $(STAMP)
	$(BIN)/deref demo --out assets/demo

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_model.py --json

# formatting and lint are part of `make test` (CI fails on drift); `make format` fixes both
lint: $(STAMP)
	$(BIN)/ruff format --check deref app tests benchmarks
	$(BIN)/ruff check deref app tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format deref app tests benchmarks
	$(BIN)/ruff check --fix deref app tests benchmarks
