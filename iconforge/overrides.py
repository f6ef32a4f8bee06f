"""Param overrides kept in YAML files (demo.yaml, demo-logos.yaml), applied two ways:
as `dvc exp run -S key=value` arguments (printed NUL-separated for xargs -0),
or merged into a params dict (tests).

    python -m iconforge.overrides demo.yaml demo-logos.yaml

prints the arguments that turn the workspace's params.yaml into the committed one with the
files' overrides applied in order: `dvc exp run` leaves its params in the workspace, so one
demo's keys (fetch.source: parquet) must not leak into the next."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from iconforge.config import PARAMS_FILE, parse_params, read_params


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


def committed_params() -> dict:
    text = subprocess.run(["git", "show", f"HEAD:{PARAMS_FILE}"], capture_output=True, text=True, check=True).stdout
    return parse_params(text)


def changes(target: dict, current: dict) -> dict:
    """The `section.key`s of target whose value differs from current's."""
    out: dict = {}
    for section, values in target.items():
        for key, value in values.items():
            if (current.get(section) or {}).get(key, object()) != value:
                out.setdefault(section, {})[key] = value
    return out


if __name__ == "__main__":
    target = committed_params()
    for f in sys.argv[1:]:
        target = merged(target, read(Path(f)))
    sys.stdout.write("\0".join(set_args(changes(target, read_params()))))
