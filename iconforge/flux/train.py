"""Flow-matching LoRA training of the FLUX transformer (the published FLUX recipe).

Per step: cached VAE latent x (scaled, 16 channels), noise n, sigma s drawn by
the timestep scheme (train.timestep_sampling; optionally shifted for the image's
token count like FLUX's sampler, train.timestep_shift), noisy = (1 - s) x + s n,
and the transformer, fed packed 2x2 latents, the timestep s (in [0, 1]: diffusers'
FLUX transformer scales it by 1000 itself), their position ids, the cached text
embeddings (empty caption with probability caption_dropout) and, for models that
have one (FLUX.1-dev, not -schnell), the guidance embedding, predicts the velocity
n - x (MSE loss). Only the LoRA weights train. Every train.val_every steps the
loss on the validation split at fixed noise levels and noise (the same draws in
every run and experiment) is logged beside it.

Only the examples the run will draw are encoded (the data order is a function of
(seed, epoch)), into the encoding cache shared by all experiments
(iconforge.flux.latent_cache); the next micro-batch is read from it while the
current one trains.

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
from concurrent.futures import ThreadPoolExecutor
import hashlib
import json
import os
import resource
import sys
import time
import dataclasses
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, broadcast_object_list, gather_object
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from diffusers.optimization import get_scheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from diffusers.training_utils import cast_training_params
from PIL import Image
from tqdm import tqdm

from iconforge import tracking
from iconforge.atomic import write_json
from iconforge.config import ConfigError, TrainConfig
from iconforge.flux.checkpoint import (Checkpoint, clear_checkpoints, latest_checkpoint, rng_state, save_checkpoint,
                                       set_rng_state)
from iconforge.dataset.imagefolder import read_metadata
from iconforge.errors import InputError, StageError
from iconforge.flux.latent_cache import (EMPTY_CAPTION, MAX_SEQUENCE_LENGTH, Encoders, EncodingCache,
                                        encoder_fingerprint)
from iconforge.flux.lora_io import adapter_state, add_lora, check_exportable, load_adapter_state, save_adapter
from iconforge.flux.models import model_source
from iconforge.flux.quantize import check_runnable, load_transformer
from iconforge.tables import write_csv

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SAVE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# The validation loss: every validation image at these noise levels, with noise drawn from VAL_SEED and the
# image's position alone, so every run and every experiment measures the same thing.
VAL_SIGMAS = (0.1, 0.3, 0.5, 0.7, 0.9)
VAL_SEED = 20241202
# The other processes wait in a collective while the main one downloads the base (~30 GB) and
# encodes the data set: far longer than NCCL's default 10 min timeout.
SETUP_TIMEOUT = timedelta(hours=2)


class LaunchError(StageError, RuntimeError):
    """The processes were not started the way accelerate needs; the message says what to do."""


@dataclass(frozen=True)
class Paths:
    """What train() reads and writes (the stage passes the contract's, iconforge.paths)."""
    dataset: Path  # the imagefolder train split
    validation: Path  # the validation split (validation loss)
    base: Path  # models/base, written by resolve_base
    lora: Path  # the adapter in diffusers' format
    lora_kohya: Path  # the same in kohya's
    checkpoints: Path
    run_json: Path
    metrics: Path
    loss_csv: Path
    val_loss_csv: Path
    cache: Path  # the encoding cache shared by all experiments (train.cache_dir, resolved by the stage)


@dataclass(frozen=True)
class Example:
    file: str  # image path relative to its split folder
    caption: str
    image_key: str = ""  # encoding cache key; set for the examples the run draws and the validation ones


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
    check_runnable(cfg.quantize)


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


def drawn_indices(cfg: TrainConfig, n: int, world: int) -> list[int]:
    """Every example index a run of cfg.steps draws, over all processes: all it needs encoded."""
    return sorted({i for micro in range(cfg.steps * cfg.grad_accum) for rank in range(world)
                   for i in batch_indices(cfg.seed, n, micro, cfg.batch_size, rank, world)})


def sample_sigmas(cfg: TrainConfig, n: int, mu: float, scheduler: FlowMatchEulerDiscreteScheduler,
                  g: torch.Generator) -> torch.Tensor:
    """Noise levels in (0, 1) drawn by cfg.timestep_sampling; with cfg.timestep_shift, shifted towards
    noise by the image's token count (mu) as FLUX's sampler shifts its schedule."""
    if cfg.timestep_sampling == "uniform":
        t = torch.rand(n, generator=g)
    elif cfg.timestep_sampling == "logit_normal":  # SD3 / diffusers' name: sigmoid of N(mean, std)
        t = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(n, generator=g))
    else:  # "sigmoid", kohya's name: sigmoid of scale * N(0, 1)
        t = torch.sigmoid(cfg.sigmoid_scale * torch.randn(n, generator=g))
    t = t.clamp(1e-5, 1.0)
    return scheduler.time_shift(mu, 1.0, t) if cfg.timestep_shift else t


def prepare_transformer(transformer: FluxTransformer2DModel, cfg: TrainConfig) -> list[torch.nn.Parameter]:
    """Frozen base plus a fresh adapter whose weights train in fp32 (also under mixed precision);
    returns the trainable parameters."""
    transformer.requires_grad_(False)
    add_lora(transformer, cfg.rank, cfg.alpha, cfg.target_modules, cfg.seed)
    cast_training_params(transformer, torch.float32)
    if cfg.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    return [p for p in transformer.parameters() if p.requires_grad]


def make_optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter],
                   num_processes: int = 1) -> tuple[torch.optim.Optimizer, object]:
    """The optimizer and its LR schedule. accelerate steps a prepared scheduler once per process
    per optimizer step, so its step counts are scaled by the number of processes."""
    if cfg.optimizer == "adamw8bit":
        import bitsandbytes as bnb  # checked by preflight
        optimizer = bnb.optim.AdamW8bit(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                      fused=cfg.optimizer == "adamw_fused")
    # diffusers' "constant" ignores warmup; "constant_with_warmup" is what train.warmup_steps asks for.
    name = "constant_with_warmup" if cfg.lr_scheduler == "constant" and cfg.warmup_steps else cfg.lr_scheduler
    lr_scheduler = get_scheduler(name, optimizer, num_warmup_steps=cfg.warmup_steps * num_processes,
                                 num_training_steps=cfg.steps * num_processes)
    return optimizer, lr_scheduler


def params_hash(cfg: TrainConfig, base_info: dict, data: Data, world: int) -> str:
    """What a checkpoint must match to be resumed: every input of the math (no operational knob)."""
    # save_dtype only casts the saved file: a checkpoint trained under another one resumes.
    train = {k: v for k, v in asdict(cfg).items() if k not in TrainConfig.operational() | {"save_dtype"}}
    blob = json.dumps({"train": train, "base": base_info, "world": world,
                       "data": [asdict(e) for e in data.examples], "val": [asdict(e) for e in data.val]},
                      sort_keys=True)
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
    guidance: torch.Tensor | None  # None for a transformer without guidance embedding (FLUX.1-schnell)
    device: torch.device
    dtype: torch.dtype

    @classmethod
    def build(cls, cfg: TrainConfig, latent_shape: tuple[int, int, int], scheduler: FlowMatchEulerDiscreteScheduler,
              guidance_embeds: bool, device: torch.device, dtype: torch.dtype) -> StepContext:
        c, h, w = latent_shape
        sc = scheduler.config
        mu = calculate_shift((h // 2) * (w // 2), sc.base_image_seq_len, sc.max_image_seq_len, sc.base_shift,
                             sc.max_shift)
        guidance = torch.full((cfg.batch_size,), cfg.guidance, device=device, dtype=torch.float32)
        return cls(c, h, w, mu, scheduler, FluxPipeline._prepare_latent_image_ids(None, h // 2, w // 2, device, dtype),
                   torch.zeros(MAX_SEQUENCE_LENGTH, 3, device=device, dtype=dtype),
                   guidance if guidance_embeds else None, device, dtype)


def flow_matching_inputs(ctx: StepContext, x: torch.Tensor, noise: torch.Tensor, s: torch.Tensor,
                         embeds: torch.Tensor, pooled: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Clean latents x, noise and sigmas s -> (packed noisy latents (1 - s) x + s noise, timestep s,
    embeds, pooled, packed velocity target noise - x), on the device."""
    n = len(x)
    noisy = (1 - s[:, None, None, None]) * x + s[:, None, None, None] * noise
    pack = functools.partial(FluxPipeline._pack_latents, batch_size=n, num_channels_latents=ctx.c,
                             height=ctx.h, width=ctx.w)
    return (pack(noisy).to(ctx.device, ctx.dtype), s.to(ctx.device, ctx.dtype), embeds.to(ctx.device, ctx.dtype),
            pooled.to(ctx.device, ctx.dtype), pack(noise - x).to(ctx.device))


def cached_batch(cfg: TrainConfig, ctx: StepContext, examples: list[Example], cache: EncodingCache,
                 micro: int, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, ...]:
    """Micro-batch `micro` of process `rank`, read from the encoding cache: a latent drawn from each
    image's VAE distribution, its caption (or the empty one), noise and sigmas from (seed, micro, rank)."""
    g = torch.Generator().manual_seed(_seed(cfg.seed, 0, micro, rank))
    idx = batch_indices(cfg.seed, len(examples), micro, cfg.batch_size, rank, world)
    lat = [cache.load(examples[i].image_key) for i in idx]
    x = _stack(lat, "mean") + _stack(lat, "std") * torch.randn((len(idx), ctx.c, ctx.h, ctx.w), generator=g)
    drop = (torch.rand(len(idx), generator=g) < cfg.caption_dropout).tolist()
    txt = [cache.load(cache.text_key(EMPTY_CAPTION if d else examples[i].caption)) for i, d in zip(idx, drop)]
    noise = torch.randn(x.shape, generator=g)
    s = sample_sigmas(cfg, len(idx), ctx.mu, ctx.scheduler, g)
    return flow_matching_inputs(ctx, x, noise, s, _stack(txt, "prompt_embeds"), _stack(txt, "pooled"))


def predict(transformer, ctx: StepContext, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The transformer's velocity prediction for a batch of flow_matching_inputs, and its target."""
    hidden, sigma, embeds, pooled, target = batch
    pred = transformer(hidden_states=hidden, timestep=sigma,
                       guidance=None if ctx.guidance is None else ctx.guidance[:len(sigma)],
                       pooled_projections=pooled, encoder_hidden_states=embeds, txt_ids=ctx.txt_ids,
                       img_ids=ctx.img_ids, return_dict=False)[0]
    return pred.float(), target.float()


def train_step(acc: Accelerator, transformer, optimizer, lr_scheduler, params: list[torch.nn.Parameter],
               ctx: StepContext, batch: tuple[torch.Tensor, ...], max_grad_norm: float) -> torch.Tensor:
    """One micro-batch forward/backward; the optimizer steps when accumulation is complete.
    Returns the mean loss over processes as a device tensor: reading it is a host sync."""
    with acc.accumulate(transformer):
        loss = F.mse_loss(*predict(transformer, ctx, batch))
        acc.backward(loss)
        if acc.sync_gradients:
            acc.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return acc.gather(loss.detach()[None]).mean()


def validation_batches(cfg: TrainConfig, ctx: StepContext, val: list[Example],
                       cache: EncodingCache) -> list[tuple[torch.Tensor, ...]]:
    """The validation set on the CPU, in batches: each image's latent mean at every VAL_SIGMAS level, with
    noise of its own drawn from (VAL_SEED, its position), and its caption."""
    items = []
    for j, e in enumerate(val):
        x = cache.load(e.image_key)["mean"].float()
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(_seed(VAL_SEED, j)))
        txt = cache.load(cache.text_key(e.caption))
        items += [(x, noise, s, txt) for s in VAL_SIGMAS]
    return [(torch.stack([it[0] for it in chunk]), torch.stack([it[1] for it in chunk]),
             torch.tensor([it[2] for it in chunk]), _stack([it[3] for it in chunk], "prompt_embeds"),
             _stack([it[3] for it in chunk], "pooled"))
            for chunk in (items[i:i + cfg.batch_size] for i in range(0, len(items), cfg.batch_size))]


@torch.no_grad()
def validation_loss(transformer, ctx: StepContext, batches: list[tuple[torch.Tensor, ...]]) -> float:
    """Mean squared velocity error over the validation batches (one host sync)."""
    total, count = torch.zeros((), device=ctx.device), 0
    for x, noise, s, embeds, pooled in batches:
        pred, target = predict(transformer, ctx, flow_matching_inputs(ctx, x, noise, s, embeds, pooled))
        total += F.mse_loss(pred, target, reduction="sum")
        count += target.numel()
    return total.item() / count


@dataclass
class Data:
    """The encoded data set of a run (built by the main process, sent to the others)."""
    examples: list[Example]  # the train split in metadata order; the ones the run draws carry image keys
    val: list[Example]  # the validation images of the validation loss
    skipped: list[dict]  # images that could not be used, with the reason
    cache: EncodingCache


@dataclass
class Run:
    """What setup() prepares and fit() / write() use: one training run in this process."""
    cfg: TrainConfig
    paths: Paths
    acc: Accelerator
    data: Data
    transformer: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    params: list[torch.nn.Parameter]
    ctx: StepContext
    val_batches: list[tuple[torch.Tensor, ...]]
    params_hash: str
    start: int = 0  # first step to train: > 0 when resumed
    history: list[tuple[int, float, float]] = dataclasses.field(default_factory=list)  # (step, loss, lr)
    val_history: list[tuple[int, float]] = dataclasses.field(default_factory=list)  # (step, validation loss)
    run_id: str | None = None  # the MLflow run to continue

    @property
    def images_per_step(self) -> int:
        return self.cfg.batch_size * self.cfg.grad_accum * self.acc.num_processes


class Unusable(Exception):
    """An image that cannot be trained on; the message says why."""


def _image_entry(cache: EncodingCache, encoders: Encoders, path: Path) -> str:
    """The cache key of the image at `path`, encoding it unless an intact entry is there."""
    try:
        key = cache.image_key(path.read_bytes())
    except OSError as e:
        raise Unusable(f"unreadable: {e.strerror or e}") from None
    if cache.read(key) is not None:
        cache.stats.reused_images += 1
        return key
    try:
        tensors = encoders.image(path)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise Unusable(f"not a readable image: {e}") from None
    cache.write(key, tensors)
    cache.stats.encoded_images += 1
    return key


def _text_entry(cache: EncodingCache, encoders: Encoders, caption: str) -> None:
    key = cache.text_key(caption)
    if cache.read(key) is not None:
        cache.stats.reused_captions += 1
    else:
        cache.write(key, encoders.caption(caption))
        cache.stats.encoded_captions += 1


def encode_data(cfg: TrainConfig, paths: Paths, world: int, device: torch.device) -> Data:
    """Encode what the run draws, the validation images and their captions (main process).

    The data order depends on the number of usable images, so an image that turns out unusable is
    dropped and the draw recomputed until every drawn image is encoded: only drawn images are read.
    """
    dtype = WEIGHT_DTYPES[cfg.mixed_precision]
    cache = EncodingCache(paths.cache, f"{encoder_fingerprint(paths.base)}|{dtype}", cfg.resolution,
                          int(cfg.cache_max_gb * 2**30))
    encoders = Encoders(paths.base, cfg.resolution, device, dtype)
    examples = [Example(r["file_name"], r["text"]) for r in read_metadata(paths.dataset)]
    keys, skipped = {}, []
    bar = tqdm(desc="encode images", unit="img")
    while True:
        drawn = drawn_indices(cfg, len(examples), world) if examples else []
        bad = set()
        for e in (examples[i] for i in drawn if examples[i].file not in keys):
            try:
                keys[e.file] = _image_entry(cache, encoders, paths.dataset / e.file)
            except Unusable as err:
                skipped.append({"file": str(paths.dataset / e.file), "reason": str(err)})
                bad.add(e.file)
            bar.update(1)
        if not bad:
            break
        examples = [e for e in examples if e.file not in bad]
    bar.close()
    chosen = set(drawn)
    examples = [replace(e, image_key=keys[e.file]) if i in chosen else e for i, e in enumerate(examples)]

    rows = read_metadata(paths.validation)
    k = min(cfg.val_images, len(rows))
    val = []
    for r in (rows[i * len(rows) // k] for i in range(k)):  # evenly spaced over the split
        try:
            val.append(Example(r["file_name"], r["text"], _image_entry(cache, encoders, paths.validation / r["file_name"])))
        except Unusable as err:
            skipped.append({"file": str(paths.validation / r["file_name"]), "reason": str(err)})

    captions = sorted({examples[i].caption for i in drawn} | {e.caption for e in val} | {EMPTY_CAPTION})
    for c in tqdm(captions, desc="encode captions", unit="caption"):
        _text_entry(cache, encoders, c)
    encoders.close()
    cache.evict(keep={e.image_key for e in examples + val if e.image_key} | {cache.text_key(c) for c in captions})
    return Data(examples, val, skipped, cache)


def encode(cfg: TrainConfig, paths: Paths, acc: Accelerator) -> Data:
    """The run's Data on every process: encoded by the main one, which reports what it did."""
    built = None
    if acc.is_main_process:
        built = encode_data(cfg, paths, acc.num_processes, acc.device)
        for s in built.skipped:
            print(f"train_lora: skipped {s['file']}: {s['reason']}", file=sys.stderr)
        st = built.cache.stats
        print(f"train_lora: encoded {st.encoded_images} images and {st.encoded_captions} captions, reused "
              f"{st.reused_images} and {st.reused_captions} from {paths.cache}"
              + (f", re-encoded {st.corrupt_entries} corrupt entries" if st.corrupt_entries else "")
              + (f", evicted {st.evicted_entries} least recently used" if st.evicted_entries else ""), file=sys.stderr)
    data = broadcast_object_list([built])[0]
    if not any(e.image_key for e in data.examples):
        raise InputError(f"{paths.dataset}: no usable training images")
    if not data.val:
        raise InputError(f"{paths.validation}: no usable validation images (the validation loss needs one: "
                         f"set filter.val_fraction > 0)")
    return data


def resumable_checkpoint(paths: Paths, phash: str, acc: Accelerator) -> Checkpoint | None:
    """The last checkpoint if it was trained with the same params (`phash`); one of other params is deleted."""
    ckpt = latest_checkpoint(paths.checkpoints)
    acc.wait_for_everyone()  # all have read it before the main process may delete it
    if ckpt is None or ckpt.meta.get("params_hash") == phash:
        return ckpt
    if acc.is_main_process:
        print(f"train_lora: not resuming from step {ckpt.step} (params or data changed); starting fresh",
              file=sys.stderr)
        clear_checkpoints(paths.checkpoints)
    return None


def setup(cfg: TrainConfig, base_info: dict, paths: Paths, acc: Accelerator) -> Run:
    """Encode the data, build the transformer with a fresh adapter and its optimizer, and restore
    them from the last checkpoint of the same params if there is one."""
    device, wdtype = acc.device, WEIGHT_DTYPES[cfg.mixed_precision]
    data = encode(cfg, paths, acc)
    source = model_source(paths.base, device)
    transformer = load_transformer(source, cfg.quantize, wdtype)
    params = prepare_transformer(transformer, cfg)
    check_exportable(transformer)  # a target the kohya file cannot name fails now, not after training
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(source, subfolder="scheduler")
    latent_shape = tuple(data.cache.load(data.val[0].image_key)["mean"].shape)
    ctx = StepContext.build(cfg, latent_shape, scheduler, transformer.config.guidance_embeds, device, wdtype)

    phash = params_hash(cfg, base_info, data, acc.num_processes)
    ckpt = resumable_checkpoint(paths, phash, acc)
    if ckpt is not None:
        load_adapter_state(transformer, ckpt.adapter)
    transformer.to(device)
    optimizer, lr_scheduler = make_optimizer(cfg, params, acc.num_processes)
    run = Run(cfg, paths, acc, data, transformer, optimizer, lr_scheduler, params, ctx,
              validation_batches(cfg, ctx, data.val, data.cache), phash)
    if ckpt is not None:
        optimizer.load_state_dict(ckpt.state["optimizer"])
        lr_scheduler.load_state_dict(ckpt.state["lr_scheduler"])
        set_rng_state(ckpt.state["rng"][acc.process_index])
        run.start, run.run_id = ckpt.step, ckpt.meta.get("run_id")
        run.history = [tuple(h) for h in ckpt.meta["history"]]
        run.val_history = [tuple(h) for h in ckpt.meta["val_history"]]
        if acc.is_main_process:
            print(f"train_lora: resuming from step {run.start} ({paths.checkpoints})", file=sys.stderr)
    run.transformer, run.optimizer, run.lr_scheduler = acc.prepare(transformer, optimizer, lr_scheduler)
    if ckpt is not None and acc.scaler is not None and ckpt.state.get("scaler"):
        acc.scaler.load_state_dict(ckpt.state["scaler"])
    if acc.is_main_process:
        print(f"train_lora: effective batch size {run.images_per_step} = batch_size {cfg.batch_size} x grad_accum "
              f"{cfg.grad_accum} x {acc.num_processes} process(es)", file=sys.stderr)
    return run


def read_ahead(pool: ThreadPoolExecutor, fn, items) -> Iterator:
    """fn(item) for each item in order, the next one computed in `pool` while the caller uses this one."""
    items = iter(items)
    ahead = next((pool.submit(fn, i) for i in items), None)
    while ahead is not None:
        current, ahead = ahead, next((pool.submit(fn, i) for i in items), None)
        yield current.result()


def _checkpoint(run: Run, step: int, mlflow_run_id: str | None) -> None:
    rngs = gather_object([rng_state()])  # a collective: every process takes part
    if run.acc.is_main_process:
        save_checkpoint(run.paths.checkpoints, Checkpoint(
            step, {"params_hash": run.params_hash, "run_id": mlflow_run_id, "history": run.history,
                   "val_history": run.val_history},
            adapter_state(run.acc.unwrap_model(run.transformer)),
            {"optimizer": run.optimizer.state_dict(), "lr_scheduler": run.lr_scheduler.state_dict(),
             "scaler": run.acc.scaler.state_dict() if run.acc.scaler is not None else None, "rng": rngs}))


def fit(run: Run, tracker: tracking.Tracker | None) -> float:
    """The training loop, from run.start to cfg.steps; returns its wall-clock seconds.

    Losses stay on the device until the log interval (or a checkpoint), where one host sync
    turns them into run.history and the MLflow batch (queued on the main process's `tracker`, whose
    thread sends it: a slow or absent store never holds up the loop). A background thread reads the next
    micro-batch from the encoding cache while the current one trains. The main process takes the
    validation loss every cfg.val_every steps and at the end. The final step is checkpointed too:
    a run killed while writing its outputs resumes with nothing left to train.
    """
    cfg, acc = run.cfg, run.acc
    run.transformer.train()
    bar = tqdm(total=cfg.steps, initial=run.start, desc="train_lora", unit="step", disable=not acc.is_main_process)
    pending: list[tuple[int, float, list[torch.Tensor]]] = []  # (step, lr, micro-batch losses) not yet read
    micro_batches = range(run.start * cfg.grad_accum, cfg.steps * cfg.grad_accum)
    t_loop = t_log = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1) as reader:
        batches = read_ahead(reader, lambda m: cached_batch(cfg, run.ctx, run.data.examples, run.data.cache, m,
                                                            acc.process_index, acc.num_processes), micro_batches)
        for step in range(run.start, cfg.steps):
            losses = [train_step(acc, run.transformer, run.optimizer, run.lr_scheduler, run.params, run.ctx,
                                 next(batches), cfg.max_grad_norm) for _ in range(cfg.grad_accum)]
            done = step + 1
            pending.append((done, float(run.lr_scheduler.get_last_lr()[0]), losses))
            bar.update(1)
            checkpoint_now = done % cfg.checkpoint_every == 0 or done == cfg.steps
            if len(pending) >= cfg.log_every or checkpoint_now:
                values = torch.stack([l for _, _, ls in pending for l in ls]).tolist()  # the host sync
                rows = []
                for i, (s, lr, _) in enumerate(pending):
                    loss = float(np.mean(values[i * cfg.grad_accum:(i + 1) * cfg.grad_accum]))
                    run.history.append((s, loss, lr))
                    rows.append((s, {"loss": loss, "lr": lr}))
                now = time.perf_counter()
                rows[-1][1]["images_per_s"] = run.images_per_step * len(pending) / (now - t_log)
                bar.set_postfix(loss=f"{run.history[-1][1]:.4f}")
                if tracker is not None:
                    tracker.log_metrics(rows)  # queued: never waits for the store
                pending, t_log = [], now
            if acc.is_main_process and (done % cfg.val_every == 0 or done == cfg.steps):
                val = validation_loss(acc.unwrap_model(run.transformer), run.ctx, run.val_batches)
                run.val_history.append((done, val))
                tracker.log_metrics([(done, {"val_loss": val})])
                bar.set_postfix(val_loss=f"{val:.4f}")
            if checkpoint_now:
                _checkpoint(run, done, tracker.run_id if tracker is not None else None)
    bar.close()
    acc.wait_for_everyone()
    return time.perf_counter() - t_loop


def write(run: Run, tracker: tracking.Tracker, loop_s: float, total_s: float) -> dict:
    """The adapter, the loss curves and train.json (main process); returns train.json's content."""
    cfg, paths = run.cfg, run.paths
    save_adapter(run.acc.unwrap_model(run.transformer), paths.lora, paths.lora_kohya, SAVE_DTYPES[cfg.save_dtype])
    write_csv(paths.loss_csv, [{"step": s, "loss": repr(l), "lr": repr(r)} for s, l, r in run.history],
              ["step", "loss", "lr"])
    write_csv(paths.val_loss_csv, [{"step": s, "val_loss": repr(v)} for s, v in run.val_history], ["step", "val_loss"])
    ran = cfg.steps - run.start
    metrics = {
        "final_loss": float(np.mean([l for _, l, _ in run.history[-10:]])),
        "val_loss": run.val_history[-1][1],
        "steps": cfg.steps,
        "resumed_from_step": run.start,
        "seconds_per_step": loop_s / ran if ran else 0.0,
        "images_per_s": run.images_per_step * ran / loop_s if ran and loop_s else 0.0,
        "peak_memory_mb": peak_memory_mb(),
        "effective_batch_size": run.images_per_step,
        "trainable_params": sum(p.numel() for p in run.params),
        "train_images": len(run.data.examples),
        "val_images": len(run.data.val),
        "skipped_images": len(run.data.skipped),
        **{f"cache_{k}": v for k, v in asdict(run.data.cache.stats).items()},
        "total_seconds": total_s,
    }
    write_json(paths.metrics, metrics)
    if run.data.skipped:
        tracker.log_text("".join(f"{s['file']}\t{s['reason']}\n" for s in run.data.skipped), "skipped_images.tsv")
    tracker.log_metrics([(cfg.steps, {f"train.{k}": float(v) for k, v in metrics.items()})])
    for f, folder in ((paths.lora, "lora"), (paths.lora_kohya, "lora"), (paths.loss_csv, "metrics"),
                      (paths.val_loss_csv, "metrics")):
        tracker.log_artifact(f, folder)
    return metrics


def train(cfg: TrainConfig, base_info: dict, paths: Paths, acc: Accelerator) -> dict:
    """setup, fit, write: models/lora, metrics and the MLflow run; then empty the checkpoints.
    Returns train.json's content on the main process, {} on the others."""
    t_start = time.perf_counter()
    run = setup(cfg, base_info, paths, acc)
    main = acc.is_main_process
    with tracking.start_run("train_lora", run.run_id) if main else contextlib.nullcontext() as tracker:
        if main and tracker.run_id != run.run_id:  # a new run (a resumed one has its params already)
            tracker.log_params({"model.base": base_info["base"], "model.revision": base_info["revision"],
                                **tracking.flat_params(cfg), "train.num_processes": acc.num_processes,
                                "train.effective_batch_size": run.images_per_step})
        loop_s = fit(run, tracker)
        if not main:
            return {}
        metrics = write(run, tracker, loop_s, time.perf_counter() - t_start)
        tracking.write_run_json(tracker, paths.run_json)
    # Done: the checkpoints only served to resume; models/lora is the result.
    clear_checkpoints(paths.checkpoints)
    return metrics
