"""Stage card: the adapter's model card -> models/lora/README.md (Hugging Face format), with the
training images' credits (models/lora/ATTRIBUTION.md) and the sample grid (models/lora/grid.png)
beside it, so the folder a user takes away carries what the licenses ask for."""
from pathlib import Path

from iconforge import paths
from iconforge.atomic import write_bytes, write_text
from iconforge.config import CaptionConfig, FilterConfig, ModelConfig, TrainConfig, load, load_field
from iconforge.errors import InputError, run_stage
from iconforge.tables import read_json, require


def main() -> None:
    model, train = load(ModelConfig), load(TrainConfig)
    trigger = load_field(CaptionConfig, "trigger")
    dataset_source = load_field(FilterConfig, "dataset_source")
    from iconforge.dataset.shards import is_parquet
    from iconforge.evaluate.sampling import read_index
    from iconforge.flux.card import EVAL_FIELDS, TRAIN_FIELDS, describe_dataset, render
    from iconforge.tracking import read_run_json

    require(paths.ATTRIBUTION, paths.SAMPLES_GRID)
    scores = read_json(paths.EVAL_METRICS, required=("lora", "base"))
    for kind in ("lora", "base"):
        if not isinstance(scores[kind], dict) or any(f not in scores[kind] for f in EVAL_FIELDS):
            raise InputError(f"{paths.EVAL_METRICS}: {kind} lacks one of {', '.join(EVAL_FIELDS)}")
    dataset = describe_dataset(is_parquet(read_json(paths.SOURCE)), dataset_source)
    text = render(model, train, trigger, dataset, read_run_json(paths.RUN_JSON),
                  read_json(paths.TRAIN_METRICS, required=TRAIN_FIELDS), scores,
                  read_json(paths.DATA_METRICS, required=("dataset",)), read_index(paths.SAMPLES_INDEX))
    write_text(paths.CARD, text)
    for src, dest in ((paths.ATTRIBUTION, paths.CARD_ATTRIBUTION), (paths.SAMPLES_GRID, paths.CARD_GRID)):
        write_bytes(dest, Path(src).read_bytes())
    print(f"card: {paths.CARD} (+ {paths.CARD_ATTRIBUTION.name}, {paths.CARD_GRID.name})")


if __name__ == "__main__":
    run_stage("card", main)
