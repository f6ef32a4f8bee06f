"""filter_license: license/category/size/raster screening, variant groups, split, credits."""
from __future__ import annotations

import csv
import json
import tarfile
import unicodedata
from pathlib import Path

import pytest
import yaml

from conftest import SAMPLE_ARCHIVE, committed_params, needs_sample
from iconforge.dataset.attribution import find_author, source_base
from iconforge.dataset.selection import embeds_raster
from iconforge.dataset.variants import assign_splits, group_key, one_per_group
from stages import filter_license

SVG = b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 10 10"><rect width="10" height="10"/></svg>'
PNG_INLINE = (b'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink">'
              b'<image width="4" height="4" xlink:href="data:image/png;base64,iVBORw0KGgo="/></svg>')
COMMIT = "0123456789abcdef0123456789abcdef01234567"  # the upstream commit data/source.json names
AUTHORS = {"Servier": "https://smart.servier.com/", "Mariana RuizVillareal": "https://commons.wikimedia.org/x",
           "Simon Dürr": "https://twitter.com/simonduerr"}


def row(path: str) -> dict[str, str]:
    lic, cat, author, file = path.split("/")
    return {"path": path, "license": lic, "category": cat, "author": author, "name": file[:-4]}


def make_repo(tmp: Path, icons: dict[str, bytes], authors: dict | None = None, **filter_params) -> Path:
    """A repo root with params.yaml, data/raw/<icons>, authors.json, LICENSE files and data/manifest.csv."""
    params = committed_params()
    params["filter"].update(filter_params)
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    raw = tmp / "data" / "raw"
    for path, data in icons.items():
        (raw / path).parent.mkdir(parents=True, exist_ok=True)
        (raw / path).write_bytes(data)
    (raw / "authors.json").write_text(json.dumps(AUTHORS if authors is None else authors))
    (tmp / "data" / "source.json").write_text(json.dumps({"commit": COMMIT}))
    (raw / "mit").mkdir(exist_ok=True)
    (raw / "mit" / "LICENSE").write_text("The MIT License (MIT)\nPermission is hereby granted, free of charge")
    with open(tmp / "data" / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["path", "license", "category", "author", "name", "bytes", "sha256"],
                           lineterminator="\n")
        w.writeheader()
        for path in sorted(icons):
            w.writerow({**row(path), "bytes": len(icons[path]), "sha256": "0" * 64})
    return tmp


def run_stage(repo: Path, monkeypatch) -> dict[str, list[dict]]:
    monkeypatch.chdir(repo)
    filter_license.main()
    read = lambda name: list(csv.DictReader(open(repo / "data" / name, encoding="utf-8")))  # noqa: E731
    return {"kept": read("filtered.csv"), "rejects": read("filter_rejects.csv"), "credits": read("credits.csv")}


def test_license_filter_keeps_or_rejects_every_row(tmp_path, monkeypatch):
    icons = {"cc-0/Animals/A/cat.svg": SVG, "cc-by-4.0/Animals/B/dog.svg": SVG,
             "cc-by-sa-4.0/Animals/C/fish.svg": SVG, "mit/Scientific_graphs/dbs-sticky/bar.svg": SVG}
    out = run_stage(make_repo(tmp_path, icons), monkeypatch)
    assert [r["path"] for r in out["kept"]] == sorted(set(icons) - {"cc-by-sa-4.0/Animals/C/fish.svg"})
    assert out["rejects"] == [{"path": "cc-by-sa-4.0/Animals/C/fish.svg",
                               "reason": "license: cc-by-sa-4.0 not in filter.licenses"}]
    assert all(r["split"] in ("train", "validation") and r["group"] for r in out["kept"])


def test_category_include_and_exclude(tmp_path, monkeypatch):
    icons = {"cc-0/Animals/A/cat.svg": SVG, "cc-0/Lab_apparatus/A/flask.svg": SVG, "cc-0/Viruses/A/phage.svg": SVG}
    repo = make_repo(tmp_path, icons, categories_include=["Animals", "Viruses"], categories_exclude=["Viruses"])
    out = run_stage(repo, monkeypatch)
    assert [r["path"] for r in out["kept"]] == ["cc-0/Animals/A/cat.svg"]
    assert {r["path"]: r["reason"] for r in out["rejects"]} == {
        "cc-0/Lab_apparatus/A/flask.svg": "category: Lab_apparatus not in filter.categories_include",
        "cc-0/Viruses/A/phage.svg": "category: Viruses in filter.categories_exclude"}


def test_size_embedded_raster_missing_and_unsafe_rejects(tmp_path, monkeypatch):
    big = SVG.replace(b"<rect", b"<!--" + b"x" * 500 + b"--><rect")
    linked = b'<svg xmlns="http://www.w3.org/2000/svg"><image href="photo.JPG" width="1" height="1"/></svg>'
    vector = b'<svg xmlns="http://www.w3.org/2000/svg"><image href="data:image/svg+xml;base64,PHN2Zz4="/></svg>'
    icons = {"cc-0/A/a/big.svg": big, "cc-0/A/a/inline.svg": PNG_INLINE, "cc-0/A/a/linked.svg": linked,
             "cc-0/A/a/vector.svg": vector, "cc-0/A/a/ok.svg": SVG}
    repo = make_repo(tmp_path, icons, max_svg_bytes=400, drop_embedded_raster=True)
    (repo / "data" / "raw" / "cc-0/A/a/ok.svg").unlink()
    with open(repo / "data" / "manifest.csv", "a") as f:
        f.write("cc-0/../../../etc/passwd.svg,cc-0,A,a,passwd,1,x\n")
    out = run_stage(repo, monkeypatch)
    reasons = {r["path"]: r["reason"] for r in out["rejects"]}
    assert [r["path"] for r in out["kept"]] == ["cc-0/A/a/vector.svg"]  # an SVG inside an SVG is fine
    assert reasons["cc-0/A/a/big.svg"].startswith(f"size: {len(big)} bytes > filter.max_svg_bytes 400")
    assert reasons["cc-0/A/a/inline.svg"].startswith("embedded_raster:")
    assert reasons["cc-0/A/a/linked.svg"].startswith("embedded_raster:")
    assert reasons["cc-0/A/a/ok.svg"].startswith("missing:")
    assert reasons["cc-0/../../../etc/passwd.svg"].startswith("path:")


def test_embedded_raster_is_kept_unless_asked():
    assert embeds_raster(PNG_INLINE) and not embeds_raster(SVG)
    assert embeds_raster(b"<svg><svg:image xlink:href='data:image/jpeg;base64,/9j/'/></svg>")
    assert not embeds_raster(b"<svg><text>data:image/png is a MIME type</text></svg>")


GROUPS = [  # names that must share a group, per author folder
    ["cuvette", "cuvette-pink", "cuvette-lightpink", "cuvette-pinkdarker", "cuvette-pinkmedium"],
    ["cuvette-filled", "cuvette-filled-red"],
    ["tube-red-bluecap", "tube"],
    ["petri-dish", "petri-dish-yellow", "petri-dish-lightgray"],
    ["protein-12", "protein-1", "protein"],
    ["Proteoglycan_v1", "Proteoglycan_v2"],
    ["mortar", "mortar-2"],
    ["antibody-3", "antibody-10"],
    ["emptycell-vacuole-blue-1", "emptycell-vacuole-pink-2", "emptycell-vacuole- (11)"],
    ["membrane-2d-purplelightblue", "membrane-2d-bluered"],
    ["blue_bottle", "light_green_bottle", "bottle"],
]


def test_group_keys_collect_colour_number_and_version_variants():
    for names in GROUPS:
        keys = {group_key(row(f"cc-by-3.0/Lab_apparatus/Servier/{n}.svg")) for n in names}
        assert len(keys) == 1, (names, keys)
    assert group_key(row("cc-by-3.0/Lab_apparatus/Servier/cuvette.svg")) == "cc-by-3.0/Lab_apparatus/Servier/cuvette"
    distinct = ["cuvette", "cuvette-filled", "mortar", "SARS-CoV-2", "SARS-CoV", "orange", "96_well_plate",
                "6_well_plate"]
    assert len({group_key(row(f"cc-0/X/a/{n}.svg")) for n in distinct}) == len(distinct)
    # Same name, other author or license: not the same icon.
    assert group_key(row("cc-0/X/a/cuvette.svg")) != group_key(row("cc-0/X/b/cuvette.svg"))
    assert group_key(row("cc-0/X/a/cuvette.svg")) != group_key(row("cc-by-4.0/X/a/cuvette.svg"))


def _library(n: int, prefix: str = "icon") -> list[dict]:
    return [row(f"cc-0/Lab/a/{prefix}{i}x-{c}.svg") for i in range(n) for c in ("red", "blue", "lightpink")]


def test_split_never_divides_a_group_and_is_stable_when_icons_are_added():
    rows = assign_splits(_library(300), 0.2, seed=0)
    split_of = {}
    for r in rows:
        assert split_of.setdefault(r["group"], r["split"]) == r["split"]
    n_val = sum(s == "validation" for s in split_of.values())
    assert 30 <= n_val <= 90  # ~20% of 300 groups
    more = assign_splits(_library(300) + _library(200, prefix="other"), 0.2, seed=0)
    assert sum(r["group"] in split_of for r in more) == len(rows)
    assert all(r["split"] == split_of[r["group"]] for r in more if r["group"] in split_of)
    other_seed = assign_splits(_library(300), 0.2, seed=1)
    assert [r["split"] for r in other_seed] != [r["split"] for r in rows]
    assert assign_splits(_library(300), 0.2, seed=0) == rows  # deterministic


def test_tiny_dataset_still_gets_one_validation_group():
    rows = assign_splits([row("cc-0/A/a/cat.svg"), row("cc-0/A/a/dog.svg")], 0.1, seed=0)
    assert sorted(r["split"] for r in rows) == ["train", "validation"]
    assert {r["split"] for r in assign_splits([row("cc-0/A/a/cat.svg")], 0.1, 0)} == {"train"}
    assert {r["split"] for r in assign_splits(_library(5), 0.0, 0)} == {"train"}


def test_variants_one_keeps_the_plain_name_and_records_the_rest(tmp_path, monkeypatch):
    names = ["cuvette-pink", "cuvette", "cuvette-lightpink", "mortar-2", "mortar-10", "lonely"]
    icons = {f"cc-by-3.0/Lab_apparatus/Servier/{n}.svg": SVG for n in names}
    out = run_stage(make_repo(tmp_path, icons, variants="one"), monkeypatch)
    base = "cc-by-3.0/Lab_apparatus/Servier/"
    assert [r["name"] for r in out["kept"]] == ["cuvette", "lonely", "mortar-2"]
    assert {r["path"]: r["reason"] for r in out["rejects"]} == {
        base + "cuvette-lightpink.svg": f"variant: of {base}cuvette.svg (filter.variants: one)",
        base + "cuvette-pink.svg": f"variant: of {base}cuvette.svg (filter.variants: one)",
        base + "mortar-10.svg": f"variant: of {base}mortar-2.svg (filter.variants: one)"}
    rows = assign_splits([row(base + n + ".svg") for n in names], 0.5, 0)
    kept, rejects = one_per_group(rows)
    assert len(kept) + len(rejects) == len(names)


@pytest.mark.parametrize("folder,key", [
    ("Mariana-RuizVillareal", "Mariana RuizVillareal"),
    ("Mariana_RuizVillareal", "Mariana RuizVillareal"),
    ("mariana-ruizvillareal-", "Mariana RuizVillareal"),
    (unicodedata.normalize("NFD", "Simon_Dürr"), "Simon Dürr"),
    ("servier", "Servier"),
    ("Servier", "Servier"),
    ("Nobody-Known", None),
    ("", None),
])
def test_author_folder_matches_authors_json(folder, key):
    assert find_author(folder, AUTHORS) == key


def test_attribution_covers_every_kept_icon_that_needs_credit(tmp_path, monkeypatch):
    icons = {"cc-0/Animals/A/cat.svg": SVG, "cc-by-3.0/Lab_apparatus/Servier/cuvette-pink.svg": SVG,
             "cc-by-4.0/Animals/Mariana-RuizVillareal/Macaque.svg": SVG,
             "cc-by-sa-4.0/Animals/Nobody-Known/fish (2).svg": SVG,
             "mit/Scientific_graphs/dbs-sticky/bar.svg": SVG}
    repo = make_repo(tmp_path, icons, licenses=["cc-0", "mit", "cc-by-3.0", "cc-by-4.0", "cc-by-sa-4.0"])
    out = run_stage(repo, monkeypatch)
    md = (repo / "data" / "ATTRIBUTION.md").read_text()
    credits = {c["path"]: c for c in out["credits"]}
    assert set(credits) == set(icons)
    for path, c in credits.items():
        assert c["source_url"].startswith(source_base(COMMIT)) and c["changes"].startswith("rasterized")
        if not path.startswith("cc-0/"):
            assert c["needs_attribution"] == "true" and c["source_url"] in md and c["author"]
    assert credits["cc-0/Animals/A/cat.svg"]["needs_attribution"] == "false"
    macaque = credits["cc-by-4.0/Animals/Mariana-RuizVillareal/Macaque.svg"]
    assert (macaque["author"], macaque["author_url"]) == ("Mariana RuizVillareal", AUTHORS["Mariana RuizVillareal"])
    assert macaque["license_url"] == "https://creativecommons.org/licenses/by/4.0/"
    fish = credits["cc-by-sa-4.0/Animals/Nobody-Known/fish (2).svg"]
    assert fish["author_url"] == "" and fish["share_alike"] == "true" and "%20%282%29" in fish["source_url"]
    assert "**ShareAlike:**" in md and "\n- Nobody-Known\n" in md  # listed as unmatched
    assert "The MIT License (MIT)" in md  # MIT's notice travels with its icons
    assert "modified" in md


def test_reruns_are_byte_identical(tmp_path, monkeypatch):
    icons = {f"cc-by-3.0/Lab_apparatus/Servier/{n}.svg": SVG for g in GROUPS for n in g}
    repo = make_repo(tmp_path, icons, val_fraction=0.3)
    outputs = ["filtered.csv", "filter_rejects.csv", "credits.csv", "ATTRIBUTION.md"]
    run_stage(repo, monkeypatch)
    first = {n: (repo / "data" / n).read_bytes() for n in outputs}
    run_stage(repo, monkeypatch)
    assert first == {n: (repo / "data" / n).read_bytes() for n in outputs}


@needs_sample
def test_sample_snapshot_credits_every_icon_that_needs_it(tmp_path, monkeypatch):
    from iconforge.dataset import archive
    from iconforge.dataset import manifest
    from iconforge.tables import write_csv

    raw = tmp_path / "data" / "raw"
    archive.extract_icons(SAMPLE_ARCHIVE, raw)
    write_csv(tmp_path / "data" / "manifest.csv", manifest.build(raw), manifest.FIELDS)
    params = committed_params()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "data" / "source.json").write_text(json.dumps({"commit": COMMIT}))
    with tarfile.open(SAMPLE_ARCHIVE) as tar:
        n_svg = sum(m.name.endswith(".svg") for m in tar.getmembers())
    out = run_stage(tmp_path, monkeypatch)
    assert len(out["kept"]) + len(out["rejects"]) == n_svg == 212
    credits = {c["path"]: c for c in out["credits"]}
    md = (tmp_path / "data" / "ATTRIBUTION.md").read_text()
    needing = [r for r in out["kept"] if r["license"] != "cc-0"]
    assert needing and all(r["path"] in credits and credits[r["path"]]["source_url"] in md for r in needing)
    assert all(credits[r["path"]]["author"] for r in needing)
    assert {r["license"] for r in out["kept"]} == {"cc-0", "cc-by-3.0", "cc-by-4.0", "mit", "bsd"}
    assert {r["split"] for r in out["kept"]} == {"train", "validation"}


def test_credits_link_the_commit_of_the_archive_fetch_extracted(tmp_path, monkeypatch):
    """Fetch an archive of another upstream commit: every source link follows it (no constant commit)."""
    import io

    from stages import fetch

    other = "fedcba98" * 5
    archive_path = tmp_path / "other.tar.gz"
    with tarfile.open(archive_path, "w:gz") as tar:
        for name, data in {"static/icons/cc-by-4.0/Cells/Servier/cell.svg": SVG,
                           "static/icons/authors.json": json.dumps(AUTHORS).encode()}.items():
            info = tarfile.TarInfo(f"bioicons-{other}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    params = committed_params()
    params["fetch"]["url"] = str(archive_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    fetch.main()
    out = run_stage(tmp_path, monkeypatch)
    [credit] = out["credits"]
    assert credit["source_url"] == f"https://github.com/duerrsimon/bioicons/blob/{other}/static/icons/" \
                                   "cc-by-4.0/Cells/Servier/cell.svg"
    md = (tmp_path / "data" / "ATTRIBUTION.md").read_text()
    assert f"at commit `{other}`" in md and "f3f18b86" not in md
