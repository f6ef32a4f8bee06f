"""Credits for every kept icon: data/credits.csv (one row per icon) and data/ATTRIBUTION.md.

CC BY asks for title, author, source, license and a note of changes; MIT and
BSD ask that the copyright notice and license text travel with the work;
CC BY-SA adds that adaptations carry the same license. CC0 asks nothing, its
icons are listed for courtesy.
"""
from __future__ import annotations

import json
import re
import sys
import unicodedata
from pathlib import Path
from urllib.parse import quote

from iconforge.dataset.licenses import LICENSES, NOTICE_LICENSES

UPSTREAM = "https://github.com/duerrsimon/bioicons"
# What was done to every image (CC BY asks to say so): the icons', and a parquet dataset's rows'.
CHANGES = "rasterized from SVG to PNG, scaled and padded to a square"
PARQUET_CHANGES = "decoded, flattened onto white, scaled and padded to a square PNG"
CREDIT_COLUMNS = ["path", "title", "author", "author_url", "license", "license_name", "license_url",
                  "needs_attribution", "share_alike", "source_url", "changes"]
UNKNOWN_AUTHOR = "unknown author"


def _loose(s: str) -> str:
    return re.sub(r"[-_\s]+", " ", unicodedata.normalize("NFC", s).casefold()).strip()


def _compact(s: str) -> str:
    return "".join(c for c in _loose(s) if c.isalnum())


def find_author(folder: str, authors: dict[str, str]) -> str | None:
    """The authors.json key for an author folder, or None.

    Folders spell names their own way: Mariana_RuizVillareal for 'Mariana RuizVillareal',
    fang-fangyang for 'fang-fang-yang', trailing dashes, case. Exact match first,
    then separators as spaces, then letters and digits only; ties go to the first key.
    """
    if not folder:
        return None
    if folder in authors:
        return folder
    for norm in (_loose, _compact):
        hits = sorted(k for k in authors if norm(k) == norm(folder) and norm(folder))
        if hits:
            return hits[0]
    return None


def _safe_url(url: object) -> str:
    """authors.json is third-party data: only http(s) links, escaped so Markdown cannot break."""
    if not isinstance(url, str) or not re.match(r"https?://", url.strip(), re.IGNORECASE):
        return ""
    return quote(url.strip(), safe=":/?#[]@!$&'*+,;=%~")


def source_base(commit: str) -> str:
    """Where the icons of upstream `commit` are (data/source.json records the commit fetch extracted)."""
    return f"{UPSTREAM}/blob/{commit}/static/icons/"


def credit_rows(rows: list[dict[str, str]], authors: dict[str, str], commit: str) -> list[dict[str, str]]:
    """One credit row per kept icon, in the order given, its source linked at `commit`."""
    base = source_base(commit)
    out = []
    for r in rows:
        lic = LICENSES[r["license"]]
        key = find_author(r["author"], authors)
        out.append({
            "path": r["path"],
            "title": re.sub(r"[-_\s]+", " ", r["name"]).strip() or r["name"],
            "author": re.sub(r"[-_\s]+", " ", key or r["author"]).strip() or UNKNOWN_AUTHOR,
            "author_url": _safe_url(authors[key]) if key else "",
            "license": lic.id,
            "license_name": lic.name,
            "license_url": lic.url,
            "needs_attribution": str(lic.needs_attribution).lower(),
            "share_alike": str(lic.share_alike).lower(),
            "source_url": base + quote(r["path"]),
            "changes": CHANGES,
        })
    return out


def unmatched_authors(rows: list[dict[str, str]], authors: dict[str, str]) -> list[str]:
    """Author folders with no authors.json entry (their icons are kept, without a URL)."""
    return sorted({r["author"] for r in rows if r["author"] and find_author(r["author"], authors) is None})


def _md(text: str) -> str:
    return re.sub(r"([\\`*_\[\]()#<>|!])", r"\\\1", text)


def _link(text: str, url: str) -> str:
    return f"[{_md(text)}]({url})" if url else _md(text)


def _icon_lists(credits: list[dict[str, str]]) -> list[str]:
    """Per license, per author: one linked title per icon."""
    lines = []
    for lic in LICENSES.values():
        mine = [c for c in credits if c["license"] == lic.id]
        if not mine:
            continue
        lines += ["", f"### {_link(lic.name, lic.url)} ({lic.id}, {len(mine)} icons)"]
        for author in sorted({c["author"] for c in mine}):
            theirs = [c for c in mine if c["author"] == author]
            lines += ["", f"**{_link(author, theirs[0]['author_url'])}**", ""]
            lines += [f"- {_link(c['title'], c['source_url'])}" for c in theirs]
    return lines


def render_markdown(credits: list[dict[str, str]], unmatched: list[str], notices: dict[str, str], commit: str) -> str:
    """ATTRIBUTION.md; `notices` maps mit/bsd to the LICENSE text shipped with those icons."""
    need = [c for c in credits if c["needs_attribution"] == "true"]
    free = [c for c in credits if c["needs_attribution"] == "false"]
    lines = [
        "# Attribution",
        "",
        f"The images in this dataset are made from icons of [bioicons](https://bioicons.com), "
        f"source {UPSTREAM} at commit `{commit}`. "
        f"**Every image was modified:** {CHANGES}. Each icon keeps the license of its source; "
        f"`credits.csv` holds the same credits as a table (title, author, source, license, changes).",
        "",
        "| License | Icons | Attribution required | ShareAlike |",
        "| --- | ---: | --- | --- |",
    ]
    for lic in LICENSES.values():
        n = sum(c["license"] == lic.id for c in credits)
        if n:
            lines.append(f"| {_link(lic.name, lic.url)} | {n} | {'yes' if lic.needs_attribution else 'no'} "
                         f"| {'yes' if lic.share_alike else 'no'} |")
    sa = [c for c in credits if c["share_alike"] == "true"]
    if sa:
        ids = ", ".join(sorted({c["license"] for c in sa}))
        lines += ["", f"> **ShareAlike:** {len(sa)} icons are licensed {ids}. Adaptations of them, such as "
                      "these images, must be shared under the same license, and that obligation travels "
                      "with any work that adapts them."]
    lines += ["", "## Icons that require attribution"]
    lines += _icon_lists(need)
    for lic_id in NOTICE_LICENSES:
        holders = sorted({c["author"] for c in need if c["license"] == lic_id})
        if holders:
            lic = LICENSES[lic_id]
            lines += ["", f"## Copyright notice: {lic.name}", "",
                      "As the bioicons license file says, the copyright holder is the author folder "
                      f"of each icon: {_md(', '.join(holders))}.", "",
                      "~~~~", notices.get(lic_id, f"See {lic.url}").strip(), "~~~~"]
    if unmatched:
        lines += ["", "## Authors without a web page in authors.json", "",
                  "Their icons are credited by folder name only.", ""]
        lines += [f"- {_md(a)}" for a in unmatched]
    if free:
        lines += ["", "## Public domain (CC0): no attribution required", "",
                  "Listed as a courtesy to the authors."]
        lines += _icon_lists(free)
    return "\n".join(lines) + "\n"


def read_notices(raw: Path) -> dict[str, str]:
    """The LICENSE texts of the MIT/BSD folders in data/raw (bounded: third-party files)."""
    out = {}
    for lic_id in NOTICE_LICENSES:
        path = Path(raw) / lic_id / "LICENSE"
        if path.is_file():
            with open(path, "rb") as f:
                out[lic_id] = f.read(65536).decode("utf-8", errors="replace")
    return out


def read_authors(raw: Path) -> dict[str, str]:
    """authors.json (name -> web page); a missing or malformed file means no URLs, not a crash."""
    path = Path(raw) / "authors.json"
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        print(f"warning: {path}: {e}; author URLs left empty", file=sys.stderr)
        return {}
    if not isinstance(data, dict):
        print(f"warning: {path}: not a JSON object; author URLs left empty", file=sys.stderr)
        return {}
    return {str(k): v for k, v in data.items() if isinstance(v, str)}
