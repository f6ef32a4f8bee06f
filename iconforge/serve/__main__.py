"""`python -m iconforge.serve --host 127.0.0.1 --port 8000 [--rev NAME]`: the HTTP API on uvicorn,
serving the workspace's models/ or those of a git revision / DVC experiment.

ICONFORGE_API_KEY, when set, is required from every client as `Authorization: Bearer <key>`.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

from iconforge.errors import StageError
from iconforge.serve.jobs import ServiceConfig

API_KEY_ENV = "ICONFORGE_API_KEY"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m iconforge.serve", description="The iconforge generation API.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--rev", help="git revision or DVC experiment to serve (default: the workspace's models/)")
    for f in dataclasses.fields(ServiceConfig):
        p.add_argument(f"--{f.name.replace('_', '-')}", type={"int": int, "float": float}[f.type], default=f.default,
                       help=f"{f.metadata['help']} (default {f.default})")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        cfg = ServiceConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ServiceConfig)})
    except ValueError as e:
        sys.exit(f"serve: {e}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # Imported only now: a bad flag is reported before ~10 s of torch/diffusers imports.
    import uvicorn

    from iconforge.generate.generator import Generator
    from iconforge.generate.source import open_source
    from iconforge.serve.api import create_app
    from iconforge.serve.jobs import JobService

    try:
        with open_source(args.rev) as source:
            generator = Generator(source)
    except StageError as e:
        sys.exit(f"serve: {e}")
    service = JobService(generator, cfg).start()
    api_key = os.environ.get(API_KEY_ENV) or None
    logging.getLogger("iconforge.serve").info(
        "serving %s (commit %s, adapter %s) on %s; API key %s", source.revision, source.commit[:12] or "-",
        source.adapter_sha256[:12], generator.device, "required" if api_key else "off")
    try:
        uvicorn.run(create_app(service, api_key), host=args.host, port=args.port, log_level="info",
                    timeout_graceful_shutdown=5)
    finally:
        service.stop()


if __name__ == "__main__":
    main()
