"""Stage train_lora: data/dataset/train -> models/base, models/lora, models/run.json, metrics/train.json.

Resolves the base model (writing models/base/ so sample and evaluate load the
same weights), then trains the LoRA adapter, resuming from models/checkpoints/
when an interrupted run with the same params left one there.
"""
import sys

from iconforge.config import ConfigError, ModelConfig, TrainConfig, load


def main() -> None:
    model_cfg, train_cfg = load(ModelConfig), load(TrainConfig)
    # Imported only now, so a params typo is reported at once, not after ~10 s of torch/diffusers imports.
    from iconforge.latent_cache import DataError
    from iconforge.models import ModelError, resolve_base
    from iconforge.train import preflight, train

    try:
        preflight(train_cfg)
        base = resolve_base(model_cfg)
        m = train(model_cfg, train_cfg, base)
    except (ConfigError, ModelError, DataError) as e:
        sys.exit(f"train_lora: {e}")
    if m:
        print(f"train_lora: {m['steps']} steps on {m['train_images']} images, final loss {m['final_loss']:.4f}, "
              f"{m['seconds_per_step']:.3f} s/step, peak {m['peak_memory_mb']:.0f} MB -> models/lora")


if __name__ == "__main__":
    try:
        main()
    except ConfigError as e:
        sys.exit(f"train_lora: {e}")
