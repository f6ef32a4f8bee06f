"""The LoRA adapter on the FLUX transformer: create it, snapshot it, save it where users load it.

Two files, both byte-stable (the same weights give the same bytes):

- pytorch_lora_weights.safetensors, diffusers' format (`transformer.<module>.lora_A/B.weight`),
  what `FluxPipeline.load_lora_weights`, ComfyUI's and Forge's LoRA loaders read;
- lora_kohya.safetensors, kohya's FLUX format (`lora_unet_<block>_<layer>`
  with lora_down/lora_up/alpha, q/k/v fused as in the original FLUX checkpoint), for
  kohya sd-scripts and the tools that expect it.

The trained scale alpha / rank is folded into lora_B, so both files mean scale 1.0 to every
loader: diffusers reads no alpha and assumes alpha = rank, ComfyUI and Forge read alpha only from
`.alpha` tensors (none in the diffusers file, alpha = rank in the kohya one). An alpha kept in
metadata would be ignored by ComfyUI and Forge (a rank-32/alpha-16 adapter applied at 2x).
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

import torch
from diffusers import FluxPipeline
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save

from iconforge.atomic import write_bytes
from iconforge.config import ConfigError


def add_lora(transformer: torch.nn.Module, rank: int, alpha: float, target_modules: tuple[str, ...],
             seed: int) -> None:
    """Attach a fresh trainable adapter, its random init drawn from `seed` alone."""
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=sorted(target_modules), init_lora_weights=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer.add_adapter(config)


def adapter_state(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights (peft key names, fp32, on CPU)."""
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in get_peft_model_state_dict(transformer).items()}


def load_adapter_state(transformer: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    result = set_peft_model_state_dict(transformer, state)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"adapter state does not fit this transformer: unexpected keys {result.unexpected_keys[:3]}")


def folded_state(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter with alpha / rank folded into every lora_B: B @ A is then the trained delta."""
    cfg = transformer.peft_config["default"]
    scale = cfg.lora_alpha / cfg.r
    return {k: v * scale if ".lora_B." in k else v for k, v in adapter_state(transformer).items()}


def weight_deltas(diffusers_file: Path) -> dict[str, torch.Tensor]:
    """The weight delta B @ A (fp64) each module of a saved adapter adds at strength 1.0, by module name."""
    state = {k.removeprefix("transformer."): v.double() for k, v in load_file(diffusers_file).items()}
    return {k.split(".lora_A.")[0]: state[k.replace(".lora_A.", ".lora_B.")] @ a
            for k, a in state.items() if ".lora_A." in k}


def adapter_metadata(transformer: torch.nn.Module) -> dict:
    """The peft config diffusers stores beside the weights, for the folded file (alpha = rank), with
    sets as sorted lists (diffusers would turn them into lists in hash order, changing bytes)."""
    meta = transformer.peft_config["default"].to_dict()
    meta["lora_alpha"] = meta["r"]
    return {k: sorted(v) if isinstance(v, set) else v for k, v in meta.items()}


def out_features(transformer: torch.nn.Module) -> dict[str, int]:
    """Output width of every linear layer (module name as in the adapter keys)."""
    return {name.replace(".base_layer", ""): m.out_features for name, m in transformer.named_modules()
            if isinstance(m, torch.nn.Linear) and "lora_" not in name}


def save_adapter(transformer: torch.nn.Module, diffusers_file: Path, kohya_file: Path,
                 dtype: torch.dtype = torch.float32) -> None:
    """Write the adapter in diffusers' and in kohya's format, each file atomically."""
    state = {k: v.to(dtype) for k, v in folded_state(transformer).items()}
    diffusers_file, kohya_file = Path(diffusers_file), Path(kohya_file)
    diffusers_file.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=diffusers_file.parent, prefix=".save-") as tmp:
        FluxPipeline.save_lora_weights(tmp, transformer_lora_layers=state, weight_name=diffusers_file.name,
                                       transformer_lora_adapter_metadata=adapter_metadata(transformer))
        canonicalize_safetensors(Path(tmp) / diffusers_file.name)
        os.replace(Path(tmp) / diffusers_file.name, diffusers_file)
    write_bytes(kohya_file, save(to_kohya(state, out_features(transformer))))


# diffusers module -> kohya layer, per block kind; a tuple of modules is one fused kohya layer,
# its parts stacked along the output rows in this order (as in the original FLUX checkpoint).
KOHYA_DOUBLE = {
    ("attn.to_q", "attn.to_k", "attn.to_v"): "img_attn_qkv",
    ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"): "txt_attn_qkv",
    ("attn.to_out.0",): "img_attn_proj",
    ("attn.to_add_out",): "txt_attn_proj",
    ("ff.net.0.proj",): "img_mlp_0",
    ("ff.net.2",): "img_mlp_2",
    ("ff_context.net.0.proj",): "txt_mlp_0",
    ("ff_context.net.2",): "txt_mlp_2",
    ("norm1.linear",): "img_mod_lin",
    ("norm1_context.linear",): "txt_mod_lin",
}
KOHYA_SINGLE = {
    ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"): "linear1",
    ("proj_out",): "linear2",
    ("norm.linear",): "modulation_lin",
}
KOHYA_BLOCKS = (("transformer_blocks", "double_blocks", KOHYA_DOUBLE),
                ("single_transformer_blocks", "single_blocks", KOHYA_SINGLE))
KOHYA_TOP = {"proj_out": "final_layer_linear"}  # outside the blocks (a target "proj_out" matches it too)


def check_exportable(transformer: torch.nn.Module) -> None:
    """Refuse, before training, LoRA targets that kohya's FLUX format has no name for."""
    try:
        to_kohya(adapter_state(transformer), out_features(transformer))
    except ValueError as e:
        raise ConfigError(f"train.targets: {e} (kohya export; see README: Use the adapter)") from None


def to_kohya(state: dict[str, torch.Tensor], widths: dict[str, int]) -> dict[str, torch.Tensor]:
    """A folded adapter (scale 1.0; peft keys, `transformer.` prefix optional) in kohya's FLUX format.

    A fused layer gets lora_down = the parts' A stacked (rank n*r) and a block-diagonal lora_up,
    with zero blocks for parts that were not trained; alpha = that rank, so alpha / rank = 1.
    `widths` gives each module's output width (for the zero rows of untrained parts).
    """
    state = {k.removeprefix("transformer."): v for k, v in state.items()}
    trained = {k.split(".lora_A.")[0] for k in state if ".lora_A." in k}
    out, done = {}, set()
    for prefix, kohya_block, layers in KOHYA_BLOCKS:
        blocks = sorted({int(m.split(".")[1]) for m in trained if m.startswith(prefix + ".")})
        for i in blocks:
            for parts, layer in layers.items():
                names = [f"{prefix}.{i}.{p}" for p in parts]
                if not any(n in trained for n in names):
                    continue
                a = [state[f"{n}.lora_A.weight"] for n in names if n in trained]
                rank, fan_in, dtype = a[0].shape[0], a[0].shape[1], a[0].dtype
                down = torch.cat([state[f"{n}.lora_A.weight"] if n in trained else torch.zeros(rank, fan_in, dtype=dtype)
                                  for n in names])
                up = torch.block_diag(*[state[f"{n}.lora_B.weight"] if n in trained
                                        else torch.zeros(widths[n], rank, dtype=dtype) for n in names])
                key = f"lora_unet_{kohya_block}_{i}_{layer}"
                out |= {f"{key}.lora_down.weight": down.contiguous(), f"{key}.lora_up.weight": up.contiguous(),
                        f"{key}.alpha": torch.tensor(float(down.shape[0]))}  # fp32: exact for any rank
                done.update(n for n in names if n in trained)
    for name, layer in KOHYA_TOP.items():
        if name in trained:
            key = f"lora_unet_{layer}"
            down = state[f"{name}.lora_A.weight"]
            out |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": state[f"{name}.lora_B.weight"],
                    f"{key}.alpha": torch.tensor(float(down.shape[0]))}
            done.add(name)
    missing = sorted(trained - done)
    if missing:
        raise ValueError(f"no kohya FLUX name for LoRA modules {missing[:3]}")
    return out


def canonicalize_safetensors(path: Path) -> None:
    """Rewrite a .safetensors header with sorted metadata keys.

    safetensors writes `__metadata__` in Rust hash-map order, which changes from
    process to process; tensor offsets are relative to the data section, so
    re-serializing the JSON header leaves the data untouched.
    """
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the format pads the header to 8-byte alignment
    write_bytes(path, struct.pack("<Q", len(text)) + text + raw[8 + n:])
