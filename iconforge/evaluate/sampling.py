"""Render each prompt with the bare base model and with the LoRA, from the same seed.

Prompts are the user's (wrapped with the trigger phrase, as in training
captions) plus held-out validation captions, so the sheet shows both what a
scientist would ask for and icons the LoRA never saw. Seeds are `seed + index`
on a CPU generator, so a row's base and LoRA images start from the same noise
and a re-run redraws the same pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence, TypeVar

import torch
from PIL import Image
from tqdm import tqdm

from iconforge.atomic import write_json
from iconforge.config import SampleConfig
from iconforge.errors import InputError
from iconforge.tables import read_json
from iconforge.evaluate.grid import contact_sheet
from iconforge.evaluate.trace import png_bytes, trace_svg
from iconforge.paths import GRID_PNG, INDEX_JSON

if TYPE_CHECKING:  # diffusers is slow to import and evaluate needs only the helpers here
    from diffusers import FluxPipeline

LORA_ADAPTER = "iconforge"
T = TypeVar("T")


@dataclass(frozen=True)
class Prompt:
    text: str
    source: str  # "user" | "validation"
    seed: int


def with_trigger(trigger: str, prompt: str) -> str:
    """`trigger, prompt`: the caption template's leading trigger, as the LoRA learned it."""
    if not trigger or prompt.startswith(trigger):
        return prompt
    return f"{trigger}, {prompt}"


def evenly_spaced(items: Sequence[T], k: int) -> list[T]:
    """k items spread over the whole (sorted) sequence, not just its alphabetical head."""
    n = len(items)
    if k >= n:
        return list(items)
    return [items[i * n // k] for i in range(k)]


def build_prompts(cfg: SampleConfig, trigger: str, validation: list[dict]) -> list[Prompt]:
    captions = sorted({row["text"] for row in validation})
    texts = [(with_trigger(trigger, p), "user") for p in cfg.prompts]
    texts += [(c, "validation") for c in evenly_spaced(captions, cfg.num_val_prompts)]
    if not texts:
        raise InputError("no prompts: sample.prompts is empty and the validation split has no captions")
    return [Prompt(text, source, cfg.seed + i) for i, (text, source) in enumerate(texts)]


def pick_device() -> tuple[str, torch.dtype]:
    return ("cuda", torch.bfloat16) if torch.cuda.is_available() else ("cpu", torch.float32)


def render(pipe: FluxPipeline, prompts: list[Prompt], cfg: SampleConfig, desc: str) -> list[Image.Image]:
    pipe.set_progress_bar_config(disable=True)  # one bar over prompts instead of one per prompt
    images = []
    for p in tqdm(prompts, desc=desc, unit="img"):
        out = pipe(p.text, height=cfg.size, width=cfg.size, num_inference_steps=cfg.steps,
                   guidance_scale=cfg.guidance, generator=torch.Generator("cpu").manual_seed(p.seed))
        images.append(out.images[0])
    return images


def render_base_and_lora(pipe: FluxPipeline, lora_file: Path, prompts: list[Prompt],
                         cfg: SampleConfig) -> tuple[list[Image.Image], list[Image.Image]]:
    """Bare base first, then the same pipeline with the LoRA loaded: one set of base weights in memory."""
    base = render(pipe, prompts, cfg, "base")
    pipe.load_lora_weights(str(lora_file), adapter_name=LORA_ADAPTER)
    lora = render(pipe, prompts, cfg, "lora")
    return base, lora


def read_index(path: Path) -> dict:
    """samples/index.json, checked: every entry's prompt, seed and file names are what write_samples
    writes (`<kind>/NNN.png`), so no other file is opened because the index names it."""
    index = read_json(path, required=("samples", "size", "steps", "guidance"))
    samples = index["samples"]
    if not isinstance(samples, list) or not samples:
        raise InputError(f"{path}: samples must be a non-empty list")
    for i, s in enumerate(samples):
        files = {k: f"{k}/{i:03d}.{ext}" for k, ext in (("base", "png"), ("lora", "png"), ("svg", "svg"))}
        if not (isinstance(s, dict) and isinstance(s.get("prompt"), str) and isinstance(s.get("seed"), int)
                and s.get("files") == files):
            raise InputError(f"{path}: samples[{i}] is not an entry sample wrote (prompt, seed, files {files})")
    return index


def write_samples(out: Path, prompts: list[Prompt], base: list[Image.Image], lora: list[Image.Image],
                  cfg: SampleConfig) -> dict:
    """lora/NNN.png, base/NNN.png, svg/NNN.svg (traced LoRA sample), grid.png, index.json."""
    for sub in ("lora", "base", "svg"):
        (out / sub).mkdir(parents=True)
    entries = []
    for i, (p, base_img, lora_img) in enumerate(tqdm(list(zip(prompts, base, lora)), desc="write+trace", unit="img")):
        files = {"base": f"base/{i:03d}.png", "lora": f"lora/{i:03d}.png", "svg": f"svg/{i:03d}.svg"}
        (out / files["base"]).write_bytes(png_bytes(base_img))
        (out / files["lora"]).write_bytes(png_bytes(lora_img))
        (out / files["svg"]).write_text(trace_svg(lora_img), encoding="utf-8")
        entries.append({"index": i, "prompt": p.text, "source": p.source, "seed": p.seed, "files": files})
    sheet = contact_sheet([(p.text, b, lo) for p, b, lo in zip(prompts, base, lora)])
    (out / GRID_PNG).write_bytes(png_bytes(sheet))
    index = {"size": cfg.size, "steps": cfg.steps, "guidance": cfg.guidance, "samples": entries}
    write_json(out / INDEX_JSON, index)
    return index
