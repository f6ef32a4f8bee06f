"""caption: captions from names, the imagefolder dataset, metrics/data.json."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from conftest import committed_params
from iconforge.dataset.attribution import CHANGES, source_base
from iconforge.dataset.captions import caption, category_words, name_words
from iconforge.config import CaptionConfig
from iconforge.tables import write_csv
from stages import caption as caption_stage

SOURCE_BASE = source_base("0123456789abcdef0123456789abcdef01234567")

FIELDS = ["path", "license", "category", "author", "name", "bytes", "sha256", "group", "split"]
META = {"file_name", "text", "split", "group", "license", "author", "category", "name", "source"}


@pytest.mark.parametrize("name,words", [
    ("cuvette-pink", "cuvette in pink"),
    ("cuvette-lightpink", "cuvette in light pink"),
    ("cuvette-pinkdarker", "cuvette in darker pink"),
    ("cuvette-filled-red", "cuvette filled in red"),
    ("tube-red-bluecap", "tube in red with blue cap"),
    ("membrane-2d-purplelightblue", "membrane 2d in purple and light blue"),
    ("protein-12", "protein"),
    ("Proteoglycan_v2", "proteoglycan"),
    ("emptycell-vacuole-blue-1", "emptycell vacuole in blue"),
    ("flask- (4)", "flask"),
    ("Reactive_Oxygen_Species_ROS", "reactive oxygen species ROS"),
    ("DNA_double_helix", "DNA double helix"),
    ("mRNA_vaccine-vector", "mRNA vaccine vector"),
    ("SmilingMouseHead", "smiling mouse head"),
    ("SARS-CoV-2", "SARS CoV 2"),  # the 2 is part of the name, not numbering
    ("B-cell_1", "B cell"),
    ("orange", "orange"),  # the fruit: a colour word that is the whole name stays
    ("light_green_bottle", "light green bottle"),
    ("gut_bacteria.drawio", "gut bacteria"),
])
def test_name_words(name, words):
    assert name_words(name) == words


def test_caption_uses_template_trigger_and_category():
    row = {"name": "cuvette-pinkdarker", "category": "Lab_apparatus"}
    cfg = CaptionConfig(trigger="bioicons style", template="{trigger}, {name}, {category}")
    assert caption(row, cfg) == "bioicons style, cuvette in darker pink, lab apparatus"
    other = CaptionConfig(trigger="bx", template="a {name} icon ({category}) in {trigger}")
    assert caption(row, other) == "a cuvette in darker pink icon (lab apparatus) in bx"
    assert category_words("Chemo-_and_Bioinformatics") == "chemo and bioinformatics"
    assert category_words("Blood_Immunology") == "blood immunology"


def _png(path: Path, colour: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


ICONS = [  # path, split, has PNG
    ("cc-0/Animals/Ben-Murrell/Alpaca.svg", "train", True),
    ("cc-by-3.0/Lab_apparatus/Servier/cuvette-pink.svg", "validation", True),
    ("cc-by-3.0/Lab_apparatus/Servier/cuvette.svg", "validation", True),
    ("cc-by-4.0/Cell_types/Xi-Chen/sperm cell.svg", "train", True),
    ("cc-by-4.0/Cell_types/Xi-Chen/broken.svg", "train", False),
]


def make_repo(tmp: Path, icons=ICONS, raster_rejects=("cc-by-4.0/Cell_types/Xi-Chen/broken.svg",)) -> Path:
    """The inputs caption reads, as filter_license and rasterize would leave them."""
    (tmp / "params.yaml").write_text(yaml.safe_dump(committed_params()))
    data = tmp / "data"
    rows = []
    for path, split, has_png in icons:
        lic, cat, author, file = path.split("/")
        name = file[:-4]
        rows.append({"path": path, "license": lic, "category": cat, "author": author, "name": name, "bytes": 1,
                     "sha256": "0" * 64, "group": f"{lic}/{cat}/{author}/{name.split('-')[0]}", "split": split})
        if has_png:
            _png(data / "png" / path.replace(".svg", ".png"), "red" if split == "train" else "blue")
    write_csv(data / "filtered.csv", rows, FIELDS)
    write_csv(data / "filter_rejects.csv", [{"path": "cc-by-sa-4.0/A/b/c.svg", "reason": "license: no"},
                                            {"path": "cc-0/A/b/d.svg", "reason": "variant: of x"}], ["path", "reason"])
    write_csv(data / "raster_rejects.csv", [{"path": p, "reason": "render: broken"} for p in raster_rejects],
              ["path", "reason"])
    write_csv(data / "credits.csv", [{"path": r["path"], "author": r["author"].replace("-", " "),
                                      "source_url": SOURCE_BASE + r["path"], "changes": CHANGES} for r in rows],
              ["path", "author", "source_url", "changes"])
    (data / "ATTRIBUTION.md").write_text("# Attribution\n")
    return tmp


def run_stage(repo: Path, monkeypatch) -> Path:
    monkeypatch.chdir(repo)
    caption_stage.main()
    return repo / "data" / "dataset"


def test_imagefolder_layout_with_sidecars_and_metadata(tmp_path, monkeypatch):
    ds = run_stage(make_repo(tmp_path), monkeypatch)
    assert sorted(p.name for p in ds.iterdir()) == ["ATTRIBUTION.md", "credits.csv", "train", "validation"]
    seen = []
    for split in ("train", "validation"):
        records = [json.loads(line) for line in (ds / split / "metadata.jsonl").read_text().splitlines()]
        for rec in records:
            assert set(rec) == META and rec["split"] == split
            image = ds / split / rec["file_name"]
            src = tmp_path / "data" / "png" / rec["file_name"]
            assert image.read_bytes() == src.read_bytes()
            assert image.with_suffix(".txt").read_text() == rec["text"]
            assert rec["text"].startswith("bioicons style, ")
            seen.append(rec["file_name"])
        assert sorted(p.relative_to(ds / split).as_posix() for p in (ds / split).rglob("*.png")) == \
            sorted(r["file_name"] for r in records)
    assert sorted(seen) == sorted(p.replace(".svg", ".png") for p, _, has_png in ICONS if has_png)
    val = [json.loads(line) for line in (ds / "validation" / "metadata.jsonl").read_text().splitlines()]
    pink = next(r for r in val if r["name"] == "cuvette-pink")
    assert pink == {"file_name": "cc-by-3.0/Lab_apparatus/Servier/cuvette-pink.png",
                    "text": "bioicons style, cuvette in pink, lab apparatus", "split": "validation",
                    "group": "cc-by-3.0/Lab_apparatus/Servier/cuvette", "license": "cc-by-3.0", "author": "Servier",
                    "category": "Lab_apparatus", "name": "cuvette-pink",
                    "source": SOURCE_BASE + "cc-by-3.0/Lab_apparatus/Servier/cuvette-pink.svg"}


def test_metrics_count_licenses_splits_and_rejects(tmp_path, monkeypatch, capsys):
    run_stage(make_repo(tmp_path), monkeypatch)
    m = json.loads((tmp_path / "metrics" / "data.json").read_text())
    assert m == {
        "filter": {"kept": 5, "rejected": 2, "rejected_by_kind": {"license": 1, "variant": 1}},
        "rasterize": {"rendered": 4, "rejected": 1},
        "dataset": {"images": 4, "by_split": {"train": 2, "validation": 2},
                    "by_license": {"cc-0": {"train": 1, "validation": 0}, "cc-by-3.0": {"train": 0, "validation": 2},
                                   "cc-by-4.0": {"train": 1, "validation": 0}}},
    }
    out = capsys.readouterr().out
    assert "cc-by-3.0" in out and "rasterize: rendered 4, rejected 1" in out


def test_an_icon_that_would_vanish_stops_the_stage(tmp_path, monkeypatch):
    repo = make_repo(tmp_path, raster_rejects=())
    with pytest.raises(RuntimeError, match="broken.svg"):
        run_stage(repo, monkeypatch)
    assert not (repo / "data" / "dataset").exists()  # nothing half-written


def test_reruns_are_byte_identical(tmp_path, monkeypatch):
    def digest(root: Path) -> dict[str, str]:
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}
    ds = run_stage(make_repo(tmp_path), monkeypatch)
    first = digest(ds), (tmp_path / "metrics" / "data.json").read_bytes()
    run_stage(tmp_path, monkeypatch)
    assert first == (digest(ds), (tmp_path / "metrics" / "data.json").read_bytes())


def test_hugging_face_imagefolder_loads_it(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    ds = run_stage(make_repo(tmp_path), monkeypatch)
    loaded = datasets.load_dataset("imagefolder", data_dir=str(ds))
    assert sorted(loaded) == ["train", "validation"]
    assert sorted(loaded["validation"]["text"]) == ["bioicons style, cuvette in pink, lab apparatus",
                                                    "bioicons style, cuvette, lab apparatus"]
