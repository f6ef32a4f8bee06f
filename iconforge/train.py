"""Flow-matching LoRA training of the FLUX transformer (the published FLUX recipe).

Per step: cached VAE latent x (scaled, 16 channels), noise n, sigma s drawn by
the timestep scheme and shifted for the image's token count like FLUX's
sampler (mu from `calculate_shift`), noisy = (1 - s) x + s n, and the
transformer, fed packed 2x2 latents, their position ids, the cached text
embeddings (empty caption with probability caption_dropout) and the guidance
embedding, predicts the velocity n - x (MSE loss). Only the LoRA weights train.

Every random draw of a step comes from a generator seeded by (seed, step), and
the data order is a function of (seed, epoch), so a run resumed from a
checkpoint ends byte-identical to an uninterrupted one.

Under `accelerate launch --num_processes N` each process draws its own shard of
every step (batch_indices(rank, world)) and DDP averages the gradients, so one
optimizer step sees batch_size * grad_accum * N images. The main process alone
encodes the data set and writes files and the MLflow run; the others wait for
it and read what it wrote (the repo must be on a filesystem all processes see).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

import mlflow
import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, broadcast_object_list, gather_object
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from diffusers.optimization import get_scheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from diffusers.training_utils import cast_training_params, compute_density_for_timestep_sampling
from tqdm import tqdm

from . import tracking
from .atomic import write_json
from .checkpoint import Checkpoint, clear_checkpoints, latest_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import ConfigError, ModelConfig, TrainConfig
from .errors import StageError
from .latent_cache import MAX_SEQUENCE_LENGTH, DataError, Example, build_cache, load_entry, read_metadata
from .lora_io import adapter_state, add_lora, load_adapter_state, save_adapter
from .models import model_source
from .tables import write_csv

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
LOG_EVERY = 10  # steps per MLflow batch write
# The other processes wait in a collective while the main one downloads the base (~30 GB) and
# encodes the data set: far longer than NCCL's default 10 min timeout.
SETUP_TIMEOUT = timedelta(hours=2)


class LaunchError(StageError, RuntimeError):
    """The processes were not started the way accelerate needs; the message says what to do."""


@dataclass(frozen=True)
class Paths:
    dataset: Path = Path("data/dataset/train")
    base: Path = Path("models/base")
    lora: Path = Path("models/lora")
    checkpoints: Path = Path("models/checkpoints")
    run_json: Path = tracking.RUN_JSON
    metrics: Path = Path("metrics/train.json")
    loss_csv: Path = Path("metrics/loss.csv")

    @property
    def cache(self) -> Path:
        return self.checkpoints / "cache"


def preflight(cfg: TrainConfig) -> None:
    """Settings this machine cannot run, refused before any work."""
    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.mixed_precision: fp16 needs a CUDA GPU; use bf16 or no on CPU, got 'fp16'")
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise ConfigError("train.optimizer: adamw8bit needs the bitsandbytes package "
                              "(pip install bitsandbytes), which is not installed") from None


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """This process's Accelerator; under `accelerate launch` it joins the other processes."""
    acc = Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum,
                      kwargs_handlers=[InitProcessGroupKwargs(timeout=SETUP_TIMEOUT)])
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if acc.num_processes != launched:  # e.g. --multi_gpu without CUDA: N unaware copies would each write
        raise LaunchError(f"{launched} processes were launched but accelerate joined {acc.num_processes}; "
                          f"without CUDA set ACCELERATE_USE_CPU=1 to train on CPU processes (gloo)")
    return acc


def _seed(*parts: int) -> int:
    """A 64-bit seed mixed from integers (numpy's SeedSequence), e.g. (seed, step)."""
    return int(np.random.SeedSequence([p & 0xFFFFFFFFFFFFFFFF for p in parts]).generate_state(1, np.uint64)[0])


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, n: int, epoch: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(_seed(seed, 1, epoch))).tolist()


def batch_indices(seed: int, n: int, micro: int, batch: int, rank: int = 0, world: int = 1) -> list[int]:
    """Example indices of micro-batch `micro` on process `rank`: a fresh shuffle each epoch."""
    first = (micro * world + rank) * batch
    return [_epoch_order(seed, n, p // n)[p % n] for p in range(first, first + batch)]


def sample_sigmas(scheme: str, n: int, mu: float, scheduler: FlowMatchEulerDiscreteScheduler,
                  g: torch.Generator) -> torch.Tensor:
    """Noise levels in (0, 1): t from the scheme, shifted towards noise for large images like FLUX's sampler."""
    if scheme == "uniform":
        t = torch.rand(n, generator=g)
    elif scheme == "sigmoid":  # sigmoid of a standard normal
        t = torch.sigmoid(torch.randn(n, generator=g))
    else:  # logit_normal, diffusers' SD3/FLUX weighting with mean 0, std 1
        t = compute_density_for_timestep_sampling("logit_normal", n, logit_mean=0.0, logit_std=1.0, generator=g)
    return scheduler.time_shift(mu, 1.0, t.clamp(1e-5, 1.0))


def make_optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw8bit":
        import bitsandbytes as bnb  # checked by preflight
        return bnb.optim.AdamW8bit(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=cfg.optimizer == "adamw_fused")


def params_hash(model_cfg: ModelConfig, cfg: TrainConfig, base_info: dict, examples: list[Example],
                world: int) -> str:
    """What a checkpoint must match to be resumed: every input of the math (not checkpoint_every)."""
    train = {k: v for k, v in asdict(cfg).items() if k != "checkpoint_every"}
    blob = json.dumps({"model": asdict(model_cfg), "train": train, "base": base_info, "world": world,
                       "data": [asdict(e) for e in examples]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _stack(entries: list[dict], name: str) -> torch.Tensor:
    return torch.stack([e[name].float() for e in entries])


@dataclass(frozen=True)
class StepContext:
    """What every micro-batch of one run shares: latent geometry (c, h, w), FLUX's sigma
    shift mu for that token count, and the position ids, guidance, device and dtype."""
    c: int
    h: int
    w: int
    mu: float
    scheduler: FlowMatchEulerDiscreteScheduler
    img_ids: torch.Tensor
    txt_ids: torch.Tensor
    guidance: torch.Tensor
    device: torch.device
    dtype: torch.dtype

    @classmethod
    def build(cls, cfg: TrainConfig, latent_shape: tuple[int, int, int], scheduler: FlowMatchEulerDiscreteScheduler,
              device: torch.device, dtype: torch.dtype) -> StepContext:
        c, h, w = latent_shape
        sc = scheduler.config
        mu = calculate_shift((h // 2) * (w // 2), sc.base_image_seq_len, sc.max_image_seq_len, sc.base_shift,
                             sc.max_shift)
        return cls(c, h, w, mu, scheduler, FluxPipeline._prepare_latent_image_ids(None, h // 2, w // 2, device, dtype),
                   torch.zeros(MAX_SEQUENCE_LENGTH, 3, device=device, dtype=dtype),
                   torch.full((cfg.batch_size,), cfg.guidance, device=device, dtype=torch.float32), device, dtype)


def noisy_inputs(cfg: TrainConfig, ctx: StepContext, x: torch.Tensor, embeds: torch.Tensor, pooled: torch.Tensor,
                 g: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Clean latents x -> (packed noisy latents, sigma, embeds, pooled, packed velocity target)."""
    n = len(x)
    noise = torch.randn(x.shape, generator=g)
    s = sample_sigmas(cfg.timestep_sampling, n, ctx.mu, ctx.scheduler, g)
    noisy = (1 - s[:, None, None, None]) * x + s[:, None, None, None] * noise
    pack = functools.partial(FluxPipeline._pack_latents, batch_size=n, num_channels_latents=ctx.c,
                             height=ctx.h, width=ctx.w)
    return (pack(noisy).to(ctx.device, ctx.dtype), s.to(ctx.device, ctx.dtype), embeds.to(ctx.device, ctx.dtype),
            pooled.to(ctx.device, ctx.dtype), pack(noise - x).to(ctx.device))


def cached_batch(cfg: TrainConfig, ctx: StepContext, examples: list[Example], empty_key: str, cache: Path,
                 micro: int, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, ...]:
    """Micro-batch `micro` of process `rank`, read from the latent / text-embedding cache:
    a latent drawn from each image's VAE distribution, its caption (or the empty one)."""
    g = torch.Generator().manual_seed(_seed(cfg.seed, 0, micro, rank))
    idx = batch_indices(cfg.seed, len(examples), micro, cfg.batch_size, rank, world)
    lat = [load_entry(cache, examples[i].image_key) for i in idx]
    x = _stack(lat, "mean") + _stack(lat, "std") * torch.randn((len(idx), ctx.c, ctx.h, ctx.w), generator=g)
    drop = (torch.rand(len(idx), generator=g) < cfg.caption_dropout).tolist()
    txt = [load_entry(cache, empty_key if d else examples[i].text_key) for i, d in zip(idx, drop)]
    return noisy_inputs(cfg, ctx, x, _stack(txt, "prompt_embeds"), _stack(txt, "pooled"), g)


def train_step(acc: Accelerator, transformer, optimizer, lr_scheduler, params: list[torch.nn.Parameter],
               ctx: StepContext, batch: tuple[torch.Tensor, ...], max_grad_norm: float) -> float:
    """One micro-batch forward/backward; the optimizer steps when accumulation is complete. Mean loss."""
    hidden, sigma, embeds, pooled, target = batch
    with acc.accumulate(transformer):
        pred = transformer(hidden_states=hidden, timestep=sigma, guidance=ctx.guidance[:len(sigma)],
                           pooled_projections=pooled, encoder_hidden_states=embeds, txt_ids=ctx.txt_ids,
                           img_ids=ctx.img_ids, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), target.float())
        acc.backward(loss)
        if acc.sync_gradients:
            acc.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return acc.gather(loss.detach()[None]).mean().item()


def train(model_cfg: ModelConfig, cfg: TrainConfig, base_info: dict, paths: Paths = Paths(),
          acc: Accelerator | None = None) -> dict:
    """Train the adapter; writes models/lora, metrics and the MLflow run, then empties the checkpoints.
    Returns train.json's content on the main process, {} on the others."""
    acc = acc or make_accelerator(cfg)
    main, device, wdtype = acc.is_main_process, acc.device, WEIGHT_DTYPES[cfg.mixed_precision]
    t_start = time.perf_counter()

    # 1. Encode everything once (main process; the others get the result), then only the transformer stays resident.
    rows = read_metadata(paths.dataset)
    base_id = json.dumps(base_info, sort_keys=True)
    built = build_cache(rows, paths.dataset, paths.base, base_id, cfg.resolution, paths.cache, device,
                        wdtype) if main else None
    examples, empty_key, skipped = broadcast_object_list([built])[0]
    for s in skipped if main else []:
        print(f"train_lora: skipped {s['file']}: {s['reason']}", file=sys.stderr)
    if not examples:
        raise DataError(f"{paths.dataset}: no usable training images")

    source = model_source(paths.base, device)
    transformer = FluxTransformer2DModel.from_pretrained(source, subfolder="transformer", dtype=wdtype)
    transformer.requires_grad_(False)
    add_lora(transformer, cfg.rank, cfg.alpha, cfg.target_modules, cfg.seed)
    cast_training_params(transformer, torch.float32)  # LoRA weights train in fp32 under mixed precision
    if cfg.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(source, subfolder="scheduler")

    # 2. Resume from the last checkpoint of the same params (every process loads it), else start fresh.
    phash = params_hash(model_cfg, cfg, base_info, examples, acc.num_processes)
    ckpt = latest_checkpoint(paths.checkpoints)
    resume = ckpt is not None and ckpt.meta.get("params_hash") == phash
    acc.wait_for_everyone()  # all have read it before the main process may delete it
    if ckpt is not None and not resume and main:
        print(f"train_lora: not resuming from step {ckpt.step} (params or data changed); starting fresh",
              file=sys.stderr)
        clear_checkpoints(paths.checkpoints, keep=(paths.cache.name,))  # the cache is keyed by content
    if resume:
        load_adapter_state(transformer, ckpt.adapter)
    transformer.to(device)
    params = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = make_optimizer(cfg, params)
    warmup_name = "constant_with_warmup" if cfg.lr_scheduler == "constant" and cfg.warmup_steps else cfg.lr_scheduler
    lr_scheduler = get_scheduler(warmup_name, optimizer, num_warmup_steps=cfg.warmup_steps * acc.num_processes,
                                 num_training_steps=cfg.steps * acc.num_processes)
    start, history, run_id = 0, [], None
    if resume:
        optimizer.load_state_dict(ckpt.state["optimizer"])
        lr_scheduler.load_state_dict(ckpt.state["lr_scheduler"])
        set_rng_state(ckpt.state["rng"][acc.process_index])
        start, history, run_id = ckpt.step, [tuple(h) for h in ckpt.meta["history"]], ckpt.meta.get("run_id")
        if main:
            print(f"train_lora: resuming from step {start} ({paths.checkpoints})", file=sys.stderr)
    transformer, optimizer, lr_scheduler = acc.prepare(transformer, optimizer, lr_scheduler)
    if resume and acc.scaler is not None and ckpt.state.get("scaler"):
        acc.scaler.load_state_dict(ckpt.state["scaler"])
    del ckpt

    # 3. Fixed per-run tensors: latent geometry, position ids, FLUX's shift for this token count.
    ctx = StepContext.build(cfg, tuple(load_entry(paths.cache, examples[0].image_key)["mean"].shape), scheduler,
                            device, wdtype)
    images_per_step = cfg.batch_size * cfg.grad_accum * acc.num_processes
    trainable = sum(p.numel() for p in params)
    if main:
        print(f"train_lora: effective batch size {images_per_step} = batch_size {cfg.batch_size} x grad_accum "
              f"{cfg.grad_accum} x {acc.num_processes} process(es)", file=sys.stderr)

    with contextlib.ExitStack() as stack:
        run = stack.enter_context(tracking.start_run("train_lora", run_id)) if main else None
        if main and not mlflow.get_run(run.info.run_id).data.params:  # a resumed run has them already
            mlflow.log_params({**tracking.flat_params(model_cfg, cfg), "train.num_processes": acc.num_processes,
                               "train.effective_batch_size": images_per_step})
        transformer.train()
        pending: list[tuple[int, dict]] = []
        bar = tqdm(total=cfg.steps, initial=start, desc="train_lora", unit="step", disable=not main)
        t_loop = time.perf_counter()
        for step in range(start, cfg.steps):
            t0, losses = time.perf_counter(), []
            for k in range(cfg.grad_accum):
                batch = cached_batch(cfg, ctx, examples, empty_key, paths.cache, step * cfg.grad_accum + k,
                                     acc.process_index, acc.num_processes)
                losses.append(train_step(acc, transformer, optimizer, lr_scheduler, params, ctx, batch,
                                         cfg.max_grad_norm))
            done = step + 1
            loss_v, lr = float(np.mean(losses)), float(lr_scheduler.get_last_lr()[0])
            history.append((done, loss_v, lr))
            pending.append((done, {"loss": loss_v, "lr": lr, "images_per_s": images_per_step / (time.perf_counter() - t0)}))
            bar.update(1)
            bar.set_postfix(loss=f"{loss_v:.4f}")
            # The final step is checkpointed too: a run killed while writing its outputs resumes with nothing to train.
            checkpoint_now = done % cfg.checkpoint_every == 0 or done == cfg.steps
            if main and (len(pending) >= LOG_EVERY or checkpoint_now):
                tracking.log_step_metrics(run.info.run_id, pending)
                pending = []
            if checkpoint_now:
                rngs = gather_object([rng_state()])  # a collective: every process takes part
                if main:
                    save_checkpoint(paths.checkpoints, Checkpoint(
                        done, {"params_hash": phash, "run_id": run.info.run_id, "history": history},
                        adapter_state(acc.unwrap_model(transformer)),
                        {"optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict(),
                         "scaler": acc.scaler.state_dict() if acc.scaler is not None else None, "rng": rngs}))
        bar.close()
        loop_s = time.perf_counter() - t_loop
        acc.wait_for_everyone()
        if not main:
            return {}

        # 4. Outputs: adapter, loss curve, metrics, and the same into MLflow.
        adapter = save_adapter(acc.unwrap_model(transformer), paths.lora)
        write_csv(paths.loss_csv, [{"step": s, "loss": repr(l), "lr": repr(r)} for s, l, r in history],
                  ["step", "loss", "lr"])
        ran = cfg.steps - start
        metrics = {
            "final_loss": float(np.mean([l for _, l, _ in history[-10:]])),
            "steps": cfg.steps,
            "resumed_from_step": start,
            "seconds_per_step": loop_s / ran if ran else 0.0,
            "images_per_s": images_per_step * ran / loop_s if ran and loop_s else 0.0,
            "peak_memory_mb": peak_memory_mb(),
            "effective_batch_size": images_per_step,
            "trainable_params": trainable,
            "train_images": len(examples),
            "skipped_images": len(skipped),
            "total_seconds": time.perf_counter() - t_start,
        }
        write_json(paths.metrics, metrics)
        if skipped:
            mlflow.log_text("".join(f"{s['file']}\t{s['reason']}\n" for s in skipped), "skipped_images.tsv")
        mlflow.log_metrics({f"train.{k}": float(v) for k, v in metrics.items()}, step=cfg.steps)
        mlflow.log_artifact(str(adapter), artifact_path="lora")
        mlflow.log_artifact(str(paths.loss_csv), artifact_path="metrics")
        tracking.write_run_json(run, paths.run_json)
    # Done: the checkpoints and the encoding cache only served to resume; models/lora is the result.
    clear_checkpoints(paths.checkpoints)
    return metrics
