"""dvc.yaml agrees with the code: each stage's deps, outs, metrics and plots are exactly the
contract paths (iconforge.paths) its module uses, its code deps are exactly the modules it
imports (transitively), and its params are exactly the leaf keys its results depend on.
Every contract path literal is written once, in iconforge/paths.py."""
from __future__ import annotations

import ast
import copy
import subprocess
from pathlib import Path, PurePosixPath

import pytest
import yaml

from conftest import ROOT
from iconforge import config, paths

CODE_DIRS = ("stages", "iconforge")


def dvc_stages(dvc_yaml: dict | None = None) -> dict[str, dict]:
    return (dvc_yaml or yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8")))["stages"]


def entries(stage: dict, *kinds: str) -> set[str]:
    """Paths listed under `kinds` (deps, outs, metrics, plots), with or without per-path options."""
    out = set()
    for kind in kinds:
        for item in stage.get(kind) or []:
            out.add(next(iter(item)) if isinstance(item, dict) else item)
    return out


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imported_modules(tree: ast.AST) -> set[str]:
    """Modules imported anywhere in the file (function-local imports too, not TYPE_CHECKING blocks)."""
    found, todo = set(), [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            todo.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from iconforge import paths`
        todo.extend(ast.iter_child_nodes(node))
    return found


def module_file(name: str) -> Path | None:
    """The project file of module `name` (iconforge.x.y or stages.x), None for other packages."""
    if name.split(".")[0] not in CODE_DIRS:
        return None
    base = ROOT / Path(*name.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def import_closure(stage_file: Path) -> set[str]:
    """Project files a stage module runs: itself and every module it imports, transitively, with the
    package __init__ files on the way when they hold code. Paths relative to the repo root."""
    seen: set[Path] = set()
    todo = [stage_file]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        for name in _imported_modules(ast.parse(f.read_text(encoding="utf-8"))):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                g = module_file(".".join(parts[:i]))
                if g is not None:
                    todo.append(g)
    return {f.relative_to(ROOT).as_posix() for f in seen if f.name != "__init__.py" or _has_code(f)}


def _has_code(f: Path) -> bool:
    """More than a docstring."""
    body = ast.parse(f.read_text(encoding="utf-8")).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body)


def contract_paths_used(stage_file: Path) -> set[str]:
    """The values of every `paths.NAME` the stage module uses that is a contract path."""
    used = set()
    for node in ast.walk(ast.parse(stage_file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "paths":
            value = getattr(paths, node.attr)
            if isinstance(value, Path):
                used.add(value.as_posix())
    return used


def params_read(stage_file: Path) -> set[str]:
    """Leaf keys the stage's results depend on: every non-operational field of a section it
    load()s, and each non-operational field it load_field()s."""
    keys = set()
    for node in ast.walk(ast.parse(stage_file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args:
            cls = getattr(config, getattr(node.args[0], "id", ""), None)
            if node.func.id == "load":
                keys |= set(cls.result_keys())
            elif node.func.id == "load_field" and node.args[1].value not in cls.operational():
                keys.add(f"{cls.section}.{node.args[1].value}")
    return keys


def inside(path: str, roots: set[str]) -> bool:
    return any(PurePosixPath(path) == PurePosixPath(r) or PurePosixPath(r) in PurePosixPath(path).parents
               for r in roots)


def disagreements(stages: dict[str, dict]) -> list[str]:
    """Every way dvc.yaml and the stage modules disagree, one line each (empty when they agree)."""
    problems = []
    for name, stage in stages.items():
        module = ROOT / "stages" / f"{name}.py"
        if stage.get("cmd") != f"python -m stages.{name}":
            problems.append(f"{name}: cmd is not `python -m stages.{name}`")
        deps = entries(stage, "deps")
        code_deps = {d for d in deps if d.split("/")[0] in CODE_DIRS}
        for f in sorted(import_closure(module)):
            if not inside(f, code_deps):
                problems.append(f"{name}: runs {f}, which is not a dep")
        closure = import_closure(module)
        for d in sorted(code_deps):
            files = [p.relative_to(ROOT).as_posix() for p in (ROOT / d).rglob("*.py")] if (ROOT / d).is_dir() else [d]
            for f in files:
                if f not in closure and not (f.endswith("__init__.py") and not _has_code(ROOT / f)):
                    problems.append(f"{name}: dep {d} holds {f}, code the stage does not import")
        declared = (deps - code_deps) | entries(stage, "outs", "metrics", "plots")
        used = contract_paths_used(module)
        for p in sorted(used):
            if not inside(p, declared):
                problems.append(f"{name}: uses {p}, which is not among its deps/outs/metrics/plots")
        for p in sorted(declared - used):
            problems.append(f"{name}: declares {p}, which its code does not use")
        declared_params = set(stage.get("params") or [])
        for k in sorted(params_read(module) ^ declared_params):
            problems.append(f"{name}: param {k} " + ("is read but not declared" if k not in declared_params
                                                     else "is declared but does not change its results"))
    return problems


def test_dvc_yaml_matches_what_each_stage_reads_and_writes():
    assert disagreements(dvc_stages()) == []


@pytest.mark.parametrize("stage,kind,entry", [
    ("train_lora", "deps", "iconforge/tracking.py"),  # a module it imports
    ("sample", "deps", "iconforge/flux/tiny.py"),  # imported by a function of a module it imports
    ("caption", "deps", "data/raster_rejects.csv"),  # an input it reads
    ("filter_license", "deps", "data/source.json"),  # where the credits' commit comes from
    ("rasterize", "outs", "data/raster_backgrounds.csv"),
])
def test_the_check_fails_when_an_entry_is_removed(stage, kind, entry):
    stages = copy.deepcopy(dvc_stages())
    before = len(stages[stage][kind])
    stages[stage][kind] = [e for e in stages[stage][kind] if (next(iter(e)) if isinstance(e, dict) else e) != entry]
    assert len(stages[stage][kind]) == before - 1, f"{entry} is not in {stage}.{kind}"
    assert any(entry in line for line in disagreements(stages))


def test_the_check_fails_on_an_operational_param_or_a_missing_result_param():
    stages = copy.deepcopy(dvc_stages())
    stages["rasterize"]["params"].append("rasterize.workers")
    stages["train_lora"]["params"].remove("train.rank")
    assert {"rasterize: param rasterize.workers is declared but does not change its results",
            "train_lora: param train.rank is read but not declared"} <= set(disagreements(stages))


def test_every_stage_module_is_a_stage():
    assert {p.stem for p in (ROOT / "stages").glob("*.py") if p.stem != "__init__"} == set(dvc_stages())


def _literals(files: list[str]) -> dict[str, list[str]]:
    """String literals of the given Python files, with where each occurs."""
    where: dict[str, list[str]] = {}
    for f in files:
        for node in ast.walk(ast.parse((ROOT / f).read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                where.setdefault(node.value, []).append(f"{f}:{node.lineno}")
    return where


def test_each_contract_path_is_written_once_in_the_library():
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "iconforge", "stages",
                            "bench"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    literals = _literals([f for f in files if f.endswith(".py") and (ROOT / f).is_file()])
    contract = {v.as_posix() for v in vars(paths).values() if isinstance(v, Path)}
    names = {v for k, v in vars(paths).items() if k.isupper() and isinstance(v, str)}
    for text in sorted(t for t in contract | names if "/" in t or "." in t):  # "samples" is a JSON key too
        places = literals.get(text, [])
        assert len(places) <= 1 and all(w.startswith("iconforge/paths.py:") for w in places), (text, places)
