"""Shared test setup. One torch thread: on a shared 2-core box OpenMP
oversubscription makes two threads 10-45x slower."""
import os
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "bioicons"
SAMPLE_ARCHIVE = SHARED / "bioicons-sample.tar.gz"
FULL_ARCHIVE = SHARED / "bioicons-f3f18b86.tar.gz"

# What `make demo` or a user's `dvc exp run` leaves behind in the workspace; tests never read it.
WORKSPACE_OUTPUTS = ("data/", "models/", "metrics/", "samples/", "dvc.lock", "mlflow.db", "mlartifacts/")


def committed_text(rel: str) -> str:
    """A project file as committed (HEAD), not as the workspace has it: `dvc exp run` rewrites
    params.yaml in place (DVC writes `mixed_precision: no` unquoted, among others)."""
    out = subprocess.run(["git", "show", f"HEAD:{rel}"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode == 0:
        return out.stdout
    return (ROOT / rel).read_text(encoding="utf-8")  # not a git checkout (an unpacked release)


def committed_params() -> dict:
    """The committed params.yaml, read as DVC reads it (YAML 1.2)."""
    from iconforge.config import parse_params
    return parse_params(committed_text("params.yaml"))


needs_sample = pytest.mark.skipif(not SAMPLE_ARCHIVE.exists(), reason="../shared/bioicons snapshot absent")
needs_full = pytest.mark.skipif(not FULL_ARCHIVE.exists(), reason="../shared/bioicons full snapshot absent")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory):
    """A copy of the project as its own git+DVC repo, every stage reproduced
    with demo.yaml's params (tiny preset, sample snapshot) and committed.
    Shared by several tests: do not modify it; copy it (shutil.copytree) first."""
    if not SAMPLE_ARCHIVE.exists():
        pytest.skip("../shared/bioicons snapshot absent")
    import pipeline_repo

    repo = pipeline_repo.make_repo(tmp_path_factory.mktemp("tiny") / "repo")
    pipeline_repo.dvc(repo, "repro")  # how long it takes is bench/pipeline.py's business, not a test's
    pipeline_repo.git(repo, "add", "-A")
    pipeline_repo.git(repo, "commit", "-q", "-m", "reproduced")
    return repo
