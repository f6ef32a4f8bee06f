"""Stage sample: every prompt through the bare base and the LoRA -> samples/ (+ grid to the training's MLflow run)."""
from pathlib import Path

from iconforge.config import CaptionConfig, SampleConfig, load
from iconforge.errors import run_stage

SAMPLES = Path("samples")
LORA_FILE = Path("models/lora/pytorch_lora_weights.safetensors")
RUN_JSON = Path("models/run.json")
VALIDATION = Path("data/dataset/validation/metadata.jsonl")


def main() -> None:
    cfg = load(SampleConfig)
    trigger = load(CaptionConfig).trigger  # dvc.yaml declares only caption.trigger: the template is not used
    # Imported only now, so a params typo is reported at once, not after ~15 s of torch/diffusers/mlflow imports.
    import mlflow

    from iconforge.atomic import atomic_dir
    from iconforge.models import BASE_DIR, load_pipeline
    from iconforge.sampling import build_prompts, pick_device, read_validation, render_base_and_lora, write_samples
    from iconforge.tracking import resume_run

    prompts = build_prompts(cfg, trigger, read_validation(VALIDATION))
    device, dtype = pick_device()
    pipe = load_pipeline(BASE_DIR, device, dtype)
    base, lora = render_base_and_lora(pipe, LORA_FILE, prompts, cfg)
    with atomic_dir(SAMPLES) as out:
        write_samples(out, prompts, base, lora, cfg)
    with resume_run(RUN_JSON):
        mlflow.log_artifact(str(SAMPLES / "grid.png"), artifact_path="samples")
    print(f"sample: {len(prompts)} prompts x (base, LoRA) on {device} -> {SAMPLES}/ (grid.png, svg/)")


if __name__ == "__main__":
    run_stage("sample", main)
