"""train.quantize: keep the frozen base transformer quantized while the LoRA trains on top (QLoRA).

The base is loaded through diffusers' own quantization config, peft wraps the quantized
linear layers, and the adapter trains in fp32 as with an unquantized base; its file has the
same keys and loads into the unquantized base. What a mode stores and needs:

| mode | backend (diffusers config)                  | base weights                     | runs on     |
| ---- | ------------------------------------------- | -------------------------------- | ----------- |
| none | -                                           | train.mixed_precision's dtype    | CPU, CUDA   |
| int8 | torchao Int8WeightOnlyConfig (TorchAoConfig)| int8, one scale per output row   | CPU, CUDA   |
| nf4  | bitsandbytes NF4 4-bit (BitsAndBytesConfig) | 4-bit NF4, double-quantized scale| CUDA only   |

nf4 is CUDA-only because diffusers' bitsandbytes quantizer refuses to load without a GPU. No fp8:
peft's LoRA layer for torchao accepts int8 weights only, and optimum-quanto (fp8 with peft) has had
no release since 0.2.7 (March 2025).

The mode names are iconforge.config's QUANTIZE_MODES; torch and the backends are imported lazily.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from iconforge.config import QUANTIZE_MODES, ConfigError


@dataclass(frozen=True)
class Backend:
    package: str  # the import name, checked before any work
    pin: str  # what to pip install (requirements.txt pins torchao; bitsandbytes is for CUDA machines only)
    cuda_only: bool


BACKENDS = {"int8": Backend("torchao", "torchao==0.18.0", cuda_only=False),
            "nf4": Backend("bitsandbytes", "bitsandbytes==0.50.2", cuda_only=True)}  # every mode but none


def check_runnable(mode: str) -> None:
    """Refuse, before any work, a mode whose backend is missing or cannot run on this machine."""
    import torch

    backend = BACKENDS.get(mode)
    if backend is None:
        return
    if backend.cuda_only and not torch.cuda.is_available():
        here = " or ".join(m for m in QUANTIZE_MODES if m not in BACKENDS or not BACKENDS[m].cuda_only)
        raise ConfigError(f"train.quantize: {mode} ({backend.package}) needs a CUDA GPU; use {here} on this machine, "
                          f"got '{mode}'")
    if importlib.util.find_spec(backend.package) is None:
        raise ConfigError(f"train.quantize: {mode} needs the {backend.package} package (pip install {backend.pin}), "
                          f"which is not installed")


def quantization_config(mode: str, compute_dtype):
    """diffusers' quantization config for `mode` (None for none); matmuls run in compute_dtype."""
    if mode == "int8":
        from diffusers import TorchAoConfig
        from torchao.quantization import Int8WeightOnlyConfig

        return TorchAoConfig(Int8WeightOnlyConfig())
    if mode == "nf4":
        from diffusers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype)
    return None


def load_transformer(source: Path, mode: str, dtype):
    """The base FLUX transformer of the diffusers folder `source`, quantized by `mode` while loading.
    torchao quantizes on the CPU (the caller moves the model); bitsandbytes loads onto the GPU itself."""
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel.from_pretrained(source, subfolder="transformer", dtype=dtype,
                                                  quantization_config=quantization_config(mode, dtype))


def delta_differences(reference: Path, other: Path) -> dict[str, float]:
    """Per module, ||dW_other - dW_ref|| / ||dW_ref|| (Frobenius) of two saved adapters' weight deltas
    B @ A: how far training on a quantized base moved the adapter from the one trained on the full base."""
    from iconforge.flux.lora_io import weight_deltas

    ref, oth = weight_deltas(reference), weight_deltas(other)
    return {name: float((oth[name] - d).norm() / d.norm()) for name, d in sorted(ref.items())}
