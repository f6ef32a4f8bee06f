"""Param overrides kept in a YAML file (demo.yaml), applied two ways:
as `dvc exp run -S key=value` arguments (printed NUL-separated for xargs -0),
or merged into a params dict (tests)."""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

from iconforge.config import parse_params


def read(path: Path) -> dict:
    """Read as DVC reads params.yaml (YAML 1.2): a bare `no` stays the string "no"."""
    return parse_params(Path(path).read_text(encoding="utf-8"))


def merged(params: dict, overrides: dict) -> dict:
    """params with every overridden `section.key` replaced (sections are one level deep)."""
    out = {section: dict(values) for section, values in params.items()}
    for section, values in overrides.items():
        out.setdefault(section, {}).update(values)
    return out


def set_args(overrides: dict) -> list[str]:
    """['-S', 'train.steps=30', ...]; values in YAML flow style, as dvc parses them."""
    args = []
    for section, values in overrides.items():
        for key, value in values.items():
            text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
            text = text.removesuffix("\n...").removesuffix("...").strip()
            args += ["-S", f"{section}.{key}={text}"]
    return args


if __name__ == "__main__":
    sys.stdout.write("\0".join(set_args(read(Path(sys.argv[1])))))
