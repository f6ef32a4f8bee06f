"""Stage train_lora: data/dataset/{train,validation} + models/base -> models/lora, models/run.json,
metrics/train.json, metrics/loss.csv, metrics/val_loss.csv.

Trains the LoRA adapter on the base the base stage resolved (models/base/), resuming from models/checkpoints/
when an interrupted run with the same params left one there; a successful run
leaves models/checkpoints/ empty. `accelerate launch --num_processes N -m
stages.train_lora` trains with N processes (see README).
"""
from iconforge import paths
from iconforge.config import TrainConfig, load
from iconforge.errors import run_stage
from iconforge.tables import require


def main() -> None:
    train_cfg = load(TrainConfig)
    from iconforge.tracking import check_reachable, tracking_uri
    check_reachable(tracking_uri())  # a tracking server that is down: one line now, not after the setup
    require(paths.TRAIN_SPLIT, paths.VALIDATION_SPLIT)
    # Imported only now, so a params typo or a missing input is reported at once, not after ~10 s of
    # torch/diffusers imports.
    from iconforge.flux.models import read_base
    from iconforge.flux.train import Paths, make_accelerator, preflight, train

    preflight(train_cfg)
    acc = make_accelerator(train_cfg)
    base = read_base(paths.BASE)  # written by the base stage
    out = Paths(dataset=paths.TRAIN_SPLIT, validation=paths.VALIDATION_SPLIT, base=paths.BASE, lora=paths.LORA_FILE,
                lora_kohya=paths.LORA_KOHYA_FILE, checkpoints=paths.CHECKPOINTS, run_json=paths.RUN_JSON,
                metrics=paths.TRAIN_METRICS, loss_csv=paths.LOSS_CSV, val_loss_csv=paths.VAL_LOSS_CSV,
                cache=paths.repo_root() / train_cfg.cache_dir)  # queued experiments share the workspace's cache
    m = train(train_cfg, base, out, acc)
    acc.end_training()
    if m:
        print(f"train_lora: {m['steps']} steps on {m['train_images']} images, effective batch "
              f"{m['effective_batch_size']}, final loss {m['final_loss']:.4f}, {m['seconds_per_step']:.3f} s/step, "
              f"peak {m['peak_memory_mb']:.0f} MB -> {paths.LORA_FILE}")


if __name__ == "__main__":
    run_stage("train_lora", main)
