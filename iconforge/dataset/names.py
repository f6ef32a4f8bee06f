"""Icon file names as words: the one parser behind variant groups, titles and captions.

bioicons names mix separators and conventions ("cuvette-pinkdarker",
"Proteoglycan_v2", "tube-red-bluecap", "SARS-CoV-2", "flask- (4)"). `parse`
splits a name into words and marks which trailing words are numbering, a
version tag or a colour, so grouping and captions agree on what is a variant.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# Colour words as they appear in names; a few map to clearer spoken forms.
HUES = {
    "red": "red", "green": "green", "blue": "blue", "yellow": "yellow", "orange": "orange",
    "purple": "purple", "violet": "violet", "pink": "pink", "brown": "brown", "black": "black",
    "white": "white", "gray": "gray", "grey": "grey", "cyan": "cyan", "magenta": "magenta",
    "turquoise": "turquoise", "teal": "teal", "beige": "beige", "gold": "gold",
    "kelly": "kelly green", "sky": "sky blue",
}
# Shade words: only colour-ish when glued to or next to a hue ("lightpink", "light green").
SHADES = ("light", "dark", "darker", "lighter", "medium", "bright", "pale", "deep")
# Whole-scheme words: a variant marker for grouping, but kept in captions as words.
SCHEMES = {"colored", "coloured", "color", "colour", "colors", "colours", "monochrome", "mono"}
# A coloured part named inside one word, e.g. "bluecap" in tube-red-bluecap.
PART_SUFFIXES = ("cap",)
# File-name debris that is not part of the icon's name ("gut_bacteria.drawio").
NOISE = {"drawio", "svg"}

_SHADE = "|".join(sorted(SHADES, key=len, reverse=True))
_HUE = "|".join(sorted(HUES, key=len, reverse=True))
_COLOUR_WORD = re.compile(rf"((?:{_SHADE})*)({_HUE})")  # a hue with the shades before it
_COMPOUND = re.compile(rf"(?:(?:{_SHADE})*(?:{_HUE})(?:{_SHADE})*)+")  # "yellowblue", "purplelightblue"
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z][a-z]{2,})")  # SmilingMouseHead -> Smiling Mouse Head; mRNA, HeLa stay
_GLUED_NUMBER = re.compile(r"^([A-Za-z][a-z]{3,})(\d+)$")  # cell1, Counseling01; not CD4, MHC2, Cas9
_VERSION = re.compile(r"^v\d+$", re.I)


def words(name: str) -> list[str]:
    """Split on every non-alphanumeric run and on camelCase humps; keep case."""
    out = []
    for run in re.findall(r"[^\W_]+", name):
        out += _CAMEL.split(run)
    return [w for w in out if w.lower() not in NOISE]


def is_acronym(word: str) -> bool:
    """DNA, ROS, mRNA, CoV, igG: upper case after the first letter (Title case is not)."""
    return any(c.isupper() for c in word[1:]) or (len(word) > 1 and word.isupper())


def colour_phrase(word: str) -> str | None:
    """'pinkdarker' -> 'darker pink', 'orangelightgreen' -> 'orange and light green',
    'bluecap' -> 'blue cap'; None when the word is not made only of colours."""
    w, suffix = word.lower(), ""
    for s in PART_SUFFIXES:
        if w.endswith(s) and len(w) > len(s):
            w, suffix = w[: -len(s)], s
    if not _COMPOUND.fullmatch(w):
        return None
    found = list(_COLOUR_WORD.finditer(w))
    # Shades go with the next hue; trailing ones with the last ("pinkdarker" -> "darker pink").
    shades = [re.findall(_SHADE, m.group(1)) for m in found]
    shades[-1] = re.findall(_SHADE, w[found[-1].end():]) + shades[-1]
    parts = [" ".join(s + [HUES[m.group(2)]]) for s, m in zip(shades, found)]
    return " and ".join(parts) + (f" {suffix}" if suffix else "")


@dataclass(frozen=True)
class Name:
    words: tuple[str, ...]  # every word of the name, in order
    core: tuple[str, ...]  # the words without numbering, version tags and colours: the variant key
    base: tuple[str, ...]  # the words without trailing numbering/version/colours: what captions say
    colours: tuple[str, ...]  # spoken trailing colours, e.g. ("light pink",)

    @property
    def is_variant(self) -> bool:
        """True when something was stripped: a colour, a number or a version tag."""
        return self.core != tuple(w.lower() for w in self.words)


def _split_glued_number(word: str) -> list[str]:
    m = _GLUED_NUMBER.match(word)
    return [m.group(1), m.group(2)] if m else [word]


def _is_numbering(ws: list[str]) -> bool:
    """A trailing number or v2 is numbering, unless it follows an acronym: SARS-CoV-2, IL-6."""
    w = ws[-1]
    if _VERSION.match(w):
        return True
    return w.isdigit() and not (len(ws) > 1 and is_acronym(ws[-2]))


def parse(name: str) -> Name:
    ws = [p for w in words(name) for p in _split_glued_number(w)]
    # Trailing numbering, versions and colours, in any order: "emptycell-vacuole-blue-1".
    base, colours = list(ws), []
    while len(base) > 1:
        if _is_numbering(base):
            base.pop()
        elif (phrase := colour_phrase(base[-1])) is not None:
            colours.insert(0, phrase)
            base.pop()
        else:
            break
    # The group key also drops colours, scheme words and a shade before a colour anywhere:
    # blue_bottle, light_green_bottle and bottle are one icon in three colours.
    hue = [colour_phrase(w) is not None for w in base] + [False]
    core = [w for i, w in enumerate(base)
            if not (hue[i] or w.lower() in SCHEMES or _VERSION.match(w) or (w.lower() in SHADES and hue[i + 1]))]
    while len(core) > 1 and _is_numbering(core):
        core.pop()
    core = core or base  # "orange" (the fruit) or "12": the name is all there is
    return Name(tuple(ws), tuple(w.lower() for w in core), tuple(base), tuple(colours))
