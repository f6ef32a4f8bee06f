# Two commands for a newcomer: `make demo` (set up, run the whole pipeline
# offline on the tiny preset) and `make test` (set up, run the test suite).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
SHARED ?= ../shared/bioicons

# The offline demo: the tiny random-weight FLUX preset on the 212-icon sample
# snapshot, at small sizes, so it runs on a laptop CPU in minutes.
DEMO_PARAMS := \
  -S 'fetch.url=$(SHARED)/bioicons-sample.tar.gz' \
  -S 'fetch.sha256=2e4efc52af36091c9cbdd235b8979ad4324e884ca028db0fac23b0fcfa0782bd' \
  -S 'rasterize.size=128' \
  -S 'model.base=tiny' \
  -S 'train.steps=30' -S 'train.resolution=64' -S 'train.batch_size=2' \
  -S 'train.mixed_precision=no' -S 'train.gradient_checkpointing=false' \
  -S 'train.checkpoint_every=10' -S 'train.lr=0.001' \
  -S 'sample.size=64' -S 'sample.steps=4' -S 'sample.num_val_prompts=2' \
  -S 'evaluate.max_real_images=32'

.PHONY: setup demo test bench
setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

demo: setup
	. $(BIN)/activate && dvc exp run -n tiny-demo $(DEMO_PARAMS)
	@echo "grid: samples/grid.png  vectors: samples/svg/  metrics: metrics/  MLflow UI: $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db"

test: setup
	. $(BIN)/activate && OMP_NUM_THREADS=1 python -m pytest -q tests
