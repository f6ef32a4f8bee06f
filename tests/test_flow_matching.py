"""The training maths pinned to the published FLUX recipe (rectified flow, Esser et al. 2024, eq. 1-3):

    z_t = (1 - t) x + t n,   target v = n - x,   the transformer is fed t itself (in [0, 1]),

checked on fixed tensors, against one Euler step of diffusers' FlowMatchEulerDiscreteScheduler (which
must land on x) and against the timestep FluxPipeline feeds at inference; plus an overfit test, the
timestep schemes, and a transformer without guidance embedding (FLUX.1-schnell's layout)."""
import functools

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from diffusers import FlowMatchEulerDiscreteScheduler

from iconforge.config import TrainConfig, build
from iconforge.flux.latent_cache import MAX_SEQUENCE_LENGTH
from iconforge.flux.tiny import FLUX_SCHEDULER, TEXT_DIM, build_tiny_pipeline
from iconforge.flux.train import (StepContext, flow_matching_inputs, make_optimizer, prepare_transformer,
                                  sample_sigmas, train_step)
from train_setup import PARAMS, TRAIN

C, H, W = 16, 8, 8  # a 64 px image's latent


def cfg(**overrides) -> TrainConfig:
    return build(TrainConfig, {**PARAMS["train"], **TRAIN, **overrides})


def pack(z: torch.Tensor) -> torch.Tensor:
    """2x2 patches of (B, C, H, W) as (B, H/2 * W/2, 4C) tokens, the layout FLUX's transformer reads."""
    b = len(z)
    return z.view(b, C, H // 2, 2, W // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, H * W // 4, C * 4)


def fixed_inputs(s: list[float]):
    g = torch.Generator().manual_seed(0)
    x, n = torch.randn(len(s), C, H, W, generator=g), torch.randn(len(s), C, H, W, generator=g)
    embeds = torch.randn(len(s), MAX_SEQUENCE_LENGTH, TEXT_DIM, generator=g)
    pooled = torch.randn(len(s), TEXT_DIM, generator=g)
    return x, n, torch.tensor(s), embeds, pooled


def context(c: TrainConfig, guidance_embeds: bool = True) -> StepContext:
    return StepContext.build(c, (C, H, W), FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER), guidance_embeds,
                             torch.device("cpu"), torch.float32)


def test_model_input_and_target_are_the_rectified_flow_formulas():
    x, n, s, embeds, pooled = fixed_inputs([0.05, 0.5, 0.93])
    hidden, timestep, e, p, target = flow_matching_inputs(context(cfg()), x, n, s, embeds, pooled)
    t = s[:, None, None, None]
    assert torch.allclose(hidden, pack((1 - t) * x + t * n), atol=1e-6)
    assert torch.allclose(target, pack(n - x), atol=1e-6)
    assert torch.equal(timestep, s)  # t itself; the transformer scales by 1000 internally
    assert torch.equal(e, embeds) and torch.equal(p, pooled)


def euler_step_to_zero(v: torch.Tensor, z: torch.Tensor, sigma: float) -> torch.Tensor:
    """One step of diffusers' FlowMatchEulerDiscreteScheduler from sigma to 0 with velocity v."""
    sched = FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER)
    sched.set_timesteps(sigmas=[sigma], mu=0.0)  # mu = 0: exp(0) shift, the schedule is [sigma, 0]
    assert sched.sigmas.tolist() == pytest.approx([sigma, 0.0])
    return sched.step(v, sched.timesteps[0], z).prev_sample


def test_one_euler_step_along_the_target_lands_on_the_clean_latent():
    x, n, s, embeds, pooled = fixed_inputs([0.2, 0.7])
    hidden, _, _, _, target = flow_matching_inputs(context(cfg()), x, n, s, embeds, pooled)
    for i, sigma in enumerate(s.tolist()):
        one = slice(i, i + 1)
        assert torch.allclose(euler_step_to_zero(target[one], hidden[one], sigma), pack(x[one]), atol=1e-5)
        # A flipped sign (v = x - n) lands elsewhere.
        assert not torch.allclose(euler_step_to_zero(-target[one], hidden[one], sigma), pack(x[one]), atol=1e-2)


def _recorded(transformer) -> list[dict]:
    calls = []
    transformer.register_forward_pre_hook(lambda m, args, kw: calls.append(kw), with_kwargs=True)
    return calls


@pytest.fixture
def accelerator():
    yield Accelerator(cpu=True)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def _trainer(c: TrainConfig, transformer, acc: Accelerator):
    params = prepare_transformer(transformer, c)
    optimizer, scheduler = make_optimizer(c, params)
    transformer, optimizer, scheduler = acc.prepare(transformer, optimizer, scheduler)
    return functools.partial(train_step, acc, transformer, optimizer, scheduler, params)


def test_training_feeds_the_timestep_the_sampler_feeds_at_the_same_noise_level(accelerator):
    pipe = build_tiny_pipeline()
    sampler_calls = _recorded(pipe.transformer)
    pipe("a flask", num_inference_steps=2, height=64, width=64, max_sequence_length=16, output_type="latent",
         generator=torch.Generator().manual_seed(0))
    sampler_sigmas = pipe.scheduler.sigmas[:2]
    assert torch.allclose(torch.cat([c["timestep"] for c in sampler_calls]), sampler_sigmas)

    c = cfg(guidance=2.5)
    step = _trainer(c, pipe.transformer, accelerator)
    calls = _recorded(pipe.transformer)
    x, n, _, embeds, pooled = fixed_inputs([0.0, 0.0])
    step(context(c), flow_matching_inputs(context(c), x, n, sampler_sigmas, embeds, pooled), 1.0)
    assert torch.equal(calls[0]["timestep"], sampler_sigmas)  # not sigma * 1000: the transformer scales it
    assert calls[0]["guidance"].tolist() == [2.5, 2.5]


def test_one_image_at_fixed_noise_is_overfit(accelerator):
    """The loss on one latent at fixed sigmas and noise falls by at least half within 60 steps."""
    c = cfg(targets="all_linear", rank=8, alpha=8, lr=3e-2, grad_accum=1, warmup_steps=0, lr_scheduler="constant",
            max_grad_norm=10.0)
    step = _trainer(c, build_tiny_pipeline().transformer, accelerator)
    x, n, s, embeds, pooled = fixed_inputs([0.3, 0.7])
    x, embeds, pooled = x[:1].expand(2, -1, -1, -1), embeds[:1].expand(2, -1, -1), pooled[:1].expand(2, -1)
    ctx = context(c)
    batch = flow_matching_inputs(ctx, x, n, s, embeds, pooled)
    losses = [step(ctx, batch, c.max_grad_norm).item() for _ in range(60)]
    assert min(losses[-10:]) <= 0.5 * losses[0], (losses[0], losses[-10:])


def test_a_transformer_without_guidance_embedding_trains(accelerator):
    """FLUX.1-schnell has no guidance embedding: no guidance is passed, and the adapter learns."""
    c = cfg()
    pipe = build_tiny_pipeline(guidance_embeds=False)
    assert not pipe.transformer.config.guidance_embeds
    calls = _recorded(pipe.transformer)
    step = _trainer(c, pipe.transformer, accelerator)
    ctx = context(c, guidance_embeds=pipe.transformer.config.guidance_embeds)
    x, n, s, embeds, pooled = fixed_inputs([0.4, 0.6])
    losses = [step(ctx, flow_matching_inputs(ctx, x, n, s, embeds, pooled), 1.0).item() for _ in range(4)]
    assert calls[0]["guidance"] is None and all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


def _draw(n: int = 20000, mu: float = 1.15, **overrides) -> torch.Tensor:
    sched = FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER)
    return sample_sigmas(cfg(**overrides), n, mu, sched, torch.Generator().manual_seed(0))


def test_timestep_schemes_draw_what_they_say():
    uniform = _draw(timestep_sampling="uniform")
    assert abs(uniform.mean() - 0.5) < 0.01 and abs(uniform.var() - 1 / 12) < 0.005
    ln = _draw(timestep_sampling="logit_normal", logit_mean=1.0, logit_std=0.5)
    assert abs(torch.logit(ln).mean() - 1.0) < 0.02 and abs(torch.logit(ln).std() - 0.5) < 0.02
    sig = _draw(timestep_sampling="sigmoid", sigmoid_scale=2.0)
    assert abs(torch.logit(sig).mean()) < 0.05 and abs(torch.logit(sig).std() - 2.0) < 0.05
    assert len({tuple(d[:5].tolist()) for d in (uniform, ln, sig)}) == 3


def test_the_resolution_shift_moves_noise_levels_towards_noise():
    """At 1024 px (mu = 1.15) the shift leaves ~2% of draws below sigma 0.3 (vs ~20% unshifted)."""
    plain = _draw(timestep_sampling="sigmoid", timestep_shift=False)
    shifted = _draw(timestep_sampling="sigmoid", timestep_shift=True)
    assert abs((plain < 0.3).float().mean() - 0.198) < 0.01
    assert abs((shifted < 0.3).float().mean() - 0.023) < 0.005
    assert torch.equal(_draw(mu=0.5, timestep_shift=False), plain)  # without the shift mu plays no part
