"""How much a quantized base changes the trained LoRA (train.quantize), on the tiny preset, on CPU.

    python bench/quantize_quality.py              # ~3 min on 2 cores
    python bench/quantize_quality.py --steps 12   # the settings of tests/test_quantize.py only

The same run (tests/train_setup.py's repo and recipe: seed, data, rank 4 / alpha 8, attention
targets, lr 2e-3, cosine) is trained by train_lora on the full-precision tiny base and on:

  int8      train.quantize=int8: the real path (torchao through diffusers' TorchAoConfig);
  nf4-sim   the full-precision path on a base whose transformer weights went through an NF4 round trip
            (torchao's to_nf4: 64-value blocks, double-quantized scales, as bitsandbytes' NF4 with
            double quant): the weight error of train.quantize=nf4, which needs CUDA, without its
            bf16 compute.

For each it reports the relative weight error of the quantized base, ||W_q - W|| / ||W||, and per
LoRA module the relative difference of the weight deltas ||dW_q - dW|| / ||dW|| (dW = B @ A, the
adapter loaded at strength 1.0 into the full-precision base). Writes bench/out/quantize_quality.json.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # run as a script from anywhere; train_setup's repo

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from iconforge.atomic import write_json  # noqa: E402
from iconforge.flux.quantize import delta_differences, load_transformer  # noqa: E402
from iconforge.paths import BASE, LORA_FILE  # noqa: E402
from train_setup import make_repo, run_in_process  # noqa: E402

WEIGHTS = BASE / "transformer" / "diffusion_pytorch_model.safetensors"


def nf4_round_trip(w: torch.Tensor) -> torch.Tensor:
    from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import to_nf4

    blocks = w.numel() // 64
    scaler_block = math.gcd(blocks, 256)  # torchao needs it to divide the number of blocks (256 for FLUX's)
    return to_nf4(w, 64, scaler_block).get_original_weight().to(w.dtype)


def nf4_base(repo: Path) -> None:
    """Replace the repo's base transformer weights by their NF4 round trip (2-D weights of linear layers)."""
    state = load_file(repo / WEIGHTS)
    save_file({k: nf4_round_trip(v) if v.dim() == 2 and v.numel() % 64 == 0 else v for k, v in state.items()},
              repo / WEIGHTS, metadata={"format": "pt"})


def weight_error(full: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> float:
    """||W_q - W|| / ||W|| over all 2-D weights together."""
    keys = [k for k, v in full.items() if v.dim() == 2]
    num = sum(float((other[k].float() - full[k].float()).norm() ** 2) for k in keys)
    return math.sqrt(num / sum(float(full[k].float().norm() ** 2) for k in keys))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", default="12,40", help="comma-separated training lengths (default 12,40)")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "quantize_quality.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-quantize-") as tmp:
        store = f"sqlite:///{tmp}/mlflow.db"
        for steps in map(int, args.steps.split(",")):
            recipe = dict(steps=steps, checkpoint_every=steps, val_every=steps)
            repos = {m: make_repo(Path(tmp) / f"{m}-{steps}", quantize=q, **recipe)
                     for m, q in (("none", "none"), ("int8", "int8"), ("nf4-sim", "none"))}
            nf4_base(repos["nf4-sim"])
            for repo in repos.values():
                run_in_process(repo, store)
            full = load_file(repos["none"] / WEIGHTS)
            int8 = load_transformer(repos["int8"] / BASE, "int8", torch.float32).state_dict()
            errors = {"int8": weight_error(full, {k: v.dequantize() if hasattr(v, "dequantize") else v
                                                  for k, v in int8.items()}),
                      "nf4-sim": weight_error(full, load_file(repos["nf4-sim"] / WEIGHTS))}
            for mode, err in errors.items():
                diff = delta_differences(repos["none"] / LORA_FILE, repos[mode] / LORA_FILE)
                results[f"{mode}@{steps}"] = {"mode": mode, "steps": steps, "weight_error": err,
                                              "delta_difference_median": median(diff.values()),
                                              "delta_difference_max": max(diff.values()), "per_module": diff}
    print("| base | steps | weight error | delta difference, median | max |\n| --- | ---: | ---: | ---: | ---: |")
    for r in results.values():
        print(f"| {r['mode']} | {r['steps']} | {r['weight_error']:.4f} | {r['delta_difference_median']:.4f} "
              f"| {r['delta_difference_max']:.4f} |")
    write_json(args.json, {"meta": {"torch": torch.__version__, "load_average": os.getloadavg()}, "runs": results})
    print(f"-> {args.json}")


if __name__ == "__main__":
    main()
