"""Benchmark the tiny end-to-end pipeline: start-up cost of each stage and `dvc repro` times.

    python bench/pipeline.py                                   # the working tree
    python bench/pipeline.py --before HEAD                     # + the same tree with HEAD's files, side by side
    python bench/pipeline.py --before HEAD --only stages/sample.py stages/evaluate.py

Each measured tree is a throwaway git + DVC copy of the project with demo.yaml's
overrides (tests/pipeline_repo.make_repo: tiny preset, 212-icon sample snapshot).
With --before REV a second copy takes the files that differ from REV (all of them,
or those under --only) from REV, and every measurement runs on both copies in the
same run, interleaved where it is cheap, so the ratios share the machine's load:

  1. import cost of the heavy dependencies alone (python -c "import X" minus a bare start);
  2. `import stages.X` per stage (wall time minus a bare interpreter start, best of --repeat)
     and which heavy packages it pulls in;
  3. fail-fast: time until the stage exits on an unknown key in its params section;
  4. `dvc repro --single-item <stage>` for the stages in order (per-stage wall time);
  5. the no-op `dvc repro` once everything is up to date (best of --repeat);
  6. the whole `dvc repro` in a fresh copy;
  7. hashes of every stage's outputs (data/png, data/dataset, models/lora, samples/, ...)
     from 4 and from 6, in pipeline order: the first that differs names the stage that
     is not reproducible across runs;
  8. with --before, the swap check: the reproduced "after" copy gets the --before files
     back and `dvc repro` re-runs what they touch on the very same inputs; its outputs
     must be byte-identical to the "after" ones.
Needs ../shared/bioicons/bioicons-sample.tar.gz. About 5 minutes per tree on 2 cores.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # run as a script from anywhere; tests/ for pipeline_repo

import yaml  # noqa: E402

import pipeline_repo  # noqa: E402  (its conftest import sets one torch thread and HF offline)
from conftest import SAMPLE_ARCHIVE  # noqa: E402
from iconforge import paths  # noqa: E402
from iconforge.atomic import write_json  # noqa: E402

HEAVY = {"torch": "import torch", "diffusers FluxPipeline": "from diffusers import FluxPipeline",
         "transformers T5/CLIP": "from transformers import CLIPTextModel, T5EncoderModel",
         "open_clip": "import open_clip", "mlflow": "import mlflow", "accelerate": "import accelerate",
         "peft": "import peft", "requests": "import requests", "cairosvg": "import cairosvg"}
PACKAGES = ("torch", "diffusers", "transformers", "open_clip", "mlflow", "accelerate", "peft", "requests",
            "cairosvg")
# Outputs hashed, in pipeline order, so the first one that differs names the stage that diverged.
OUTPUTS = {str(p) + label: (p, pattern) for p, label, pattern in [
    (paths.MANIFEST, "", ""), (paths.FILTERED, "", ""), (paths.PNG, "", "**/*"), (paths.DATASET, "", "**/*"),
    (paths.LORA_FILE, "", ""), (paths.LORA_KOHYA_FILE, "", ""), (paths.SAMPLES, " (png)", "**/*.png"), (paths.SAMPLES, " (all)", "**/*"),
    (paths.EVAL_METRICS, "", "")]}


def loadavg() -> str:
    return "load %.1f" % os.getloadavg()[0]


def timed(repo: Path, *cmd: str, check: bool = True) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    out = subprocess.run(cmd, cwd=repo, env=pipeline_repo.env(), capture_output=True, text=True, timeout=1800)
    s = time.perf_counter() - t
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} in {repo} exited {out.returncode}\n{out.stdout}\n{out.stderr}")
    return s, out


def bare_start(repeat: int) -> float:
    return min(timed(ROOT, sys.executable, "-c", "pass")[0] for _ in range(repeat))


def stages_and_sections() -> dict[str, str]:
    """Stage -> the params section it reads first, in pipeline order (dvc.yaml's order)."""
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    return {name: str(s["params"][0]).split(".")[0] for name, s in spec.items()}


def files_at(rev: str, only: list[str]) -> dict[str, bytes | None]:
    """The files that differ between the working tree and `rev` (under `only`), with their content
    at `rev` (None: not there). params.yaml stays the copy's own, with demo.yaml's overrides."""
    changed = pipeline_repo.run(ROOT, "git", "diff", "--name-only", rev, "--", *only).split()
    added = pipeline_repo.run(ROOT, "git", "ls-files", "--others", "--exclude-standard", "--", *only).split()
    files = {}
    for path in sorted(set(changed + added) - {"params.yaml"}):
        old = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True)
        files[path] = old.stdout if old.returncode == 0 else None
    return files


def put_files(repo: Path, files: dict[str, bytes | None], message: str) -> None:
    for path, data in files.items():
        if data is None:
            (repo / path).unlink(missing_ok=True)
        else:
            (repo / path).write_bytes(data)
    pipeline_repo.git(repo, "add", "-A")
    pipeline_repo.git(repo, "commit", "-q", "--allow-empty", "-m", message)


def make_tree(dest: Path, files: dict[str, bytes | None] | None) -> Path:
    """A reproducible copy of the working tree, with `files` put in place (the --before tree)."""
    repo = pipeline_repo.make_repo(dest)
    if files is not None:
        put_files(repo, files, "files of the --before revision")
    return repo


def import_time(repo: Path, module: str, start: float) -> tuple[float, list[str]]:
    """Wall time of importing `module` beyond a bare interpreter, and the heavy packages it loaded."""
    s, out = timed(repo, sys.executable, "-X", "importtime", "-c", f"import {module}")
    loaded = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    return max(s - start, 0.0), [p for p in PACKAGES if p in loaded]


def fail_fast(repo: Path, stage: str, section: str) -> float:
    """Seconds until the stage stops on an unknown key in its params section (params.yaml restored after)."""
    params = repo / "params.yaml"
    original = params.read_bytes()
    bad = yaml.safe_load(original)
    bad[section]["bench_unknown_key"] = 1
    params.write_text(yaml.safe_dump(bad, sort_keys=False), encoding="utf-8")
    try:
        s, out = timed(repo, sys.executable, "-m", f"stages.{stage}", check=False)
    finally:
        params.write_bytes(original)
    if out.returncode == 0 or "bench_unknown_key" not in out.stderr:
        raise RuntimeError(f"{stage}: expected a ConfigError naming bench_unknown_key, got rc {out.returncode}:\n"
                           f"{out.stderr[-2000:]}")
    return s


def tree_hash(root: Path, pattern: str) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in root.glob(pattern) if p.is_file()):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


def output_hashes(repo: Path) -> dict[str, str]:
    out = {}
    for k, (rel, pattern) in OUTPUTS.items():
        path = repo / rel
        out[k] = tree_hash(path, pattern) if pattern else hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return out


def first_difference(x: dict[str, str], y: dict[str, str]) -> str:
    return next((k for k in OUTPUTS if x[k] != y[k]), "none")


def ratio(after: float | None, before: float | None) -> str:
    return f"{after / before:.2f}" if after is not None and before else "-"


def report(meta: dict, deps: dict[str, float], result: dict, stages: list[str]) -> None:
    """The markdown tables (and the verdicts on reproducibility) from the measurements."""
    labels = [lb for lb in ("before", "after") if lb in result]
    print(f"\n{meta['date']}, {meta['machine']}, load average {meta['load_average_start'][0]:.1f} at start, "
          f"{meta['load_average_end'][0]:.1f} at end\n")
    print("| dependency | import s |\n| --- | ---: |")
    for k, v in deps.items():
        print(f"| {k} | {v:.2f} |")

    a = result["after"]
    b = result.get("before")
    cols = lambda name: f"{name} before | {name} after | ratio" if b else name  # noqa: E731
    print(f"\n| stage | {cols('import s')} | {cols('fail-fast s')} | {cols('dvc repro s')} | heavy imports |")
    print("| --- " * (2 + (9 if b else 3)) + "|")
    for stage in stages:
        ra = a["stages"][stage]
        cells = []
        for key in ("import_s", "fail_fast_s", "repro_s"):
            if b:
                rb = b["stages"][stage]
                cells += [f"{rb[key]:.2f}", f"{ra[key]:.2f}", ratio(ra[key], rb[key])]
            else:
                cells.append(f"{ra[key]:.2f}")
        heavy = ", ".join(ra["imports"]) or "-"
        if b and b["stages"][stage]["imports"] != ra["imports"]:
            heavy = f"{', '.join(b['stages'][stage]['imports']) or '-'} -> {heavy}"
        print(f"| {stage} | " + " | ".join(cells) + f" | {heavy} |")

    print(f"\n| pipeline | {'before | after | ratio' if b else 'seconds'} |")
    print("| --- | ---: |" + (" ---: | ---: |" if b else ""))
    for key, what in (("per_stage_total_s", "sum of the per-stage `dvc repro --single-item`"),
                      ("full_repro_s", "whole `dvc repro`, fresh copy"),
                      ("noop_s", "no-op `dvc repro` (all up to date)")):
        print(f"| {what} | " + (f"{b[key]:.1f} | {a[key]:.1f} | {ratio(a[key], b[key])} |" if b else f"{a[key]:.1f} |"))

    print("\n| output | " + " | ".join(f"{lb} stage by stage | {lb} whole" for lb in labels)
          + (" | after copy, before code |" if b else " |"))
    print("| --- " * (1 + 2 * len(labels) + (1 if b else 0)) + "|")
    for k in OUTPUTS:
        cells = [h for lb in labels for h in (result[lb]["hashes"][k], result[lb]["whole_hashes"][k])]
        if b:
            cells.append(result["swap"]["hashes"][k])
        print(f"| {k} | " + " | ".join(cells) + " |")
    for lb in labels:
        print(f"\n{lb}: first output that differs between the stage-by-stage and the whole run: "
              f"{first_difference(result[lb]['hashes'], result[lb]['whole_hashes'])}")
    if b:
        print(f"before vs after (independent runs): first difference "
              f"{first_difference(b['hashes'], a['hashes'])}")
        print(f"before code vs after code on the same inputs (swap; DVC re-ran "
              f"{', '.join(result['swap']['stages_run']) or 'nothing'}): first difference "
              f"{first_difference(result['swap']['hashes'], a['hashes'])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", metavar="REV", help="also measure the tree with the files that differ from REV")
    ap.add_argument("--only", nargs="*", default=[], help="with --before: only these paths go back to REV")
    ap.add_argument("--repeat", type=int, default=3, help="repeats of the cheap measurements (best is kept)")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "pipeline.json")
    args = ap.parse_args()
    if not SAMPLE_ARCHIVE.exists():
        sys.exit(f"pipeline: {SAMPLE_ARCHIVE} is missing (the tiny pipeline fetches it)")
    stages = stages_and_sections()
    labels = (["before"] if args.before else []) + ["after"]
    t0 = time.perf_counter()
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": f"{os.cpu_count()} cores, {cpu}",
            "python": platform.python_version(), **{p: version(p) for p in ("dvc", "torch", "diffusers", "mlflow")},
            "before": args.before, "only": args.only, "repeat": args.repeat, "load_average_start": os.getloadavg()}
    print(f"{meta['machine']}; Python {meta['python']}, dvc {meta['dvc']}, torch {meta['torch']}; {loadavg()}")

    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        tmp = Path(tmp)
        print("making the copies ...", flush=True)
        before = files_at(args.before, args.only) if args.before else {}
        for path, data in before.items():
            print(f"  before: {path} {'as of ' + args.before if data is not None else 'removed'}")
        steps = {lb: make_tree(tmp / f"{lb}-steps", before if lb == "before" else None) for lb in labels}
        whole = {lb: make_tree(tmp / f"{lb}-whole", before if lb == "before" else None) for lb in labels}
        start = bare_start(args.repeat)
        print(f"bare interpreter start: {start:.3f} s", flush=True)

        deps = {name: max(min(timed(ROOT, sys.executable, "-c", stmt)[0] for _ in range(args.repeat)) - start, 0.0)
                for name, stmt in HEAVY.items()}
        print("dependency imports: " + ", ".join(f"{k} {v:.1f} s" for k, v in deps.items()) + f"  [{loadavg()}]")

        result = {lb: {"stages": {s: {} for s in stages}} for lb in labels}
        for stage, section in stages.items():
            for rep in range(args.repeat):
                for lb in labels:  # interleaved: before and after see the same load
                    s, heavy = import_time(steps[lb], f"stages.{stage}", start)
                    r = result[lb]["stages"][stage]
                    r.setdefault("import_runs", []).append(s)
                    r["import_s"], r["imports"] = min(r["import_runs"]), heavy
            for lb in labels:
                result[lb]["stages"][stage]["fail_fast_s"] = fail_fast(steps[lb], stage, section)
            print(f"{stage:<15} import " + " / ".join(f"{result[lb]['stages'][stage]['import_s']:.2f}" for lb in labels)
                  + " s, fail-fast " + " / ".join(f"{result[lb]['stages'][stage]['fail_fast_s']:.2f}" for lb in labels)
                  + f" s  [{loadavg()}]", flush=True)

        for lb in labels:
            for stage in stages:
                s, _ = timed(steps[lb], sys.executable, "-m", "dvc", "repro", "--single-item", stage)
                result[lb]["stages"][stage]["repro_s"] = s
                print(f"{lb:<6} dvc repro --single-item {stage:<15} {s:6.1f} s  [{loadavg()}]", flush=True)
            result[lb]["per_stage_total_s"] = sum(r["repro_s"] for r in result[lb]["stages"].values())
        for rep in range(args.repeat):
            for lb in labels:
                s, out = timed(steps[lb], sys.executable, "-m", "dvc", "repro")
                if "up to date" not in out.stdout + out.stderr:
                    raise RuntimeError(f"no-op dvc repro ran something in {lb}:\n{out.stdout}")
                result[lb].setdefault("noop_runs", []).append(s)
        for lb in labels:
            result[lb]["noop_s"] = min(result[lb]["noop_runs"])
            s, _ = timed(whole[lb], sys.executable, "-m", "dvc", "repro")
            result[lb]["full_repro_s"] = s
            print(f"{lb:<6} no-op dvc repro {result[lb]['noop_s']:.1f} s; whole dvc repro {s:.1f} s  [{loadavg()}]",
                  flush=True)
            result[lb]["hashes"] = output_hashes(steps[lb])
            result[lb]["whole_hashes"] = output_hashes(whole[lb])
        if args.before:
            # Same inputs, other code: the reproduced "after" copy with the --before files put back.
            # DVC re-runs the stages whose code changed, and their dependants only if outputs changed.
            put_files(steps["after"], before, "back to the --before files")
            s, out = timed(steps["after"], sys.executable, "-m", "dvc", "repro")
            ran = [ln.split("'")[1] for ln in out.stdout.splitlines() if ln.startswith("Running stage '")]
            result["swap"] = {"seconds": s, "stages_run": ran, "hashes": output_hashes(steps["after"])}
            print(f"swap: after-copy with the --before files: dvc repro ran {', '.join(ran) or 'nothing'} "
                  f"in {s:.1f} s  [{loadavg()}]")

    meta["load_average_end"], meta["total_s"] = os.getloadavg(), time.perf_counter() - t0
    report(meta, deps, result, list(stages))
    write_json(args.json, {"meta": meta, "dependency_import_s": deps, "trees": result})
    print(f"total {meta['total_s']:.0f} s -> {args.json}")


if __name__ == "__main__":
    main()
