"""Stage card: the adapter's model card -> models/lora/README.md (Hugging Face format), with the
training icons' credits (models/lora/ATTRIBUTION.md) and the sample grid (models/lora/grid.png)
beside it, so the folder a user takes away carries what the licenses ask for."""
import shutil

from iconforge import paths
from iconforge.atomic import write_text
from iconforge.config import CaptionConfig, ModelConfig, TrainConfig, load, load_field
from iconforge.errors import run_stage
from iconforge.flux.card import render
from iconforge.tables import read_csv, read_json, require


def main() -> None:
    model, train = load(ModelConfig), load(TrainConfig)
    trigger = load_field(CaptionConfig, "trigger")
    require(paths.ATTRIBUTION, paths.SAMPLES_GRID)
    index = read_json(paths.SAMPLES_INDEX, required=("samples",))
    text = render(model, train, trigger, read_json(paths.RUN_JSON, required=("run_id",)),
                  read_json(paths.TRAIN_METRICS), read_json(paths.EVAL_METRICS), read_json(paths.DATA_METRICS),
                  [s["prompt"] for s in index["samples"]], read_csv(paths.CREDITS, ["license", "needs_attribution"]))
    write_text(paths.CARD, text)
    shutil.copyfile(paths.ATTRIBUTION, paths.CARD_ATTRIBUTION)
    shutil.copyfile(paths.SAMPLES_GRID, paths.CARD_GRID)
    print(f"card: {paths.CARD} (+ {paths.CARD_ATTRIBUTION.name}, {paths.CARD_GRID.name})")


if __name__ == "__main__":
    run_stage("card", main)
