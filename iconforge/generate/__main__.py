"""`python -m iconforge.generate "zebrafish embryo" -n 4 --seed 7 --out DIR [--rev NAME]`

Writes DIR/seed-<seed>.png and .svg per image and DIR/generation.json with every setting and the
model it came from. Same arguments (with --seed), same bytes. Bad arguments: one line, exit 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

from iconforge.errors import StageError
from iconforge.generate.request import GenerateRequest, error_line

RECORD = "generation.json"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        sys.exit(_usage_error(message))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = _Parser(prog="python -m iconforge.generate", description="Draw icons with a trained adapter.")
    p.add_argument("prompt", help="what to draw (the trigger phrase is prepended)")
    p.add_argument("-n", type=int, default=1, help="number of images (1-4), seeds seed..seed+n-1")
    p.add_argument("--seed", type=int, help="first seed (default: random, recorded in the JSON)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the revision's sample.steps)")
    p.add_argument("--guidance", type=float, help="guidance (default: sample.guidance)")
    p.add_argument("--size", type=int, help="pixels, a multiple of 16 (default: sample.size)")
    p.add_argument("--strength", type=float, default=1.0, help="LoRA strength, 0-2 (default 1)")
    p.add_argument("--rev", help="git revision or DVC experiment to take the model from (default: the workspace)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    fields = ("prompt", "n", "seed", "steps", "guidance", "size", "strength")
    try:
        req = GenerateRequest(**{f: getattr(args, f) for f in fields if getattr(args, f) is not None})
    except ValidationError as e:
        sys.exit(_usage_error(error_line(e.errors()[0])))
    if args.out.exists() and not args.out.is_dir():
        sys.exit(_usage_error(f"--out {args.out}: exists and is not a folder"))
    # Imported only now, so a bad argument is reported before ~10 s of torch/diffusers imports.
    from iconforge.atomic import write_bytes, write_json, write_text
    from iconforge.generate.generator import Generator
    from iconforge.generate.source import open_source

    try:
        with open_source(args.rev) as source:
            gen = Generator(source)
    except StageError as e:
        sys.exit(f"generate: {e}")
    settings = gen.settings(req)
    images = gen.generate(settings, progress=lambda done, total: print(f"\rstep {done}/{total}", end="", file=sys.stderr))
    gen.close()
    print(file=sys.stderr)
    for img in images:
        write_bytes(args.out / f"seed-{img.seed}.png", img.png)
        write_text(args.out / f"seed-{img.seed}.svg", img.svg)
    write_json(args.out / RECORD, gen.record(settings))
    print(f"generate: {len(images)} image(s), seeds {settings.seeds}, prompt {settings.prompt_sent!r} -> {args.out}/")


def _usage_error(msg: str) -> int:
    print(f"generate: {msg}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    main()
