"""The licenses of the bioicons folders and what each asks of a dataset built from them."""
from __future__ import annotations

from dataclasses import dataclass

from iconforge.config import KNOWN_LICENSES


@dataclass(frozen=True)
class License:
    id: str  # the bioicons folder name
    name: str
    url: str
    needs_attribution: bool  # credit the author (CC BY) or keep the copyright notice (MIT, BSD)
    share_alike: bool  # adaptations must carry the same license


LICENSES: dict[str, License] = {lic.id: lic for lic in (
    License("cc-0", "CC0 1.0 Universal (public domain dedication)",
            "https://creativecommons.org/publicdomain/zero/1.0/", False, False),
    License("mit", "MIT License", "https://opensource.org/license/mit", True, False),
    License("bsd", "BSD 3-Clause License", "https://opensource.org/license/bsd-3-clause", True, False),
    License("cc-by-3.0", "Creative Commons Attribution 3.0 Unported",
            "https://creativecommons.org/licenses/by/3.0/", True, False),
    License("cc-by-4.0", "Creative Commons Attribution 4.0 International",
            "https://creativecommons.org/licenses/by/4.0/", True, False),
    License("cc-by-sa-3.0", "Creative Commons Attribution-ShareAlike 3.0 Unported",
            "https://creativecommons.org/licenses/by-sa/3.0/", True, True),
    License("cc-by-sa-4.0", "Creative Commons Attribution-ShareAlike 4.0 International",
            "https://creativecommons.org/licenses/by-sa/4.0/", True, True),
)}
assert set(LICENSES) == set(KNOWN_LICENSES), "config.KNOWN_LICENSES and the license table disagree"

# MIT and BSD grant use on condition that the copyright notice and license text travel along.
NOTICE_LICENSES = ("mit", "bsd")
