"""Stage sample: every prompt through the bare base and the LoRA -> samples/ (+ grid to the training's MLflow run)."""
from iconforge import paths
from iconforge.config import CaptionConfig, SampleConfig, load, load_field
from iconforge.errors import run_stage
from iconforge.tables import require


def main() -> None:
    cfg = load(SampleConfig)
    trigger = load_field(CaptionConfig, "trigger")  # prompts are wrapped as training captions were
    require(paths.LORA_FILE, paths.RUN_JSON, paths.VALIDATION_METADATA)
    # Imported only now, so a params typo or a missing input is reported at once, not after ~15 s of
    # torch/diffusers/mlflow imports.
    from iconforge.atomic import atomic_dir
    from iconforge.dataset.imagefolder import read_metadata
    from iconforge.evaluate.sampling import build_prompts, pick_device, render_base_and_lora, write_samples
    from iconforge.flux.models import load_pipeline
    from iconforge.tracking import check_run_store, read_run_json, resume_run

    run = read_run_json(paths.RUN_JSON)
    check_run_store(run)
    prompts = build_prompts(cfg, trigger, read_metadata(paths.VALIDATION_METADATA.parent))  # captions only
    device, dtype = pick_device()
    pipe = load_pipeline(paths.BASE, device, dtype)
    base, lora = render_base_and_lora(pipe, paths.LORA_FILE, prompts, cfg)
    with atomic_dir(paths.SAMPLES) as out:
        write_samples(out, prompts, base, lora, cfg)
    with resume_run(run, "sample") as tracker:  # samples/ is written whatever the store does
        tracker.log_artifact(paths.SAMPLES_GRID, "samples")
    print(f"sample: {len(prompts)} prompts x (base, LoRA) on {device} -> {paths.SAMPLES}/ (grid.png, svg/)")


if __name__ == "__main__":
    run_stage("sample", main)
