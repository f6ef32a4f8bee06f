# Two commands for a newcomer: `make demo` (set up, run the whole pipeline
# offline on the tiny preset) and `make test` (set up, run the test suite).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench
setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt package-lock.json
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	npm ci --no-audit --no-fund --silent   # Vega for offline `dvc plots show` (.dvc/plots.html)
	touch $@

# The offline demo: demo.yaml's overrides (tiny random-weight FLUX preset, the
# 212-icon sample snapshot, small sizes) as one DVC experiment, on a laptop CPU.
demo: setup
	. $(BIN)/activate && python -m iconforge.overrides demo.yaml | xargs -0 dvc exp run
	@echo "grid: samples/grid.png  vectors: samples/svg/  metrics: metrics/  MLflow UI: $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db"

test: setup
	. $(BIN)/activate && OMP_NUM_THREADS=1 python -m pytest -q -n 2 --dist loadgroup tests
