"""Param overrides kept in YAML files (demo.yaml, demo-logos.yaml), applied two ways:
as `dvc exp run -S key=value` arguments (printed NUL-separated for xargs -0),
or merged into a params dict (tests).

    python -m iconforge.overrides demo.yaml demo-logos.yaml

first puts the committed params.yaml back in the workspace, then prints the arguments that apply
the files' overrides to it, in order. `dvc exp run` leaves its params in the workspace, so one
demo's keys (fetch.source: parquet) must not leak into the next; and they are reset by restoring
the committed text, not with more -S arguments, because DVC's round trip through ruamel.yaml
corrupts the file when it turns a block list back into [] (after the logo demo, fetch.shards:
`retries: 3` ends up on the line of `timeout_s: 60`). Uncommitted edits to params.yaml are
overwritten either way: a demo runs the committed params plus its overrides."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from iconforge.atomic import write_text
from iconforge.config import PARAMS_FILE, parse_params


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


def committed_text() -> str:
    return subprocess.run(["git", "show", f"HEAD:{PARAMS_FILE}"], capture_output=True, text=True, check=True).stdout


def changes(target: dict, current: dict) -> dict:
    """The `section.key`s of target whose value differs from current's."""
    out: dict = {}
    for section, values in target.items():
        for key, value in values.items():
            if (current.get(section) or {}).get(key, object()) != value:
                out.setdefault(section, {})[key] = value
    return out


if __name__ == "__main__":
    committed = committed_text()
    target = base = parse_params(committed)
    for f in sys.argv[1:]:
        target = merged(target, read(Path(f)))
    write_text(Path(PARAMS_FILE), committed)
    sys.stdout.write("\0".join(set_args(changes(target, base))))
