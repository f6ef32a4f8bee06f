# Two commands for a newcomer: `make demo` (set up, run the whole pipeline
# offline on the tiny preset) and `make test` (set up, run the test suite).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo demo-logos test bench
setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

# The offline demo: demo.yaml's overrides (tiny random-weight FLUX preset, the
# 212-icon sample snapshot, small sizes) as one DVC experiment, on a laptop CPU.
demo: setup
	. $(BIN)/activate && python -m iconforge.overrides demo.yaml | xargs -0 dvc exp run
	@echo "grid: samples/grid.png  vectors: samples/svg/  metrics: metrics/  MLflow UI: $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db"

# The logo demo: a synthetic 2,000-row logo parquet (the shard demo-logos.yaml names), then
# demo.yaml + demo-logos.yaml's overrides as one DVC experiment. `make demo` switches back.
demo-logos: setup
	. $(BIN)/activate && python -m iconforge.synthetic_logos --rows 2000 --params demo-logos.yaml
	. $(BIN)/activate && python -m iconforge.overrides demo.yaml demo-logos.yaml | xargs -0 dvc exp run
	@echo "grid: samples/grid.png  dataset: data/dataset/  metrics: metrics/"

test: setup
	. $(BIN)/activate && OMP_NUM_THREADS=1 python -m pytest -q tests
