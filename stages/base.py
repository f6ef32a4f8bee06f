"""Stage base: params' model.* (+ data/dataset/train for the tiny preset's VAE) -> models/base.

Resolves the base model once, so train_lora, sample and evaluate use identical
weights: base.json names it, and for `tiny` the saved pipeline sits beside it
(its VAE trained on the train split when model.tiny_vae_steps > 0). Only
model.* and the train split rerun it: `dvc exp run -S train.rank=32` reuses it.
"""
from iconforge import paths
from iconforge.config import ModelConfig, load
from iconforge.errors import run_stage


def main() -> None:
    cfg = load(ModelConfig)
    # Imported only now, so a params typo is reported at once, not after seconds of torch/diffusers imports.
    from iconforge.flux.models import TINY, resolve_base
    from iconforge.tables import require

    require(paths.TRAIN_SPLIT)
    info = resolve_base(cfg, paths.BASE, paths.TRAIN_SPLIT)
    trained = info["kind"] == TINY and cfg.tiny_vae_steps
    print(f"base: {info['kind']} base {info['base']!r}"
          + (f", VAE trained {cfg.tiny_vae_steps} steps on {paths.TRAIN_SPLIT}" if trained else "")
          + f" -> {paths.BASE}")


if __name__ == "__main__":
    run_stage("base", main)
