"""The generator: base + adapter loaded once, then any number of requests.

Each image of a request is its own batch-1 denoising run from its own seed (seed, seed+1, ...),
after one shared text encoding. Why not one batched pipeline call: on CPU, the tiny preset's
batch of 4 at 64 px gives different bytes than the same seeds drawn one at a time (batched
kernels sum in another order), and the promise is that "again with this seed" (n=1) redraws an
image byte for byte. A batch-1 run per seed is the same computation whatever n is. (On a GPU at
FLUX's 1024 px a batch-1 step is already 4096 image tokens, so batching should gain little; not
measured here.)
"""
from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from iconforge.evaluate.sampling import LORA_ADAPTER, pick_device, with_trigger
from iconforge.evaluate.trace import Tracer, png_bytes
from iconforge.flux.models import load_pipeline
from iconforge.generate.request import MAX_IMAGES, MAX_SEED, GenerateRequest
from iconforge.generate.source import ModelSource

Progress = Callable[[int, int], None]  # (denoising steps done, steps in the whole job)


class Cancelled(Exception):
    """Raised inside the pipeline's step callback: stops a generation at the next step."""


@dataclass(frozen=True)
class Settings:
    """A request with every default filled in: all it takes to redraw the same bytes."""

    prompt: str  # as the user wrote it
    prompt_sent: str  # with the trigger phrase, as the pipeline got it
    trigger: str
    n: int
    seed: int  # image i has seed + i
    steps: int
    guidance: float
    size: int
    strength: float

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.n)]


@dataclass(frozen=True)
class GeneratedImage:
    seed: int
    png: bytes
    svg: str


class Generator:
    """Owns one pipeline; not thread-safe: one generation at a time (the server's worker)."""

    def __init__(self, source: ModelSource):
        self.source = source
        self.device, self.dtype = pick_device()
        self.pipe = load_pipeline(source.base_dir, self.device, self.dtype)
        self.pipe.load_lora_weights(str(source.lora_file), adapter_name=LORA_ADAPTER)
        self.pipe.set_progress_bar_config(disable=True)
        self.tracer = Tracer()  # not in this process: a server's other threads keep running while it traces

    def close(self) -> None:
        """Ends the tracer's process (it also ends with this one)."""
        self.tracer.close()

    def settings(self, req: GenerateRequest) -> Settings:
        d = self.source.defaults
        seed = req.seed if req.seed is not None else secrets.randbelow(MAX_SEED - MAX_IMAGES + 2)
        return Settings(prompt=req.prompt, prompt_sent=with_trigger(self.source.trigger, req.prompt),
                        trigger=self.source.trigger, n=req.n, seed=seed, steps=req.steps or d.steps,
                        guidance=d.guidance if req.guidance is None else req.guidance,
                        size=req.size or d.size, strength=req.strength)

    def model_info(self) -> dict:
        s = self.source
        return {"base": s.base, "revision": s.revision, "commit": s.commit, "experiment": s.experiment,
                "adapter_sha256": s.adapter_sha256, "trigger": s.trigger, "device": self.device,
                "dtype": str(self.dtype).removeprefix("torch.")}

    def record(self, settings: Settings) -> dict:
        """Every setting and the model: the JSON beside a result (no times, so equal runs give equal bytes)."""
        return {**asdict(settings), "seeds": settings.seeds, "model": self.model_info()}

    def generate(self, s: Settings, progress: Progress | None = None,
                 cancelled: Callable[[], bool] = lambda: False) -> list[GeneratedImage]:
        """Draw and trace every image of `s`; raises Cancelled as soon as `cancelled()` is true."""
        total = s.n * s.steps
        if cancelled():
            raise Cancelled
        self.pipe.set_adapters([LORA_ADAPTER], adapter_weights=[s.strength])
        embeds, pooled, _ = self.pipe.encode_prompt(prompt=s.prompt_sent, prompt_2=None, device=self.device)
        images = []
        for i, seed in enumerate(s.seeds):
            def on_step(pipe, step, timestep, tensors, done=i * s.steps):
                if progress:
                    progress(done + step + 1, total)
                if cancelled():
                    raise Cancelled
                return {}

            out = self.pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, height=s.size, width=s.size,
                            num_inference_steps=s.steps, guidance_scale=s.guidance,
                            generator=torch.Generator("cpu").manual_seed(seed), callback_on_step_end=on_step)
            png = png_bytes(out.images[0].convert("RGB"))
            images.append(GeneratedImage(seed=seed, png=png, svg=self.tracer(png)))
        return images
