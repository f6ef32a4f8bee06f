"""The `tiny` preset: a random-weight FluxPipeline with FLUX.1-dev's real structure.

Same component classes, latent layout (16 VAE channels packed 2x2 into 64),
guidance embedding, flow-match scheduler with resolution-dependent shift and
real CLIP BPE tokenization, only with tiny widths, so every code path of
training, sampling and evaluation runs offline on a CPU in seconds. Built from
a fixed seed with no network access: the same bytes on every build.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import open_clip
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5Tokenizer

SEED = 0
CLIP_VOCAB_SIZE = 49408  # the real CLIP BPE vocabulary: 256 bytes x2 + 48,894 merges + 2 specials
TEXT_DIM = 32  # CLIP pooled width = T5 width = the transformer's pooled/joint attention dims

# FLUX.1-dev's own scheduler and VAE latent statistics.
FLUX_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                      max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
FLUX_VAE_SCALING, FLUX_VAE_SHIFT = 0.3611, 0.1159


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP byte -> printable character table, in open_clip's order."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def clip_tokenizer() -> CLIPTokenizer:
    """The real CLIP tokenizer, built from the BPE merges open_clip ships (no download)."""
    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    n_merges = CLIP_VOCAB_SIZE - 2 * 256 - 2
    merges = [tuple(line.split()) for line in lines[1:1 + n_merges]]  # line 0 is a version header
    chars = _bytes_to_unicode()
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == CLIP_VOCAB_SIZE
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def t5_tokenizer() -> T5Tokenizer:
    """A real T5 (Unigram) tokenizer over single printable characters: every caption
    maps to a distinct id sequence, with T5's <pad>=0, </s>=1, <unk>=2 layout."""
    pieces = ["<pad>", "</s>", "<unk>", "▁"] + [chr(c) for c in range(33, 127)]
    return T5Tokenizer(vocab=[(p, 0.0 if i < 3 else -1.0) for i, p in enumerate(pieces)],
                       extra_ids=0, model_max_length=512)


def build_tiny_pipeline(guidance_embeds: bool = True) -> FluxPipeline:
    """Build the tiny FluxPipeline on CPU in fp32, deterministically, without network.
    guidance_embeds=False gives FLUX.1-schnell's layout (no guidance embedding)."""
    tok, tok2 = clip_tokenizer(), t5_tokenizer()
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG stream untouched
        torch.manual_seed(SEED)
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=4, joint_attention_dim=TEXT_DIM, pooled_projection_dim=TEXT_DIM,
            guidance_embeds=guidance_embeds, axes_dims_rope=(4, 6, 6))
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 8, 16, 16), layers_per_block=1, latent_channels=16, norm_num_groups=4,
            scaling_factor=FLUX_VAE_SCALING, shift_factor=FLUX_VAE_SHIFT,
            use_quant_conv=False, use_post_quant_conv=False)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=CLIP_VOCAB_SIZE, hidden_size=TEXT_DIM, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=77, projection_dim=TEXT_DIM,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
        text_encoder_2 = T5EncoderModel(T5Config(
            vocab_size=len(tok2), d_model=TEXT_DIM, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
            relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER), vae=vae,
        text_encoder=text_encoder, tokenizer=tok, text_encoder_2=text_encoder_2, tokenizer_2=tok2,
        transformer=transformer)
    for m in (transformer, vae, text_encoder, text_encoder_2):
        m.eval()
    return pipe
