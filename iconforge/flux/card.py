"""The adapter's model card: models/lora/README.md in the Hugging Face format.

YAML front matter (huggingface_hub's ModelCardData: base model, library, the base model's
license, tags, trigger, a widget image) and a body that says how the adapter was made
(params, data counts, the DVC experiment, git revision and MLflow run), how it scores, how to
load it, what it cannot do, and whose images it learned from (the icon library or a parquet
dataset such as the logos: data/source.json says which). Built only from pipeline files and
params, with no clock or machine in it, so the same inputs give the same bytes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from huggingface_hub import ModelCard, ModelCardData

from iconforge.config import ModelConfig, TrainConfig
from iconforge.dataset.attribution import CHANGES as ICON_CHANGES, PARQUET_CHANGES
from iconforge.dataset.licenses import LICENSES
from iconforge.flux.models import HUB, base_kind
from iconforge.paths import ADAPTER_FILE, GRID_PNG, KOHYA_FILE

# The base model's license, which the adapter inherits for use with it (hub id -> card fields).
BASE_LICENSES = {
    "black-forest-labs/FLUX.1-dev": dict(license="other", license_name="flux-1-dev-non-commercial-license",
                                         license_link="https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md"),
    "black-forest-labs/FLUX.1-schnell": dict(license="apache-2.0"),
}
# Read from the metrics files (stages/card.py requires them); timings are left out: they describe
# the machine and the run, not the adapter, and would change the card's bytes run to run.
TRAIN_FIELDS = ("steps", "effective_batch_size", "train_images", "skipped_images", "trainable_params", "final_loss")
EVAL_FIELDS = ("clip_score", "cmmd", "white_background_ratio", "palette_size")


HF_DATASETS = "https://huggingface.co/datasets/"


@dataclass(frozen=True)
class Dataset:
    """What the adapter learned from, in the card's words."""
    style: str  # "... in the style of <style>"
    images: str  # what one training image is, plural
    credit: str  # "Trained on N <images> of <credit>."
    changes: str  # how every image was modified (the licenses ask to say so)
    hub_id: str | None = None  # a Hugging Face dataset id, for the card's `datasets` field


def describe_dataset(parquet: bool, dataset_source: str) -> Dataset:
    """The bioicons library, or parquet shards from filter.dataset_source (a dataset's page)."""
    if parquet:
        # owner/name of https://huggingface.co/datasets/owner/name[/tree/main...]
        hub_id = ("/".join(dataset_source.removeprefix(HF_DATASETS).split("/")[:2])
                  if dataset_source.startswith(HF_DATASETS) else None)
        link = f"[{hub_id or dataset_source}]({dataset_source})" if dataset_source else "its parquet shards"
        return Dataset(f"the images of {link}", "images", link, PARQUET_CHANGES, hub_id)
    return Dataset("flat scientific icons of the [bioicons](https://bioicons.com) library", "icons", "bioicons",
                   ICON_CHANGES)


def _table(rows: list[tuple[str, object]]) -> str:
    return "\n".join(["| | |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows])


def _inception_lines(eval_metrics: dict) -> list[str]:
    """FID, KID and Inception Score, or why one is not reported (an eval.json from before them: nothing)."""
    info = eval_metrics.get("inception")
    if not info:
        return []
    if info["weights"] is None:
        return ["", "FID, KID and Inception Score were not computed: `evaluate.inception_weights` names no "
                    "weights file."]
    rows = []
    for key, name, fmt in (("fid", "FID (lower is closer)", ".2f"), ("kid", "KID (lower is closer)", ".4f"),
                           ("inception_score", "Inception Score", ".2f")):
        lora, base = eval_metrics["lora"].get(key), eval_metrics["base"].get(key)
        rows.append((name, f"not reported: {info['refused'][key]}" if lora is None or base is None
                     else f"LoRA {lora:{fmt}} / base {base:{fmt}}"))
    weights = ("the published weights" if info["standard_weights"]
               else "random weights" if info["weights"] == "random-init" else "non-standard weights")
    count = info["count"]
    return ["", f"On the FID Inception-v3 ({weights}), {count['lora']} samples per model against "
                f"{count['real']} held-out images:", "", _table(rows)]


def render(model: ModelConfig, train: TrainConfig, trigger: str, dataset: Dataset, run: dict, train_metrics: dict,
           eval_metrics: dict, data_metrics: dict, index: dict) -> str:
    """README.md's text from models/run.json, metrics/{train,eval,data}.json and samples/index.json."""
    licenses = BASE_LICENSES.get(model.base, dict(license="other"))
    prompts = [s["prompt"] for s in index["samples"]]
    on_hub = base_kind(model.base) == HUB
    data = ModelCardData(
        base_model=model.base if on_hub else None,
        library_name="diffusers", tags=["text-to-image", "diffusers", "lora", "flux", "template:sd-lora", "iconforge"],
        datasets=[dataset.hub_id] if dataset.hub_id else None, instance_prompt=trigger, widget=[{"text": p, "output": {"url": GRID_PNG}} for p in prompts[:1]], **licenses)
    # What the adapter learned from: the train split (validation images were only compared against).
    trained_on = {lic: c["train"] for lic, c in data_metrics["dataset"]["by_license"].items() if c["train"]}
    # A parquet dataset's license (filter.dataset_license) is not one of the icons': credit it to be safe.
    by_license = {lic: n for lic, n in trained_on.items() if lic not in LICENSES or LICENSES[lic].needs_attribution}
    smoke = bool(eval_metrics.get("smoke"))
    split = data_metrics["dataset"]["by_split"]
    example = prompts[0]
    lines = [
        f"# iconforge LoRA: {trigger}",
        "",
        f"A LoRA adapter for `{model.base}` that draws in the style of {dataset.style}. "
        f"Start prompts with the trigger phrase **`{trigger}`**.",
        "",
    ]
    if smoke:
        lines += [f"> **Test build.** {eval_metrics.get('note', '')}", ""]
    lines += [
        "![base vs LoRA, one row per prompt](grid.png)",
        "",
        "## Files",
        "",
        f"- `{ADAPTER_FILE}`: diffusers format (`transformer.<module>.lora_A/B.weight`); also what ComfyUI's "
        "and Forge's LoRA loaders read.",
        f"- `{KOHYA_FILE}`: the same weights in kohya's FLUX format (`lora_unet_*`, q/k/v fused).",
        f"- Both are saved at scale 1.0: the trained alpha / rank ({train.alpha:g} / {train.rank}) is folded into "
        "the weights, so every loader applies the trained strength at LoRA strength 1.0.",
        "",
        "## Use",
        "",
        "```python",
        "import torch",
        "from diffusers import FluxPipeline",
        "",
        f'pipe = FluxPipeline.from_pretrained("{model.base}", torch_dtype=torch.bfloat16).to("cuda")',
        f'pipe.load_lora_weights("path/to/this/folder", weight_name="{ADAPTER_FILE}")',
        f'image = pipe("{example}", num_inference_steps={index["steps"]}, guidance_scale={index["guidance"]:g}).images[0]',
        "```",
        "",
        f"ComfyUI / Forge: copy `{ADAPTER_FILE}` into `models/loras/`, load it with a LoRA loader node "
        f"(strength 1.0) after the FLUX model, and start the prompt with `{trigger}`.",
        "",
        "## Training",
        "",
        _table([("base", f"`{model.base}`" + (f" at `{model.revision}`" if model.revision else "")),
                ("steps", train_metrics["steps"]), ("effective batch size", train_metrics["effective_batch_size"]),
                ("training images", f"{train_metrics['train_images']} ({split['validation']} held out)"),
                ("skipped images", train_metrics["skipped_images"]),
                ("trainable parameters", f"{train_metrics['trainable_params']:,}"),
                ("final training loss", f"{train_metrics['final_loss']:.4f}"),
                ("DVC experiment", run.get("dvc_exp_name") or "(workspace run)"),
                ("git revision", f"`{run.get('git_commit') or 'unknown'}`"),
                ("MLflow run", f"`{run['run_id']}` (experiment `{run.get('experiment', '')}`)")]),
        "",
        "Settings (`params.yaml`, section `train`):",
        "",
        _table([(f"`train.{k}`", ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else v)
                for k, v in asdict(train).items() if k not in TrainConfig.operational()]),
        "",
        "## Evaluation",
        "",
        f"CLIP score (prompt alignment) and CMMD (distance to held-out real {dataset.images}; lower is closer), "
        "LoRA against the bare base on the same prompts and seeds:",
        "",
        _table([(m, f"LoRA {eval_metrics['lora'][m]:.3f} / base {eval_metrics['base'][m]:.3f}")
                for m in EVAL_FIELDS]),
        *_inception_lines(eval_metrics),
        "",
        "## Limitations",
        "",
        f"- Learned from {sum(trained_on.values())} {dataset.images}: expect their palette and line style, "
        "not photographic detail; text in images (a name, a label) is unreliable.",
        "- The traced SVGs are a vectorisation of the PNG, not hand-drawn paths.",
        "- Use with the base model is bound by the base model's license.",
        "",
        f"## Credits of the training {dataset.images}",
        "",
        f"Trained on {sum(trained_on.values())} {dataset.images} of {dataset.credit}. {sum(by_license.values())} of "
        "them require attribution (" + (", ".join(f"{lic}: {n}" for lic, n in sorted(by_license.items())) or "none")
        + "); every image, its author, license and source are listed in `ATTRIBUTION.md` beside this card. "
        f"All images were modified: {dataset.changes}.",
        "",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)).content
