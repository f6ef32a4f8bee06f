"""The data contract: every path a stage reads or writes, defined once.

Paths are relative to the repository root, where DVC runs every stage; dvc.yaml
names the same paths as each stage's deps and outs (tests/test_contract.py
checks that the two agree). Library code takes paths as arguments; the stage
shells pass these. File names inside those folders that a reader must find
(the adapter, base.json, metadata.jsonl, ...) are defined here too.
"""
from __future__ import annotations

import os
from pathlib import Path

# Names of files inside the contract folders.
METADATA = "metadata.jsonl"  # an imagefolder split's captions, read by `datasets.load_dataset("imagefolder")`
ADAPTER_FILE = "pytorch_lora_weights.safetensors"  # the name diffusers' load_lora_weights looks for
KOHYA_FILE = "lora_kohya.safetensors"  # the same adapter in kohya's FLUX format
BASE_JSON = "base.json"  # which base model train_lora resolved (models/base/)
SPLITS = ("train", "validation")
INDEX_JSON = "index.json"  # samples/: every sample's prompt, seed and files
GRID_PNG = "grid.png"  # samples/: base vs LoRA contact sheet
DIGESTS_JSON = "digests.json"  # data/raster_cache/: the sha256 of each cached PNG (reused only when it matches)

# fetch
RAW = Path("data/raw")  # the archive's static/icons/ tree
MANIFEST = Path("data/manifest.csv")  # one row per extracted SVG
SOURCE = Path("data/source.json")  # what fetch extracted: archive sha256, top folder, upstream commit (bioicons),
# or {"source": "parquet", "shards": [...]}: what every later stage reads to know the dataset
# Downloaded parquet shards, kept outside DVC's outputs so a partial one resumes and a verified one is reused.
SHARD_CACHE = ".cache/shards"

# filter_license
FILTERED = Path("data/filtered.csv")  # kept icons with variant group and split
FILTER_REJECTS = Path("data/filter_rejects.csv")
CREDITS = Path("data/credits.csv")
ATTRIBUTION = Path("data/ATTRIBUTION.md")

# rasterize
PNG = Path("data/png")
RASTER_REJECTS = Path("data/raster_rejects.csv")
RASTER_BACKGROUNDS = Path("data/raster_backgrounds.csv")  # icons not drawn on white
RASTER_CACHE = Path("data/raster_cache")  # content-keyed renders, persisted across runs

# caption
DATASET = Path("data/dataset")  # Hugging Face imagefolder: <split>/<path>.png, .txt, metadata.jsonl
TRAIN_SPLIT = DATASET / "train"
VALIDATION_SPLIT = DATASET / "validation"
VALIDATION_METADATA = VALIDATION_SPLIT / METADATA
DATA_METRICS = Path("metrics/data.json")

# eda: what the dataset looks like (README: Explore the data)
EDA_METRICS = Path("metrics/eda.json")  # counts and summary statistics (`dvc metrics show`)
EDA_TABLES = Path("metrics/eda")  # pre-binned tables, drawn by dvc.yaml's top-level plots
EDA_LICENSE = EDA_TABLES / "license.csv"  # images per license
EDA_CATEGORY = EDA_TABLES / "category.csv"  # images per category
EDA_SPLIT = EDA_TABLES / "split.csv"  # images per split
EDA_CAPTION_CHARS = EDA_TABLES / "caption_chars.csv"  # histogram of caption lengths in characters
EDA_CAPTION_WORDS = EDA_TABLES / "caption_words.csv"  # ... in words
EDA_TOP_WORDS = EDA_TABLES / "top_words.csv"  # caption words without the template's boilerplate and stop words
EDA_TOP_BIGRAMS = EDA_TABLES / "top_bigrams.csv"
EDA_SOURCE_WIDTH = EDA_TABLES / "source_width.csv"  # source images before rasterize: SVG viewBox / raster header
EDA_SOURCE_HEIGHT = EDA_TABLES / "source_height.csv"
EDA_SOURCE_ASPECT = EDA_TABLES / "source_aspect.csv"  # width / height
EDA_PALETTE = EDA_TABLES / "palette_size.csv"  # colours covering 95% of an image (iconforge.evaluate.style)
EDA_BACKGROUND = EDA_TABLES / "background_share.csv"  # share of white background pixels
EDA_IMAGES = Path("data/eda")  # image plots
EDA_WORDCLOUD = EDA_IMAGES / "wordcloud.png"
EDA_CONTACT_SHEET = EDA_IMAGES / "contact_sheet.png"  # random training images

# train_lora
BASE = Path("models/base")
BASE_INFO = BASE / BASE_JSON
LORA = Path("models/lora")
LORA_FILE = LORA / ADAPTER_FILE
LORA_KOHYA_FILE = LORA / KOHYA_FILE
CHECKPOINTS = Path("models/checkpoints")  # resume state of an interrupted training
RUN_JSON = Path("models/run.json")  # the MLflow run that train_lora started and sample/evaluate log into
TRAIN_METRICS = Path("metrics/train.json")
LOSS_CSV = Path("metrics/loss.csv")
VAL_LOSS_CSV = Path("metrics/val_loss.csv")  # validation loss at fixed noise, every train.val_every steps

# sample
SAMPLES = Path("samples")
SAMPLES_INDEX = SAMPLES / INDEX_JSON
SAMPLES_GRID = SAMPLES / GRID_PNG

# evaluate
EVAL_METRICS = Path("metrics/eval.json")
EVAL_PER_PROMPT = Path("metrics/eval_per_prompt.csv")

# card: beside the adapter, what travels with it
CARD = LORA / "README.md"  # Hugging Face model card
CARD_ATTRIBUTION = LORA / ATTRIBUTION.name  # the training icons' credits
CARD_GRID = LORA / GRID_PNG

def inside(root: Path, rel: str) -> Path:
    """root/rel for a '/'-separated relative path read from a table (a CSV row names it): refused when
    absolute or climbing out with '..', so no row makes a stage read or write outside its folder."""
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts:
        raise ValueError(f"{rel}: path must be relative and stay inside {root}")
    return Path(root) / p


# Beside the pipeline, in the repository root: the default MLflow store and its artifacts.
MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"
MLFLOW_UNLOGGED = "mlflow-unlogged"  # what a stage could not log (store unreachable), until `python -m iconforge.tracking sync`


def repo_root() -> Path:
    """The repository a stage belongs to, also when DVC runs it in a throwaway copy.

    `dvc exp run --queue` and `--temp` run the stages in a copy under .dvc/tmp/exps/
    that DVC deletes afterwards; for every stage command DVC sets DVC_ROOT, which for
    those copies names the original repository. So the MLflow store and paths
    relative to the repo (fetch.url) resolve there, never inside the copy.
    Outside DVC it is the cwd (stages run from the repo root).
    """
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()
