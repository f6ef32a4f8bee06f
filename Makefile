# Two commands for a newcomer: `make demo` (set up, run the whole pipeline
# offline on the tiny preset) and `make test` (set up, run the test suite).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo demo-logos test bench serve
setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt package-lock.json
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	npm ci --no-audit --no-fund --silent   # Vega for offline `dvc plots show` (.dvc/plots.html)
	touch $@

# The offline demo: demo.yaml's overrides (tiny FLUX preset with a VAE trained on the icons,
# the 212-icon sample snapshot, small sizes) as one DVC experiment, on a laptop CPU. One torch
# thread unless OMP_NUM_THREADS says otherwise: the tiny models gain nothing from more, and on a
# busy 2-core machine two threads per stage oversubscribe it.
demo: setup
	. $(BIN)/activate && export OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} && \
	python -m iconforge.overrides demo.yaml | xargs -0 dvc exp run
	@echo "grid: samples/grid.png  vectors: samples/svg/  metrics: metrics/  plots (loss, dataset): dvc plots show  MLflow UI: $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db"

# The logo demo: a synthetic 2,000-row logo parquet (the shard demo-logos.yaml names), then
# demo.yaml + demo-logos.yaml's overrides as one DVC experiment. `make demo` switches back.
demo-logos: setup
	. $(BIN)/activate && python -m iconforge.synthetic_logos --rows 2000 --params demo-logos.yaml
	. $(BIN)/activate && export OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} && \
	python -m iconforge.overrides demo.yaml demo-logos.yaml | xargs -0 dvc exp run
	@echo "grid: samples/grid.png  dataset: data/dataset/ (explored: data/eda/, metrics/eda.json, dvc plots show)  metrics: metrics/"

test: setup
	. $(BIN)/activate && OMP_NUM_THREADS=1 python -m pytest -q -n 2 --dist loadgroup tests

# The generation API and the web UI on the workspace's adapter (run `make demo` first), this machine only.
API_PORT ?= 8000
UI_PORT ?= 8501
serve: setup
	@. $(BIN)/activate; \
	python -m iconforge.serve --host 127.0.0.1 --port $(API_PORT) & api=$$!; \
	trap 'kill $$api 2>/dev/null' EXIT INT TERM; \
	until curl -sf http://127.0.0.1:$(API_PORT)/health >/dev/null; do kill -0 $$api || exit 1; sleep 1; done; \
	echo "API: http://127.0.0.1:$(API_PORT) (docs: /docs)   UI: http://127.0.0.1:$(UI_PORT)"; \
	ICONFORGE_API_URL=http://127.0.0.1:$(API_PORT) python -m streamlit run iconforge/serve/ui.py \
	  --server.address 127.0.0.1 --server.port $(UI_PORT) --server.headless true --browser.gatherUsageStats false
