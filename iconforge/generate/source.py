"""Where the served model comes from: the workspace's models/, or any git revision or DVC
experiment read through DVC's Python API without checking it out.

For a revision, the base (models/base, a DVC output: base.json plus, for the tiny preset, the
saved pipeline), the adapter, params.yaml and models/run.json are copied from that revision
into a scratch folder; the working tree is never touched. What a result records about its model
(revision, commit, experiment, adapter sha256, trigger) comes from here.
"""
from __future__ import annotations

import contextlib
import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from iconforge import paths
from iconforge.config import PARAMS_FILE, CaptionConfig, SampleConfig, load, load_field
from iconforge.errors import InputError, StageError
from iconforge.flux.models import read_base
from iconforge.tables import read_json, require

WORKSPACE = "workspace"


@dataclass(frozen=True)
class ModelSource:
    root: Path  # folder laid out like the repository: models/base, models/lora, params.yaml
    revision: str  # what the user named: "workspace", a branch, tag, commit or experiment name
    commit: str  # the git commit it resolved to ("" for the workspace: it may differ from HEAD)
    experiment: str | None  # the DVC experiment that trained the adapter (models/run.json), if any
    base: str  # params' model.base as train_lora recorded it (base.json)
    trigger: str  # caption.trigger of that revision, prepended to every prompt
    defaults: SampleConfig  # that revision's sample params: default steps, guidance, size
    adapter_sha256: str

    @property
    def base_dir(self) -> Path:
        return self.root / paths.BASE

    @property
    def lora_file(self) -> Path:
        return self.root / paths.LORA_FILE


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def describe(root: Path, revision: str, commit: str) -> ModelSource:
    """Read and check what `root` holds; fails naming the missing or malformed file."""
    params = root / PARAMS_FILE
    require(params, root / paths.BASE_INFO, root / paths.LORA_FILE)
    run = root / paths.RUN_JSON
    experiment = read_json(run).get("dvc_exp_name") if run.exists() else None
    return ModelSource(root=root, revision=revision, commit=commit, experiment=experiment,
                       base=read_base(root / paths.BASE)["base"], trigger=load_field(CaptionConfig, "trigger", params),
                       defaults=load(SampleConfig, params), adapter_sha256=sha256_file(root / paths.LORA_FILE))


def workspace(root: Path | None = None) -> ModelSource:
    return describe(Path(root or paths.repo_root()), WORKSPACE, "")


@contextlib.contextmanager
def open_source(rev: str | None, repo: Path | None = None) -> Iterator[ModelSource]:
    """The workspace's model (rev None), or revision `rev`'s, copied into a temporary folder that is
    removed on exit: load what you need (Generator) inside the block."""
    if not rev:
        yield workspace(repo)
        return
    with tempfile.TemporaryDirectory(prefix="iconforge-rev-") as scratch:
        yield from_revision(rev, Path(scratch), repo)


def from_revision(rev: str, scratch: Path, repo: Path | None = None) -> ModelSource:
    """The model of git revision or DVC experiment `rev` of `repo`, copied into the folder `scratch`."""
    from dvc.api import DVCFileSystem
    from dvc.exceptions import DvcException
    from dvc.repo import Repo
    from dvc.scm import RevError, resolve_rev

    repo = Path(repo or paths.repo_root())
    try:
        with Repo(str(repo)) as r:
            commit = resolve_rev(r.scm, rev)
    except RevError:
        raise InputError(f"--rev {rev}: no such git revision or DVC experiment in {repo}") from None
    except DvcException as e:
        raise InputError(f"--rev {rev}: {repo} is not a usable DVC repository ({e})") from None
    root = Path(scratch)
    fs = DVCFileSystem(repo=str(repo), rev=commit)
    wanted = [(PARAMS_FILE.as_posix(), False), (paths.BASE.as_posix(), True), (paths.LORA_FILE.as_posix(), False),
              (paths.RUN_JSON.as_posix(), False)]
    for name, recursive in wanted:
        if not fs.exists(name):
            if name == paths.RUN_JSON.as_posix():
                continue  # optional: only names the experiment
            raise InputError(f"--rev {rev}: {name} is not in revision {commit[:12]} (was train_lora run there?)")
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        try:
            fs.get(name, str(root / name), recursive=recursive)
        except (DvcException, OSError) as e:
            raise StageError(f"--rev {rev}: cannot read {name} of {commit[:12]} from the DVC cache or remote "
                             f"(dvc pull / dvc fetch it first?): {e}") from None
    return describe(root, rev, commit)
