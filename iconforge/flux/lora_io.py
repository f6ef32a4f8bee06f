"""The LoRA adapter on the FLUX transformer: create it, snapshot it, save it for diffusers.

The saved file is what `FluxPipeline.load_lora_weights` reads (keys
`transformer.…`, rank and alpha in the file's adapter metadata, so alpha != rank
scales correctly), and it is byte-stable: the same weights give the same bytes.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from diffusers import FluxPipeline
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict

from iconforge.atomic import atomic_dir, write_bytes
from iconforge.paths import ADAPTER_FILE


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


def adapter_metadata(transformer: torch.nn.Module) -> dict:
    """The peft config diffusers stores beside the weights, with sets as sorted lists
    (diffusers would turn them into lists in hash order, changing bytes run to run)."""
    meta = transformer.peft_config["default"].to_dict()
    return {k: sorted(v) if isinstance(v, set) else v for k, v in meta.items()}


def save_adapter(transformer: torch.nn.Module, out_dir: Path) -> Path:
    """Write `out_dir`/pytorch_lora_weights.safetensors in diffusers' LoRA format, atomically."""
    with atomic_dir(Path(out_dir)) as tmp:
        FluxPipeline.save_lora_weights(tmp, transformer_lora_layers=adapter_state(transformer),
                                       transformer_lora_adapter_metadata=adapter_metadata(transformer))
        canonicalize_safetensors(tmp / ADAPTER_FILE)
    return Path(out_dir) / ADAPTER_FILE


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
