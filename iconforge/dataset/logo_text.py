"""The logo datasets' descriptions, parsed: one fixed template per row,

    Simple elegant logo for <Name>, <keywords>, <Category>, successful vibe, minimalist,
    thought-provoking, abstract, recognizable, relatable, sharp, vector art, even edges

-> name "<Name>", keywords "<keywords>" (may hold commas), category "<Category>", and the
text without its boilerplate tail. A description off the template keeps its text; the
fields it lacks are "".
"""
from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX = re.compile(r"\s*simple elegant logo for\s+", re.IGNORECASE)
# The tail every row repeats: it says nothing about the logo.
BOILERPLATE = frozenset(("successful vibe", "minimalist", "thought-provoking", "abstract", "recognizable",
                         "relatable", "sharp", "vector art", "even edges"))


@dataclass(frozen=True)
class LogoText:
    name: str
    keywords: str
    category: str
    core: str  # the text without the boilerplate tail


def _parts(text: str) -> list[str]:
    return [p.strip() for p in text.split(",")]


def parse(text: str) -> LogoText:
    parts = _parts(" ".join(text.split()))
    while parts and parts[-1].lower() in BOILERPLATE | {""}:
        parts.pop()
    core = ", ".join(parts)
    m = PREFIX.match(core)
    if not m:
        return LogoText("", "", "", core)
    fields = _parts(core[m.end():])
    name, middle = fields[0], fields[1:]
    category = middle.pop() if middle else ""
    return LogoText(name, ", ".join(middle), category, core)
