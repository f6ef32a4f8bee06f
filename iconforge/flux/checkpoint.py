"""Training checkpoints: everything needed to continue an interrupted run exactly where it stopped.

A checkpoint is a folder models/checkpoints/step-NNNNNNNN/ (written atomically,
the last KEEP kept) with the adapter weights, the optimizer / LR scheduler /
grad-scaler states, the RNG states of every process, the loss history and the
hash of the params it was trained with; a run resumes only from a checkpoint
with the same hash. Per-step randomness and data order are functions of
(seed, step), so a resumed run continues bit for bit like an uninterrupted one.
Once a run has succeeded its checkpoints are of no use: the folder is emptied.
"""
from __future__ import annotations

import io
import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save

from iconforge.atomic import atomic_dir

KEEP = 2
PREFIX = "step-"


@dataclass
class Checkpoint:
    step: int
    meta: dict  # params_hash, mlflow run id, loss history...
    adapter: dict[str, torch.Tensor]
    state: dict  # optimizer, lr_scheduler, scaler, rng (a list: one rng_state() per process)


def _dirs(root: Path) -> list[tuple[int, Path]]:
    found = [(int(p.name[len(PREFIX):]), p) for p in Path(root).glob(f"{PREFIX}*")
             if p.is_dir() and p.name[len(PREFIX):].isdigit()]
    return sorted(found)


def rng_state() -> dict:
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, gauss],
            "python": random.getstate()}


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    kind, key, pos, has_gauss, gauss = s["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(s["python"])


def save_checkpoint(root: Path, ckpt: Checkpoint) -> Path:
    dest = Path(root) / f"{PREFIX}{ckpt.step:08d}"
    # Serialized in memory first: torch.save's own writer turns a full disk into an opaque RuntimeError,
    # and the exact size lets a full disk be reported with the space needed.
    state = io.BytesIO()
    torch.save(ckpt.state, state)
    files = {"adapter.safetensors": save(ckpt.adapter), "state.pt": state.getvalue(),
             "meta.json": (json.dumps({"step": ckpt.step, **ckpt.meta}, indent=2, sort_keys=True) + "\n").encode()}
    with atomic_dir(dest, needed=sum(map(len, files.values()))) as tmp:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
    for _, old in _dirs(root)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return dest


def latest_checkpoint(root: Path) -> Checkpoint | None:
    """The newest complete checkpoint under `root`, or None."""
    found = _dirs(root)
    if not found:
        return None
    step, path = found[-1]
    meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    meta.pop("step", None)
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    return Checkpoint(step, meta, load_file(path / "adapter.safetensors"), state)


def clear_checkpoints(root: Path, keep: tuple[str, ...] = ()) -> None:
    """Empty `root` (checkpoints, leftovers of interrupted writes, caches) except the entries named
    in `keep`; the folder itself stays, as DVC tracks it."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for p in sorted(root.iterdir()):
        if p.name in keep:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
