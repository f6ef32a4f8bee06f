"""Captions from icon names, and the captioned dataset in Hugging Face imagefolder layout.

    cc-by-3.0/Lab_apparatus/Servier/cuvette-pinkdarker.svg
    -> "bioicons style, cuvette in darker pink, lab apparatus"

The split folders' layout is iconforge.dataset.imagefolder's.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from iconforge.atomic import link_or_copy
from iconforge.config import CaptionConfig
from iconforge.dataset import logo_text
from iconforge.dataset.names import PART_SUFFIXES, parse, words
from iconforge.dataset.imagefolder import write_metadata
from iconforge.dataset.selection import kind
from iconforge.paths import SPLITS


def _lower(word: str) -> str:
    """'Drosophila' -> 'drosophila'; DNA, ROS, mRNA, HeLa, T75 and the B of 'B cell' stay."""
    rest = word[1:]
    return word.lower() if any(c.isalpha() for c in rest) and rest == rest.lower() else word


def name_words(name: str) -> str:
    """'cuvette-pinkdarker' -> 'cuvette in darker pink', 'tube-red-bluecap' -> 'tube in red with blue cap',
    'protein-12' -> 'protein', 'Proteoglycan_v2' -> 'proteoglycan'."""
    p = parse(name)
    text = " ".join(_lower(w) for w in p.base)
    parts = [c for c in p.colours if c.rsplit(" ", 1)[-1] in PART_SUFFIXES]  # "blue cap"
    plain = [c for c in p.colours if c not in parts]
    if plain:
        text += " in " + " and ".join(plain)
    for part in parts:
        text += f" with {part}"
    return text


def category_words(category: str) -> str:
    """'Lab_apparatus' -> 'lab apparatus'."""
    return " ".join(_lower(w) for w in words(category))


def caption(row: dict[str, str], cfg: CaptionConfig) -> str:
    """caption.template filled in. A logo row (it has a `text`) gives name, keywords and category
    parsed from its description and {text} (its tail dropped with caption.drop_boilerplate); an icon
    gives its name and category in words, {keywords} empty and {text} = {name}."""
    if "text" in row:
        logo = logo_text.parse(row["text"])
        fields = dict(name=logo.name, keywords=logo.keywords, category=logo.category,
                      text=logo.core if cfg.drop_boilerplate else " ".join(row["text"].split()))
    else:
        name = name_words(row["name"])
        fields = dict(name=name, keywords="", category=category_words(row["category"]), text=name)
    return cfg.template.format(trigger=cfg.trigger, **fields).strip()


def png_path(svg_path: str) -> str:
    return str(PurePosixPath(svg_path).with_suffix(".png"))


def rendered_rows(rows: list[dict], png_dir: Path, raster_rejects: list[dict]) -> list[dict]:
    """The filtered rows whose PNG exists. A row with neither a PNG nor a rasterize reject
    would vanish without a trace: that is a pipeline bug, so stop."""
    rejected = {r["path"] for r in raster_rejects} | {str(PurePosixPath(r["path"]).with_suffix(".svg"))
                                                      for r in raster_rejects}
    present = [r for r in rows if (Path(png_dir) / png_path(r["path"])).is_file()]
    have = {r["path"] for r in present}
    lost = [r["path"] for r in rows if r["path"] not in have and r["path"] not in rejected]
    if lost:
        raise RuntimeError(f"{len(lost)} filtered icons have no PNG in {png_dir} and no entry in "
                           f"raster_rejects.csv (rerun rasterize): {', '.join(lost[:10])}")
    return present


def build(rows: list[dict], credits: dict[str, dict], png_dir: Path, out: Path, cfg: CaptionConfig) -> list[dict]:
    """Link (or copy) each PNG into out/<split>/, write its caption sidecar and the split's metadata.jsonl.
    Returns the metadata records, sorted by split and file name."""
    records, made = [], set()
    for r in tqdm(sorted(rows, key=lambda r: r["path"]), desc="caption", unit="image"):
        rel = png_path(r["path"])
        dest = Path(out) / r["split"] / rel
        if dest.parent not in made:
            dest.parent.mkdir(parents=True, exist_ok=True)
            made.add(dest.parent)
        link_or_copy(Path(png_dir) / rel, dest)
        text = caption(r, cfg)
        dest.with_suffix(".txt").write_text(text, encoding="utf-8")
        credit = credits.get(r["path"], {})
        records.append({"file_name": rel, "text": text, "split": r["split"], "group": r["group"],
                        "license": r["license"], "author": credit.get("author", r["author"]),
                        "category": r["category"], "name": r["name"], "source": credit.get("source_url", "")})
    for split in SPLITS:
        (Path(out) / split).mkdir(parents=True, exist_ok=True)
        write_metadata(Path(out) / split, [rec for rec in records if rec["split"] == split])
    return sorted(records, key=lambda rec: (rec["split"], rec["file_name"]))


def metrics(filtered: list[dict], filter_rejects: list[dict], raster_rejects: list[dict],
            records: list[dict]) -> dict:
    """metrics/data.json: what each step kept and dropped, and the final dataset by license and split."""
    by_license: dict[str, dict[str, int]] = {}
    for rec in records:
        counts = by_license.setdefault(rec["license"], {s: 0 for s in SPLITS})
        counts[rec["split"]] += 1
    return {
        "filter": {"kept": len(filtered), "rejected": len(filter_rejects),
                   "rejected_by_kind": dict(sorted(Counter(kind(r["reason"]) for r in filter_rejects).items()))},
        "rasterize": {"rendered": len(records), "rejected": len(raster_rejects)},
        "dataset": {"images": len(records),
                    "by_split": {s: sum(rec["split"] == s for rec in records) for s in SPLITS},
                    "by_license": dict(sorted(by_license.items()))},
    }


def table(m: dict) -> str:
    """The metrics as a small text table for the stage log."""
    lines = [f"{'license':<14}{'train':>8}{'validation':>12}{'total':>8}"]
    for lic, c in m["dataset"]["by_license"].items():
        lines.append(f"{lic:<14}{c['train']:>8}{c['validation']:>12}{c['train'] + c['validation']:>8}")
    s = m["dataset"]["by_split"]
    lines.append(f"{'all':<14}{s['train']:>8}{s['validation']:>12}{m['dataset']['images']:>8}")
    kinds = ", ".join(f"{k} {n}" for k, n in m["filter"]["rejected_by_kind"].items())
    lines.append(f"filter: kept {m['filter']['kept']}, rejected {m['filter']['rejected']}"
                 + (f" ({kinds})" if kinds else ""))
    lines.append(f"rasterize: rendered {m['rasterize']['rendered']}, rejected {m['rasterize']['rejected']}")
    return "\n".join(lines)
