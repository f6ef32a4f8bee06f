"""sample stage: prompts, contact sheet, tracing, and the stage end to end on the tiny preset."""
import json
import os
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from iconforge.config import ModelConfig, SampleConfig
from iconforge.evaluate.grid import GAP, HEADER_H, LABEL_W, contact_sheet, sheet_size
from iconforge.flux.lora_io import add_lora, save_adapter
from iconforge.flux.models import load_pipeline, resolve_base
from iconforge.dataset.imagefolder import read_metadata
from iconforge.evaluate.sampling import build_prompts, evenly_spaced
from iconforge.evaluate.trace import Tracer, count_paths, png_bytes, trace_svg
from iconforge.paths import ADAPTER_FILE, KOHYA_FILE
from iconforge.tracking import start_run, write_run_json

PARAMS = """
caption: {trigger: bioicons style, template: "{trigger}, {name}, {category}"}
sample: {prompts: [zebrafish embryo, centrifuge tube], num_val_prompts: 2, seed: 7, steps: 2, guidance: 3.5, size: 64}
"""


def draw_icon(i: int, size: int = 64) -> Image.Image:
    """A flat two-shape icon on a transparent background, different per i."""
    im = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    colour = [(200, 30, 30, 255), (30, 120, 200, 255), (40, 160, 60, 255)][i % 3]
    d.ellipse((8 + i, 8, size - 8, size - 8 - i), fill=colour)
    d.rectangle((size // 3, size // 4, size // 2, size - 12), fill=(250, 200, 0, 255))
    return im


def write_validation(root: Path, n: int = 4) -> None:
    """data/dataset/validation as the caption stage writes it (imagefolder + metadata.jsonl)."""
    out = root / "data/dataset/validation"
    out.mkdir(parents=True)
    rows = []
    for i in range(n):
        name = f"Lab_apparatus/icon-{i}.png"
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        draw_icon(i).save(out / name)
        rows.append({"file_name": name, "text": f"bioicons style, icon {i}, lab apparatus", "split": "validation"})
    (out / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reversed(rows)))


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """models/ as train_lora leaves it: tiny base, a LoRA that visibly changes outputs, run.json."""
    root = tmp_path_factory.mktemp("trained")
    resolve_base(ModelConfig(base="tiny", revision=""), root / "models/base")
    pipe = load_pipeline(root / "models/base")
    add_lora(pipe.transformer, rank=4, alpha=4, target_modules=("to_q", "to_k", "to_v", "to_out.0"), seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a fresh adapter has B = 0 (a no-op); give it weights as training would
        for name, p in pipe.transformer.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
    save_adapter(pipe.transformer, root / "models/lora" / ADAPTER_FILE, root / "models/lora" / KOHYA_FILE)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        with start_run("train_lora") as run:
            write_run_json(run, root / "models/run.json")
    return root


@pytest.fixture
def project(tmp_path, trained, monkeypatch) -> Path:
    shutil.copytree(trained / "models", tmp_path / "models")
    (tmp_path / "params.yaml").write_text(PARAMS)
    write_validation(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{trained / 'mlflow.db'}")  # where the training run is
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_prompts_wrap_trigger_and_spread_validation_captions(tmp_path):
    write_validation(tmp_path, n=6)
    rows = read_metadata(tmp_path / "data/dataset/validation")
    assert [r["file_name"] for r in rows] == sorted(r["file_name"] for r in rows)
    cfg = SampleConfig(prompts=("zebrafish embryo", "bioicons style, mitochondrion"), num_val_prompts=3,
                       seed=5, steps=1, guidance=1.0, size=64)
    prompts = build_prompts(cfg, "bioicons style", rows)
    assert [p.text for p in prompts] == [
        "bioicons style, zebrafish embryo", "bioicons style, mitochondrion",
        "bioicons style, icon 0, lab apparatus", "bioicons style, icon 2, lab apparatus",
        "bioicons style, icon 4, lab apparatus"]
    assert [p.seed for p in prompts] == [5, 6, 7, 8, 9]
    assert [p.source for p in prompts] == ["user"] * 2 + ["validation"] * 3
    assert evenly_spaced(list(range(10)), 20) == list(range(10))
    with pytest.raises(ValueError, match="no prompts"):
        build_prompts(SampleConfig(prompts=(), num_val_prompts=2, seed=0, steps=1, guidance=1.0, size=64),
                      "bioicons style", [])


def test_contact_sheet_has_one_row_per_prompt():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    rows = [(f"prompt {i}", Image.new("RGB", (64, 64), c), Image.new("RGB", (64, 64), c[::-1]))
            for i, c in enumerate(colours)]
    sheet = contact_sheet(rows)
    assert sheet.size == sheet_size(3, 64) == (LABEL_W + 2 * 64 + GAP, HEADER_H + 3 * (64 + GAP))
    for i, c in enumerate(colours):
        y = HEADER_H + GAP + i * (64 + GAP) + 32
        assert sheet.getpixel((LABEL_W + 32, y)) == c  # base column
        assert sheet.getpixel((LABEL_W + 64 + GAP + 32, y)) == c[::-1]  # LoRA column
        label = np.asarray(sheet.crop((0, y - 32, LABEL_W, y + 32)))
        assert (label < 128).any()  # the prompt text is drawn
    assert sheet_size(2, 1024) == (LABEL_W + 512 + GAP, HEADER_H + 2 * (256 + GAP))  # big samples are shown downscaled


def test_trace_gives_valid_svg_with_coloured_paths():
    svg = trace_svg(draw_icon(0, 128).convert("RGB"))
    assert count_paths(svg) >= 3  # background, disc, bar
    assert "#C81E1E" in svg.upper()
    assert trace_svg(draw_icon(0, 128).convert("RGB")) == svg


def test_the_tracer_process_gives_trace_svgs_bytes_and_replaces_a_dead_child(tmp_path, monkeypatch):
    """The generator traces in a child process (vtracer holds the GIL): same SVG, found from any cwd."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    img = draw_icon(0, 128).convert("RGB")
    tracer = Tracer()
    try:
        assert tracer(png_bytes(img)) == trace_svg(img)
        first = tracer._proc
        first.kill()
        first.wait()
        assert tracer(png_bytes(img)) == trace_svg(img) and tracer._proc.pid != first.pid
    finally:
        tracer.close()
    assert tracer._proc is None and first.returncode is not None


def test_sample_stage_end_to_end(project):
    from stages import sample

    sample.main()
    out = project / "samples"
    index = json.loads((out / "index.json").read_text())
    entries = index["samples"]
    assert [e["prompt"] for e in entries] == [
        "bioicons style, zebrafish embryo", "bioicons style, centrifuge tube",
        "bioicons style, icon 0, lab apparatus", "bioicons style, icon 2, lab apparatus"]
    assert [e["seed"] for e in entries] == [7, 8, 9, 10]
    for e in entries:
        base, lora = (np.asarray(Image.open(out / e["files"][k]), dtype=int) for k in ("base", "lora"))
        assert base.shape == lora.shape == (64, 64, 3)
        assert np.abs(base - lora).mean() > 1  # the LoRA changes the picture
        assert count_paths((out / e["files"]["svg"]).read_text()) > 0
    assert Image.open(out / "grid.png").size == sheet_size(4, 64)
    first = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    sample.main()  # same inputs: byte-identical outputs, replaced atomically
    again = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert again == first
    assert not [p for p in project.iterdir() if p.name.startswith(".samples")]  # no temp dirs left

    run = json.loads((project / "models/run.json").read_text())
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    assert [a.path for a in client.list_artifacts(run["run_id"], "samples")] == ["samples/grid.png"]


def test_sample_without_lora_fails_clearly(project):
    from stages import sample

    (project / "models/lora/pytorch_lora_weights.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="pytorch_lora_weights.safetensors: missing"):
        sample.main()
    assert not (project / "samples").exists()
