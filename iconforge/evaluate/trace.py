"""Raster -> SVG with vtracer, so generated icons can be pasted into figures as vectors."""
from __future__ import annotations

import contextlib
import io
import os
import struct
import subprocess
import sys
from pathlib import Path

import vtracer
from lxml import etree
from PIL import Image

SVG_NS = "{http://www.w3.org/2000/svg}"


def png_bytes(img: Image.Image) -> bytes:
    """PNG with no metadata chunks, so equal pixels give equal bytes."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def trace_svg(img: Image.Image) -> str:
    """Colour polygon tracing: flat shapes with straight edges, like the icon library's own style."""
    return trace_png(png_bytes(img.convert("RGB")))


def trace_png(png: bytes) -> str:
    """trace_svg of an RGB image's PNG bytes."""
    return vtracer.convert_raw_image_to_svg(png, img_format="png", colormode="color", hierarchical="stacked",
                                            mode="polygon", filter_speckle=4, color_precision=6, layer_difference=16)


class Tracer:
    """trace_png in a child process (`python -m iconforge.evaluate.trace`), for a process that serves
    others while it traces: vtracer holds the GIL for the whole trace (1.3 s for a noisy 512 px image),
    which would stall every other thread, a server's event loop included. One PNG at a time over
    stdin/stdout, each way as an 8-byte length and the bytes; not thread-safe. The child ends when
    this process closes its stdin (close(), or this process ending)."""

    def __init__(self):
        self._proc: subprocess.Popen | None = None

    def __call__(self, png: bytes) -> str:
        if self._proc is not None and self._proc.poll() is not None:
            self.close()  # a child that died between two images
        if self._proc is None:
            package_root = str(Path(__file__).resolve().parents[2])  # found whatever the cwd
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root,
                                                                            os.environ.get("PYTHONPATH")]))}
            self._proc = subprocess.Popen([sys.executable, "-m", "iconforge.evaluate.trace"], env=env,
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            _send(self._proc.stdin, png)
            return _receive(self._proc.stdout).decode("utf-8")
        except (OSError, EOFError) as e:
            self.close()
            raise RuntimeError(f"the SVG tracer process ended ({e}); the next image starts a new one") from None

    def close(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(OSError):  # a dead child's pipe
                self._proc.stdin.close()
            self._proc.wait()
            self._proc.stdout.close()
            self._proc = None


def _send(pipe, data: bytes) -> None:
    pipe.write(struct.pack("<Q", len(data)) + data)
    pipe.flush()


def _receive(pipe) -> bytes:
    header = pipe.read(8)
    if len(header) < 8:
        raise EOFError("no answer")
    (n,) = struct.unpack("<Q", header)
    data = pipe.read(n)
    if len(data) < n:
        raise EOFError("answer cut short")
    return data


def _serve() -> None:
    """The Tracer's child: trace each PNG from stdin until it closes."""
    while True:
        try:
            png = _receive(sys.stdin.buffer)
        except EOFError:
            return
        _send(sys.stdout.buffer, trace_png(png).encode("utf-8"))


def count_paths(svg: str) -> int:
    """Number of <path> elements; also proves the SVG is well-formed XML."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
    root = etree.fromstring(svg.encode("utf-8"), parser)
    return sum(1 for _ in root.iter(f"{SVG_NS}path"))


if __name__ == "__main__":
    _serve()
