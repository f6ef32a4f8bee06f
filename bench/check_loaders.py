"""Check the saved adapter against ComfyUI's own LoRA code, for whoever has a ComfyUI checkout.

    COMFYUI_PATH=/path/to/ComfyUI python bench/check_loaders.py [REPO]

REPO (default: this project) holds models/base and models/lora as train_lora left them. For every
LoRA module, the weight delta ComfyUI's `LoRAAdapter.calculate_weight` adds (strength 1.0) to a
zero weight, from the diffusers file and from the kohya file (fused layers sliced in part order),
is compared with the delta diffusers applies after `load_lora_weights`. tests/test_adapter.py
checks the same with ComfyUI's rule written out; this runs the real code. Exits 1 on a mismatch.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from iconforge import paths  # noqa: E402
from iconforge.flux.lora_io import KOHYA_BLOCKS  # noqa: E402
from iconforge.flux.models import ALLOW_CPU_ENV, load_pipeline  # noqa: E402


def comfy_delta(adapter_module, sd: dict, key: str, shape: tuple[int, int]) -> torch.Tensor:
    """What ComfyUI adds to a weight of `shape` for LoRA `key` of state dict `sd` (alpha as load_lora reads it)."""
    alpha = sd[f"{key}.alpha"].item() if f"{key}.alpha" in sd else None
    adapter = adapter_module.LoRAAdapter.load(key, sd, alpha, None)
    if adapter is None:
        raise SystemExit(f"ComfyUI found no LoRA weights for {key}")
    return adapter.calculate_weight(torch.zeros(shape), key, 1.0, 1.0, None, lambda w: w)


def main() -> int:
    comfy = os.environ.get("COMFYUI_PATH")
    if not comfy or not (Path(comfy) / "comfy" / "weight_adapter" / "lora.py").is_file():
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout (the folder with comfy/weight_adapter/lora.py)")
    sys.path.insert(0, comfy)
    import comfy.weight_adapter.lora as comfy_lora

    repo = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    os.environ.setdefault(ALLOW_CPU_ENV, "1")  # only the transformer's LoRA layers are read, nothing runs
    os.chdir(repo)  # a relative local model.base resolves as it did for the stages
    pipe = load_pipeline(paths.BASE, text_encoder=None, text_encoder_2=None, vae=None)
    pipe.load_lora_weights(paths.LORA, weight_name=paths.ADAPTER_FILE, adapter_name="x")
    want = {n: m.scaling["x"] * m.lora_B["x"].weight.float() @ m.lora_A["x"].weight.float()
            for n, m in pipe.transformer.named_modules() if hasattr(m, "lora_B") and "x" in m.lora_B}
    diffusers_sd = load_file(paths.LORA_FILE)
    kohya_sd = load_file(paths.LORA_KOHYA_FILE)
    worst = 0.0
    for name, delta in want.items():
        worst = max(worst, (comfy_delta(comfy_lora, diffusers_sd, f"transformer.{name}", delta.shape) - delta).abs().max())
    for prefix, kohya_block, layers in KOHYA_BLOCKS:
        for i in range(len(getattr(pipe.transformer, prefix))):
            for parts, layer in layers.items():
                key = f"lora_unet_{kohya_block}_{i}_{layer}"
                if f"{key}.lora_down.weight" not in kohya_sd:
                    continue
                names = [f"{prefix}.{i}.{p}" for p in parts]
                widths = [pipe.transformer.get_submodule(n).base_layer.out_features
                          if hasattr(pipe.transformer.get_submodule(n), "base_layer")
                          else pipe.transformer.get_submodule(n).out_features for n in names]
                fused = comfy_delta(comfy_lora, kohya_sd, key, (sum(widths), kohya_sd[f"{key}.lora_down.weight"].shape[1]))
                for n, chunk in zip(names, fused.split(widths)):
                    expected = want.get(n, torch.zeros_like(chunk))
                    worst = max(worst, (chunk - expected).abs().max())
    print(f"{len(want)} LoRA modules; largest |ComfyUI delta - diffusers delta| = {worst:.3g}")
    return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
