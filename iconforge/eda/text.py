"""Caption words without what every caption repeats: the trigger phrase, the logo template's
"Simple elegant logo for" head and its fixed tail ("successful vibe, minimalist, ...", see
iconforge.dataset.logo_text), and a small fixed list of English stop words."""
from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

from iconforge.dataset.logo_text import BOILERPLATE, PREFIX

STOP_WORDS = frozenset("""
a an the and or nor but of in on at to for from by with without into onto over under about above below
as is are was were be been being it its this that these those than then so not no yes
vs via per each all any some other one two
""".split())
_TOKEN = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")


def _without_trigger(caption: str, trigger: str) -> str:
    if not trigger.strip():
        return caption
    return re.sub(rf"(?<!\w){re.escape(trigger.strip())}(?!\w)", " ", caption, flags=re.IGNORECASE)


def phrases(caption: str, trigger: str) -> list[str]:
    """The caption's comma-separated phrases, lower case, without the logo head, the trigger (in
    that order: a trigger such as "elegant logo" lies inside the head) and the boilerplate tail."""
    caption = PREFIX.sub(" ", caption)
    out = []
    for part in _without_trigger(caption, trigger).split(","):
        part = " ".join(part.split()).lower()
        if part and part not in BOILERPLATE:
            out.append(part)
    return out


def tokens(phrase: str) -> list[str]:
    return _TOKEN.findall(phrase)


def _content(word: str) -> bool:
    """Counted as a word: not a stop word, not a single character, not a bare number."""
    return len(word) > 1 and word not in STOP_WORDS and not word.isdigit()


def words_and_bigrams(caption: str, trigger: str) -> tuple[list[str], list[str]]:
    """Content words, and bigrams of adjacent words within one phrase where both are content words:
    'bioicons style, cuvette in darker pink, lab apparatus' -> [cuvette, darker, pink, lab, apparatus],
    [darker pink, lab apparatus]."""
    words, bigrams = [], []
    for phrase in phrases(caption, trigger):
        toks = tokens(phrase)
        words += [t for t in toks if _content(t)]
        bigrams += [f"{a} {b}" for a, b in zip(toks, toks[1:]) if _content(a) and _content(b)]
    return words, bigrams


def count(captions: Iterable[str], trigger: str) -> tuple[Counter, Counter]:
    """Word and bigram counts over all captions."""
    words, bigrams = Counter(), Counter()
    for c in captions:
        w, b = words_and_bigrams(c, trigger)
        words.update(w)
        bigrams.update(b)
    return words, bigrams


def top(counter: Counter, n: int) -> list[tuple[str, int]]:
    """The n most frequent, ties in alphabetical order (so equal counts give equal tables)."""
    return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
