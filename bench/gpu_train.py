"""Benchmark LoRA training of a FLUX.1-dev-sized transformer (random weights) on one GPU.

    python bench/gpu_train.py                  # FLUX.1-dev sizes, 1024 px, bf16: needs an 80 GB GPU
    python bench/gpu_train.py --smoke          # the same code on a tiny config, on CPU, < 1 min
    python bench/gpu_train.py --runs a,b       # only some runs (names in the table)
    python bench/gpu_train.py --runs a-nf4-adamw8bit --memory-cap-gb 15   # as on a 16 GB card

Nothing is downloaded: the transformer (19 double + 38 single blocks, 3072 wide),
T5-XXL, CLIP-L and the VAE are built from their real configs with random weights.
Every run trains rank-16 LoRA, batch 1, bf16 mixed precision, through the
project's own pieces (iconforge.flux.train's setup functions prepare_transformer and
make_optimizer, its sigma sampling, batch order and seeds, its encode_data and encoding cache) and
reports seconds per step, images per second and peak GPU memory over
--steps timed steps after --warmup untimed ones:

  a          the project's train_lora path: latents and text embeddings cached once by
             encode_data, VAE and text encoders freed, only the transformer resident;
  b          the reference behaviour of diffusers' FLUX DreamBooth-LoRA script with
             per-image captions: VAE + CLIP-L + T5-XXL resident on the GPU and run at
             every step; same training settings as (a), so a/b isolates the caching;
  variants   (a) with one setting changed: gradient checkpointing off, fused / 8-bit
             AdamW, SDPA backend forced (math, efficient, flash), regional
             torch.compile of the transformer blocks, the narrower LoRA target presets;
  quantized  (a) on a quantized base (train.quantize: int8 torchao, nf4 bitsandbytes), loaded through
             the project's load_transformer from a saved copy of the random transformer, alone and
             with the other memory savers of the README's memory plan (8-bit AdamW).

Prints a markdown table and the a/b ratios; writes everything to --json.
Run (a) calls iconforge.flux.train's own `cached_batch` and `train_step`; run (b) builds its
batch online and feeds it through the same `flow_matching_inputs` and `train_step`.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from statistics import fmean, median

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline,  # noqa: E402
                       FluxTransformer2DModel)
from PIL import Image, ImageDraw  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel  # noqa: E402

from iconforge.atomic import write_json  # noqa: E402
from iconforge.config import ConfigError, TrainConfig, load  # noqa: E402
from iconforge.dataset.imagefolder import read_metadata, write_metadata  # noqa: E402
from iconforge.flux.latent_cache import MAX_SEQUENCE_LENGTH, load_image  # noqa: E402
from iconforge.flux.models import ALLOW_CPU_ENV  # noqa: E402
from iconforge.flux.quantize import load_transformer  # noqa: E402
from iconforge.paths import BASE_JSON  # noqa: E402
from iconforge.flux.tiny import FLUX_SCHEDULER, FLUX_VAE_SCALING, FLUX_VAE_SHIFT, clip_tokenizer, t5_tokenizer  # noqa: E402
from iconforge.flux.train import (Paths, StepContext, _seed, batch_indices, cached_batch, encode_data,  # noqa: E402
                                  flow_matching_inputs, make_optimizer, preflight, prepare_transformer,
                                  sample_sigmas, train_step)

# The real FLUX.1-dev transformer (diffusers' defaults + the guidance embedding of -dev).
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                guidance_embeds=True, axes_dims_rope=(16, 56, 56))
T5_XXL = dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, feed_forward_proj="gated-gelu",
              vocab_size=32128, relative_attention_num_buckets=32, relative_attention_max_distance=128)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              projection_dim=768, hidden_act="quick_gelu")
FLUX_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32)


@dataclass(frozen=True)
class Preset:
    transformer: dict
    t5: dict
    clip: dict
    vae: dict
    resolution: int
    images: int  # synthetic training icons


PRESETS = {
    "flux-dev": Preset(FLUX_DEV, T5_XXL, CLIP_L, FLUX_VAE, resolution=1024, images=8),
    # The same model classes at iconforge.flux.tiny's widths (transformer, T5, CLIP, VAE).
    "smoke": Preset(dict(FLUX_DEV, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                         joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6)),
                    dict(T5_XXL, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
                         relative_attention_num_buckets=8),
                    dict(CLIP_L, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         projection_dim=32),
                    dict(FLUX_VAE, block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4),
                    resolution=64, images=3),
}

SDPA = {"math": SDPBackend.MATH, "efficient": SDPBackend.EFFICIENT_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}


@dataclass(frozen=True)
class Run:
    name: str
    what: str
    online: bool = False  # (b): encode images and captions at every step
    checkpointing: bool | None = None  # None = params.yaml's train.gradient_checkpointing
    optimizer: str | None = None
    sdpa: str | None = None  # None = PyTorch's own choice
    compile: bool = False
    targets: str | None = None  # a train.targets preset; None = params.yaml's
    quantize: str = "none"  # train.quantize


RUNS = [
    Run("a", "iconforge train_lora: cached latents + embeddings, encoders freed"),
    Run("b", "reference: VAE + CLIP-L + T5-XXL resident, encode every step", online=True),
    Run("a-no-ckpt", "(a), gradient checkpointing off", checkpointing=False),
    Run("a-adamw-fused", "(a), AdamW fused=True", optimizer="adamw_fused"),
    Run("a-adamw8bit", "(a), bitsandbytes AdamW8bit", optimizer="adamw8bit"),
    Run("a-sdpa-math", "(a), SDPA forced to math", sdpa="math"),
    Run("a-sdpa-efficient", "(a), SDPA forced to mem-efficient", sdpa="efficient"),
    Run("a-sdpa-flash", "(a), SDPA forced to flash", sdpa="flash"),
    Run("a-compile", "(a), torch.compile of each transformer block", compile=True),
    Run("a-lora-attention", "(a), LoRA on image attention only (train.targets=attention)", targets="attention"),
    Run("a-lora-attention-text", "(a), LoRA on attention + text-stream projections", targets="attention_text"),
    Run("a-int8", "(a), base in int8 (train.quantize=int8, torchao)", quantize="int8"),
    Run("a-int8-adamw8bit", "(a), int8 base + AdamW8bit", quantize="int8", optimizer="adamw8bit"),
    Run("a-nf4", "(a), base in NF4 (train.quantize=nf4, bitsandbytes)", quantize="nf4"),
    Run("a-nf4-adamw8bit", "(a), NF4 base + AdamW8bit", quantize="nf4", optimizer="adamw8bit"),
]


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Create parameters directly in `dtype`: a 12B fp32 init would need 48 GB first."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build_encoders(p: Preset, device: str, dtype: torch.dtype) -> FluxPipeline:
    """VAE, CLIP-L and T5-XXL with random weights, as a FluxPipeline without transformer."""
    tok, tok2 = clip_tokenizer(), t5_tokenizer()
    with torch.device(device), default_dtype(dtype):
        torch.manual_seed(0)
        vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            latent_channels=16, scaling_factor=FLUX_VAE_SCALING, shift_factor=FLUX_VAE_SHIFT,
                            use_quant_conv=False, use_post_quant_conv=False, **p.vae)
        clip = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), max_position_embeddings=77,
                                            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                            pad_token_id=tok.pad_token_id, **p.clip))
        t5 = T5EncoderModel(T5Config(pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, **p.t5))
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER), vae=vae, text_encoder=clip,
                        tokenizer=tok, text_encoder_2=t5, tokenizer_2=tok2, transformer=None)


def build_transformer(p: Preset, device: str, dtype: torch.dtype) -> FluxTransformer2DModel:
    with torch.device(device), default_dtype(dtype):
        torch.manual_seed(0)
        return FluxTransformer2DModel(**p.transformer)


def make_dataset(split: Path, n: int, size: int) -> None:
    """n distinct flat icons with per-image captions, in the caption stage's imagefolder layout."""
    split.mkdir(parents=True)
    rows = []
    for i in range(n):
        im = Image.new("RGBA", (size, size), (0, 0, 0, 0))
        d = ImageDraw.Draw(im)
        c = ((60 * i) % 256, (110 + 40 * i) % 256, (200 - 30 * i) % 256, 255)
        d.ellipse((size // 8 + i, size // 8, size * 7 // 8, size * 7 // 8 - i), fill=c)
        d.rectangle((size // 3, size // 3, size // 2 + i, size // 2), fill=(255, 255, 255, 255))
        im.save(split / f"icon-{i}.png")
        rows.append({"file_name": f"icon-{i}.png", "text": f"bioicons style, icon number {i}, category {i % 3}"})
    write_metadata(split, rows)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def free(acc: Accelerator) -> None:
    acc.free_memory()  # drops the accelerator's references to prepared models and optimizers
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Bench:
    def __init__(self, args, preset: Preset, cfg: TrainConfig, work: Path):
        self.args, self.p, self.cfg, self.work = args, preset, cfg, work
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.dtype = torch.bfloat16
        self.acc = Accelerator(mixed_precision=cfg.mixed_precision)
        self.split, self.base, self.cache = work / "dataset/train", work / "base", work / "cache"
        self.saved = None  # the random transformer saved as a diffusers folder, for the quantized runs

    def saved_transformer(self) -> Path:
        """A diffusers folder holding build_transformer's weights (saved once, ~22 GiB at FLUX.1-dev size),
        which load_transformer reads like train_lora reads models/base."""
        if self.saved is None:
            self.saved = self.work / "transformer_base"
            build_transformer(self.p, self.device, self.dtype).save_pretrained(self.saved / "transformer")
            free(self.acc)
        return self.saved

    def prepare_data(self) -> dict:
        """Save the random encoders as the base (a local diffusers folder), make the icons,
        and let the project's encode_data encode them once, as train_lora does."""
        t = time.perf_counter()
        build_encoders(self.p, self.device, self.dtype).save_pretrained(self.base / "pipe")
        write_json(self.base / BASE_JSON, {"base": str(self.base / "pipe"), "kind": "local", "revision": ""})
        free(self.acc)
        make_dataset(self.split, self.p.images, self.p.resolution)
        save_s = time.perf_counter() - t
        t = time.perf_counter()
        self.rows = read_metadata(self.split)
        unused = self.work / "unused"
        paths = Paths(dataset=self.split, validation=self.split, base=self.base, lora=unused, lora_kohya=unused,
                      checkpoints=unused, run_json=unused, metrics=unused, loss_csv=unused, val_loss_csv=unused,
                      cache=self.cache)
        self.data = encode_data(self.cfg, paths, 1, torch.device(self.device))
        assert not self.data.skipped, self.data.skipped
        free(self.acc)
        return {"save_encoders_s": save_s, "build_cache_s": time.perf_counter() - t, "images": len(self.data.examples)}

    def measure(self, run: Run) -> dict:
        cfg = dataclasses.replace(self.cfg, optimizer=run.optimizer or self.cfg.optimizer,
                                  targets=run.targets or self.cfg.targets, quantize=run.quantize,
                                  gradient_checkpointing=self.cfg.gradient_checkpointing
                                  if run.checkpointing is None else run.checkpointing)
        if run.optimizer == "adamw8bit" or run.quantize != "none":
            preflight(cfg)  # ConfigError when bitsandbytes/torchao is missing or nf4 lacks CUDA: reported as skipped
        if run.sdpa == "flash" and self.device == "cuda" and torch.cuda.get_device_capability()[0] < 8:
            return {"status": "skipped: flash attention needs an Ampere or newer GPU"}
        encoders = None
        if run.online:  # (b): the encoders live on the GPU next to the transformer
            encoders = FluxPipeline.from_pretrained(self.base / "pipe", transformer=None, dtype=self.dtype)
            encoders.to(self.device)
        if run.quantize == "none":
            transformer = build_transformer(self.p, self.device, self.dtype)
        else:
            transformer = load_transformer(self.saved_transformer(), run.quantize, self.dtype).to(self.device)
        params = prepare_transformer(transformer, cfg)  # as train_lora's setup: frozen base, fp32 adapter
        if run.compile:
            transformer.compile_repeated_blocks(backend=self.args.compile_backend)
        scheduler = FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER)
        optimizer, lr_scheduler = make_optimizer(cfg, params)
        transformer, optimizer, lr_scheduler = self.acc.prepare(transformer, optimizer, lr_scheduler)

        res = self.cfg.resolution
        ctx = StepContext.build(cfg, (16, res // 8, res // 8), scheduler, True, self.device, self.dtype)  # VAE latent shape
        pixels = [load_image(self.split / r["file_name"], res) for r in self.rows] if run.online else None

        def from_cache(micro: int):
            """(a): iconforge.flux.train's own micro-batch, read from the latent / embedding cache."""
            return cached_batch(cfg, ctx, self.data.examples, self.data.cache, micro)

        @torch.no_grad()
        def online_batch(micro: int):
            """(b): VAE-encode the images and CLIP + T5-encode their captions on the GPU, every step."""
            g = torch.Generator().manual_seed(_seed(cfg.seed, 0, micro, 0))
            idx = batch_indices(cfg.seed, len(self.rows), micro, cfg.batch_size)
            px = torch.stack([pixels[i] for i in idx]).to(self.device, self.dtype)
            vc = encoders.vae.config
            x = (encoders.vae.encode(px).latent_dist.sample(g) - vc.shift_factor) * vc.scaling_factor
            embeds, pooled, _ = encoders.encode_prompt(prompt=[self.rows[i]["text"] for i in idx], prompt_2=None,
                                                       device=self.device, max_sequence_length=MAX_SEQUENCE_LENGTH)
            x = x.float().cpu()
            noise = torch.randn(x.shape, generator=g)
            return flow_matching_inputs(ctx, x, noise, sample_sigmas(cfg, len(idx), ctx.mu, scheduler, g), embeds, pooled)

        make_batch = online_batch if run.online else from_cache
        attention = sdpa_kernel([SDPA[run.sdpa]]) if run.sdpa else contextlib.nullcontext()
        transformer.train()
        sync(self.device)
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()  # the peak then counts weights, optimizer state and activations
        times, losses = [], []
        with attention:
            for step in range(self.args.warmup + self.args.steps):
                t = time.perf_counter()
                losses.append(train_step(self.acc, transformer, optimizer, lr_scheduler, params, ctx,
                                         make_batch(step), cfg.max_grad_norm))
                sync(self.device)
                times.append(time.perf_counter() - t)
        timed = times[self.args.warmup:]
        out = {"status": "ok", "seconds_per_step": fmean(timed), "median_seconds_per_step": median(timed),
               "images_per_s": cfg.batch_size / fmean(timed), "first_step_s": times[0],
               "trainable_params": sum(p.numel() for p in params), "final_loss": float(losses[-1]),
               "gradient_checkpointing": cfg.gradient_checkpointing, "optimizer": cfg.optimizer,
               "quantize": cfg.quantize,
               "target_modules": list(cfg.target_modules)}
        if self.device == "cuda":
            out["peak_allocated_gb"] = torch.cuda.max_memory_allocated() / 2**30
            out["peak_reserved_gb"] = torch.cuda.max_memory_reserved() / 2**30
        del transformer, optimizer, lr_scheduler, params, encoders, pixels
        return out

    def run(self, run: Run) -> dict:
        t = time.perf_counter()
        try:
            out = self.measure(run)
        except ConfigError as e:  # e.g. adamw8bit without bitsandbytes
            out = {"status": f"skipped: {e}"}
        except torch.OutOfMemoryError:
            out = {"status": "OOM"}
        except Exception as e:  # noqa: BLE001 - an unsupported variant is a result, not the end of the bench
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            out = {"status": f"failed: {type(e).__name__}: {first[:160]}"}
        free(self.acc)  # outside the except blocks: their traceback would keep the tensors alive
        out["wall_s"] = time.perf_counter() - t  # model build, warmup (compile) and timed steps
        return out


def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(results: dict[str, dict]) -> str:
    a = results.get("a", {})
    lines = ["| run | what | s/step | images/s | peak alloc GB | peak reserved GB | time vs a | memory vs a "
             "| LoRA params | status |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for run in RUNS:
        r = results.get(run.name)
        if r is None:
            continue
        t_ratio, m_ratio = (r[k] / a[k] if k in r and k in a else None
                            for k in ("seconds_per_step", "peak_allocated_gb"))
        lines.append(f"| {run.name} | {run.what} | {fmt(r.get('seconds_per_step'), '.3f')} "
                     f"| {fmt(r.get('images_per_s'), '.3f')} | {fmt(r.get('peak_allocated_gb'), '.1f')} "
                     f"| {fmt(r.get('peak_reserved_gb'), '.1f')} | {fmt(t_ratio, '.2f')} | {fmt(m_ratio, '.2f')} "
                     f"| {fmt(r.get('trainable_params'), ',')} | {r['status']} |")
    return "\n".join(lines)


def machine() -> dict:
    info = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.version.cuda,
            **{k: version(k) for k in ("diffusers", "transformers", "peft", "accelerate")},
            "cpu_count": os.cpu_count(), "load_average": os.getloadavg()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gb=props.total_memory / 2**30)
    with contextlib.suppress(Exception):
        info["bitsandbytes"] = version("bitsandbytes")
    with contextlib.suppress(Exception):
        info["torchao"] = version("torchao")
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny config on CPU: checks the script, measures nothing")
    ap.add_argument("--steps", type=int, help="timed steps per run (default 10, smoke 2)")
    ap.add_argument("--warmup", type=int, help="untimed steps first (default 3, smoke 1)")
    ap.add_argument("--runs", default="", help="comma-separated run names (default: all)")
    ap.add_argument("--compile-backend", help="torch.compile backend (default inductor; smoke eager: dynamo "
                                              "tracing, no code generation)")
    ap.add_argument("--memory-cap-gb", type=float, help="cap this process's GPU memory (GiB) to emulate a smaller "
                                                          "card: a run that needs more reports OOM")
    ap.add_argument("--json", type=Path, help="default bench/out/gpu_train.json (smoke: gpu_train.smoke.json)")
    args = ap.parse_args()
    args.steps = args.steps or (2 if args.smoke else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 3)
    args.compile_backend = args.compile_backend or ("eager" if args.smoke else "inductor")
    args.json = args.json or ROOT / "bench" / "out" / ("gpu_train.smoke.json" if args.smoke else "gpu_train.json")
    preset = PRESETS["smoke" if args.smoke else "flux-dev"]
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("gpu_train: no CUDA GPU here; run with --smoke to check the script on CPU")
    if args.memory_cap_gb and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.memory_cap_gb * 2**30 / total))
    if args.smoke:
        torch.set_num_threads(1)
        os.environ[ALLOW_CPU_ENV] = "1"  # the saved random encoders are a "local" base: allow CPU
    wanted = [r for r in RUNS if not args.runs or r.name in args.runs.split(",")]

    # params.yaml's train section is the real job; only the size follows the preset.
    cfg = dataclasses.replace(load(TrainConfig, ROOT / "params.yaml"), resolution=preset.resolution,
                              mixed_precision="bf16", batch_size=1, grad_accum=1, rank=16)
    t0 = time.perf_counter()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-gpu-train-") as tmp:
        bench = Bench(args, preset, cfg, Path(tmp))
        data = bench.prepare_data()
        print(f"encoders saved in {data['save_encoders_s']:.1f} s; build_cache encoded {data['images']} images + "
              f"captions once in {data['build_cache_s']:.1f} s", flush=True)
        for run in wanted:
            results[run.name] = r = bench.run(run)
            print(f"{run.name:<18} {r['status']:<8} " + (
                f"{r['seconds_per_step']:.3f} s/step" + (f", peak {r['peak_allocated_gb']:.1f} GB"
                                                         if "peak_allocated_gb" in r else "")
                if r["status"] == "ok" else ""), flush=True)

    meta = {**machine(), "preset": "smoke" if args.smoke else "flux-dev", "resolution": cfg.resolution,
            "rank": cfg.rank, "batch_size": cfg.batch_size, "mixed_precision": cfg.mixed_precision,
            "steps": args.steps, "warmup": args.warmup, "compile_backend": args.compile_backend,
            "memory_cap_gb": args.memory_cap_gb,
            "transformer": preset.transformer, "t5": preset.t5, **data, "total_s": time.perf_counter() - t0}
    a, b = results.get("a", {}), results.get("b", {})
    ratios = {}
    if a.get("status") == b.get("status") == "ok":
        ratios["time_a_over_b"] = a["seconds_per_step"] / b["seconds_per_step"]
        if "peak_allocated_gb" in a:
            ratios["peak_memory_a_over_b"] = a["peak_allocated_gb"] / b["peak_allocated_gb"]
    print(f"\n{meta['preset']} preset, {cfg.resolution} px, rank {cfg.rank}, batch {cfg.batch_size}, "
          f"{cfg.mixed_precision}, {args.steps} timed steps after {args.warmup} warmup; "
          f"{meta.get('gpu', 'CPU')}, torch {torch.__version__}, load {meta['load_average'][0]:.1f}\n")
    print(table(results))
    for k, v in ratios.items():
        print(f"\n{k}: {v:.3f}", end="")
    print(f"\n\ntotal {meta['total_s']:.0f} s -> {args.json}")
    write_json(args.json, {"meta": meta, "ratios": ratios, "runs": results})


if __name__ == "__main__":
    main()
