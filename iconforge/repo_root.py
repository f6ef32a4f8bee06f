"""The repository a stage belongs to, also when DVC runs it in a throwaway copy.

`dvc exp run --queue` and `--temp` run the stages in a copy under
.dvc/tmp/exps/ that DVC deletes afterwards. For every stage command DVC sets
DVC_ROOT ("Root directory of your DVC repository. Automatically set by DVC.",
dvc.org/doc/user-guide/env); for those copies it names the original repository.
So the MLflow store and paths relative to the repo (fetch.url) resolve there,
where the workspace runs find them too, never inside the copy.
"""
from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    """DVC_ROOT when DVC runs the stage, else the cwd (stages run from the repo root)."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()
