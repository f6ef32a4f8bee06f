"""The parquet (logo) source through fetch, filter_license, rasterize and caption. Every shard is
made here: good ones from iconforge.synthetic_logos, hostile shards (not parquet, truncated, wrong
columns) and hostile rows (no bytes, a path only, markup, bombs, every image mode)."""
from __future__ import annotations

import csv
import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from conftest import ROOT, committed_params
from iconforge import paths, synthetic_logos
from iconforge.config import CaptionConfig
from iconforge.dataset import logos, raster, shards
from iconforge.dataset.captions import caption
from iconforge.dataset.logo_text import parse
from stages import caption as caption_stage
from stages import fetch, filter_license
from stages import rasterize as rasterize_stage

TEXT = ("Simple elegant logo for Kamran, Circle K Lines, Network, successful vibe, minimalist, thought-provoking, "
        "abstract, recognizable, relatable, sharp, vector art, even edges")


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **kw)
    return out.getvalue()


def write_params(repo: Path, shard_urls: list[str], size: int = 32, **sections) -> None:
    params = committed_params()
    params["fetch"].update(source="parquet", shards=shard_urls, timeout_s=5, retries=1)
    params["rasterize"].update(size=size, workers=2)
    params["filter"].update(val_fraction=0.2)
    for section, values in sections.items():
        params[section].update(values)
    repo.mkdir(parents=True, exist_ok=True)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))


def read(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# --- text and captions -----------------------------------------------------------------------------------------

def test_parse_logo_template():
    t = parse(TEXT)
    assert (t.name, t.keywords, t.category) == ("Kamran", "Circle K Lines", "Network")
    assert t.core == "Simple elegant logo for Kamran, Circle K Lines, Network"
    many = parse("Simple elegant logo for Acme, Leaf, Drop, Health, minimalist, sharp")
    assert (many.name, many.keywords, many.category) == ("Acme", "Leaf, Drop", "Health")
    off = parse("a red fox, vector art")
    assert (off.name, off.keywords, off.category, off.core) == ("", "", "", "a red fox")


def test_logo_captions():
    row = {"name": "Kamran", "category": "Network", "text": TEXT}
    cfg = CaptionConfig(trigger="elegant logo", template="{trigger}, {name}, {keywords}, {category}")
    assert caption(row, cfg) == "elegant logo, Kamran, Circle K Lines, Network"
    cfg = CaptionConfig(trigger="lg", template="{trigger}, {text}", drop_boilerplate=True)
    assert caption(row, cfg) == "lg, Simple elegant logo for Kamran, Circle K Lines, Network"
    assert caption(row, CaptionConfig(trigger="lg", template="{text}", drop_boilerplate=False)) == TEXT


# --- fetch: shards -----------------------------------------------------------------------------------------------

def _table(image_type, images, texts, text_type=pa.string()):
    return pa.table({"image": pa.array(images, image_type), "text": pa.array(texts, text_type)})


HOSTILE_SHARDS = {
    "html.parquet": (b"<!DOCTYPE html><html>Sign in to continue</html>", "not a parquet file"),
    "truncated.parquet": (None, "truncated parquet file"),
    "nocolumn.parquet": (_table(pa.binary(), [b"x"], ["t"]).rename_columns(["img", "text"]), "no column 'image'"),
    "inttype.parquet": (_table(pa.int64(), [1], ["t"]), "column 'image' (fetch.image_column) is int64"),
    "texttype.parquet": (_table(pa.binary(), [b"x"], [1], pa.int64()), "column 'text' (fetch.text_column) is int64"),
    "pathtype.parquet": (_table(pa.struct([("bytes", pa.binary()), ("path", pa.int64())]),
                                [{"bytes": b"x", "path": 1}], ["t"]),
                         "column 'image' (fetch.image_column) is struct<bytes: binary, path: int64>"),
    "twoimages.parquet": (pa.Table.from_arrays([pa.array([b"x"]), pa.array([b"y"]), pa.array(["t"])],
                                               names=["image", "image", "text"]), "2 columns named 'image'"),
}


def test_a_row_group_too_big_to_read_at_once_is_refused(tmp_path, monkeypatch):
    shard = synthetic_logos.write(tmp_path / "big.parquet", 5)
    monkeypatch.setattr(shards, "MAX_ROW_GROUP_BYTES", 100)
    with pytest.raises(shards.ShardError, match=r"big\.parquet: row group 0 holds \d+ bytes uncompressed, over the 100"):
        shards.open_checked(shard, str(shard), "image", "text")


def test_a_caption_cut_at_fetch_is_rejected_whatever_the_limit():
    row = {"bytes": "10", "image_path": "", "text": "  " + "a" * shards.MAX_TEXT_CHARS}  # as fetch stores it: cut
    cfg = type("C", (), {"max_image_bytes": 100, "max_caption_chars": 10 * shards.MAX_TEXT_CHARS})
    assert logos._reason(row, cfg) == f"caption: over {shards.MAX_TEXT_CHARS} characters"


@pytest.mark.parametrize("name", sorted(HOSTILE_SHARDS))
def test_hostile_shard_refused_with_its_name_and_nothing_left(tmp_path, monkeypatch, name):
    good = synthetic_logos.write(tmp_path / "good.parquet", 5)
    payload, why = HOSTILE_SHARDS[name]
    bad = tmp_path / name
    if isinstance(payload, bytes):
        bad.write_bytes(payload)
    elif payload is None:
        bad.write_bytes(good.read_bytes()[:-100])
    else:
        pq.write_table(payload, bad)
    repo = tmp_path / "repo"
    write_params(repo, [str(good), str(bad)])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "stages.fetch"], cwd=repo, env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    line = p.stderr.strip().splitlines()[-1]
    assert line.startswith(f"fetch: {bad}: ") and why in line, line
    assert not (repo / "data/raw").exists() and not (repo / "data/manifest.csv").exists()


class RangeServer(http.server.ThreadingHTTPServer):
    """Serves `payload` as version `etag`, honouring Range unless If-Range names another version; the first
    response stops after `cut` bytes (a dropped connection); `then` (payload, etag) replaces the file
    after that first response (an upload on the hub between two attempts)."""

    def __init__(self, payload: bytes, cut: int, then: tuple[bytes, str] | None = None):
        self.payload, self.etag, self.cut, self.then, self.ranges = payload, '"v1"', cut, then, []
        super().__init__(("127.0.0.1", 0), RangeHandler)


class RangeHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        srv = self.server
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
        if self.headers.get("If-Range") not in (None, srv.etag):  # another version: the whole file
            start = 0
        srv.ranges.append(start)
        body = srv.payload[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", srv.etag)
        self.end_headers()
        if srv.cut:
            body, srv.cut = body[:srv.cut], 0
            if srv.then:
                srv.payload, srv.etag = srv.then
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def serve_and_fetch(tmp_path: Path, monkeypatch, server: RangeServer, sha256: str) -> Path:
    """fetch.main() of the server's shard in a new repo; the repo."""
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/data/train-00000-of-00001.parquet"
        monkeypatch.setattr("iconforge.dataset.archive.BACKOFF_S", 0.01)
        monkeypatch.setattr("iconforge.dataset.archive.CHUNK", 1024)  # what arrived before the cut is kept
        repo = tmp_path / "repo"
        write_params(repo, [url], fetch={"shards_sha256": [sha256]})
        monkeypatch.chdir(repo)
        fetch.main()
    finally:
        server.shutdown()
        server.server_close()
    return repo


def test_download_resumes_with_range_and_verifies(tmp_path, monkeypatch):
    shard = synthetic_logos.write(tmp_path / "src.parquet", 30)
    payload = shard.read_bytes()
    server = RangeServer(payload, cut=len(payload) // 2)
    repo = serve_and_fetch(tmp_path, monkeypatch, server, hashlib.sha256(payload).hexdigest())
    assert len(server.ranges) == 2 and 0 < server.ranges[1] <= len(payload) // 2  # the retry asked for the rest
    rows = read(repo / "data/manifest.csv")
    assert len(rows) == 30 and rows[0]["path"] == "train-00000-of-00001/0000000.img"
    assert json.loads((repo / "data/source.json").read_text())["shards"][0]["sha256"] == hashlib.sha256(
        payload).hexdigest()
    assert [p.name for p in (repo / paths.SHARD_CACHE).iterdir() if ".part" in p.name] == []


def test_a_file_changed_between_attempts_is_fetched_whole_not_spliced(tmp_path, monkeypatch):
    old = synthetic_logos.write(tmp_path / "old.parquet", 30, seed=1).read_bytes()
    new = synthetic_logos.write(tmp_path / "new.parquet", 40, seed=2).read_bytes()
    server = RangeServer(old, cut=len(old) // 2, then=(new, '"v2"'))
    repo = serve_and_fetch(tmp_path, monkeypatch, server, hashlib.sha256(new).hexdigest())
    assert len(server.ranges) == 2 and server.ranges[1] == 0  # asked for the rest of v1, got all of v2
    assert len(read(repo / "data/manifest.csv")) == 40


def test_unreachable_hub_fails_with_a_clear_message(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    write_params(repo, ["https://127.0.0.1:9/datasets/x/resolve/main/data/train-0.parquet"], fetch={"retries": 0})
    monkeypatch.chdir(repo)
    with pytest.raises(shards.StageError, match=r"train-0\.parquet: download failed after 1 attempt"):
        fetch.main()
    assert not (repo / "data/raw").exists()


# --- rows through every stage ------------------------------------------------------------------------------------

def _mark(mode: str, size=(60, 30)) -> Image.Image:
    """A dark square on white (transparent around it for alpha modes), wider than tall."""
    a = np.full((size[1], size[0]), 255, np.uint8)
    a[8:22, 20:40] = 0
    im = Image.fromarray(a, "L")
    if mode in ("RGBA", "LA"):
        alpha = Image.fromarray(np.where(a == 0, 255, 0).astype(np.uint8), "L")
        im = Image.merge(mode, [im] * (3 if mode == "RGBA" else 1) + [alpha])
    elif mode == "P":
        im = im.convert("P")
        im.info["transparency"] = 255  # palette index of white
    elif mode == "I;16":
        im = Image.fromarray(a.astype(np.uint16) * 257)  # Pillow: mode I;16
    else:
        im = im.convert(mode)
    return im


def _gif() -> bytes:
    frames = [_mark("L").convert("P"), Image.new("P", (60, 30), 0)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


def _keyed(mode: str, key) -> bytes:
    """The mark on a background of colour `key`, which the PNG's tRNS chunk makes transparent."""
    a = np.asarray(_mark("L"))
    im = Image.fromarray(np.where(a == 0, 0, 128).astype(np.uint8), "L").convert(mode)
    return encode(im, transparency=key)


def _keyed16() -> bytes:
    """A 16-bit grey PNG: the mark on a background of 32896 (128 x 257), which its tRNS makes transparent."""
    a = np.asarray(_mark("L"))
    return encode(Image.fromarray(np.where(a == 0, 0, 32896).astype(np.uint16)), transparency=32896)


def _rotated() -> bytes:
    """A JPEG stored sideways whose EXIF Orientation (6: rotate 90 degrees clockwise) makes it the upright mark."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(_mark("RGB").transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif.tobytes())


GOOD_IMAGES = {  # row text name -> image bytes that must render to the mark on white
    "one": encode(_mark("1")), "grey": encode(_mark("L")), "palette": encode(_mark("P")),
    "greyalpha": encode(_mark("LA")), "rgba": encode(_mark("RGBA")), "cmyk": encode(_mark("CMYK"), "JPEG"),
    "sixteen": encode(_mark("I;16")), "animated": _gif(), "webp": encode(_mark("RGB"), "WEBP", lossless=True),
    "jpeg": encode(_mark("RGB"), "JPEG", quality=95), "greykey": _keyed("L", 128),
    "rgbkey": _keyed("RGB", (128, 128, 128)), "sixteenkey": _keyed16(), "rotated": _rotated(),
}
BOMB = encode(Image.new("1", (6000, 6000), 1))  # 36 Mpx in a few kB


def hostile_rows(secret: Path) -> list[tuple[dict | None, str, str]]:
    """(image, text, expected outcome): 'ok' or the reject kind."""
    synth = list(synthetic_logos.rows(3, seed=5))
    near = Image.open(io.BytesIO(synth[0][0])).convert("RGB")
    near = encode(near.resize((near.width * 2 // 3, near.height * 2 // 3)), "JPEG", quality=80)
    rows = [({"bytes": data, "path": None}, f"Simple elegant logo for {n.title()}, Mark, Test, minimalist", "ok")
            for n, data in GOOD_IMAGES.items()]
    return rows + [
        ({"bytes": synth[0][0], "path": None}, synth[0][1], "ok"),
        ({"bytes": near, "path": "near.jpg"}, synth[0][1], "ok"),  # a near duplicate: same group
        ({"bytes": synth[1][0], "path": None}, synth[1][1], "ok"),
        ({"bytes": synth[1][0], "path": None}, "another text", "duplicate"),
        (None, TEXT, "missing"),
        ({"bytes": b"", "path": None}, TEXT, "missing"),
        ({"bytes": None, "path": str(secret)}, TEXT, "path_only"),  # a real file: must not be read
        ({"bytes": None, "path": "../../../../etc/passwd"}, TEXT, "path_only"),
        ({"bytes": synth[2][0], "path": None}, "   ", "caption"),
        ({"bytes": synth[2][0], "path": None}, "x" * 2000, "caption"),
        ({"bytes": b'<?xml version="1.0"?><!DOCTYPE s [<!ENTITY x SYSTEM "file:///etc/passwd">]><svg>&x;</svg>',
          "path": None}, TEXT, "decode"),
        ({"bytes": b"<html><body>Rate limited</body></html>", "path": None}, TEXT, "decode"),
        ({"bytes": BOMB, "path": None}, TEXT, "decode"),
        ({"bytes": GOOD_IMAGES["grey"][:40], "path": None}, TEXT, "decode"),  # truncated PNG
    ]


def test_every_row_rendered_or_rejected_with_a_reason_and_no_named_file_read(tmp_path, monkeypatch):
    secret = tmp_path / "secret.png"
    secret.write_bytes(GOOD_IMAGES["grey"])
    cases = hostile_rows(secret)
    shard = tmp_path / "hostile.parquet"
    pq.write_table(synthetic_logos.table([c[0] for c in cases], [c[1] for c in cases]), shard)
    repo = tmp_path / "repo"
    write_params(repo, [str(shard)], size=32, filter={"max_caption_chars": 500, "near_dup_bits": 4})
    monkeypatch.chdir(repo)
    opened = []
    real_open = open

    def spy(file, *a, **k):
        opened.append(str(file))
        return real_open(file, *a, **k)
    monkeypatch.setattr("builtins.open", spy)
    fetch.main()
    filter_license.main()
    rasterize_stage.main()
    caption_stage.main()
    assert not any("secret" in f or "passwd" in f for f in opened)

    rejects = {r["path"]: r["reason"] for r in read(repo / "data/filter_rejects.csv")}
    rejects |= {r["path"]: r["reason"] for r in read(repo / "data/raster_rejects.csv")}
    kept = {r["path"]: r for r in read(repo / "data/filtered.csv")}
    for i, (_, _, expected) in enumerate(cases):
        path = f"hostile/{i:07d}.img"
        if expected == "ok":
            assert path in kept, (i, rejects.get(path))
            png = Image.open(repo / "data/png" / path.replace(".img", ".png"))
            assert png.mode == "RGB" and png.size == (32, 32)
        else:
            assert rejects[path].split(":")[0] == expected, (i, rejects.get(path))
    assert "decompression bomb" in rejects[f"hostile/{len(cases) - 2:07d}.img"]
    assert "markup" in rejects[f"hostile/{len(cases) - 4:07d}.img"]
    assert kept["hostile/0000011.img"]["group"] == kept["hostile/0000010.img"]["group"]  # the near duplicate
    assert kept["hostile/0000011.img"]["split"] == kept["hostile/0000010.img"]["split"]
    meta = [json.loads(x) for s in ("train", "validation")
            for x in (repo / "data/dataset" / s / "metadata.jsonl").read_text().splitlines()]
    assert len(meta) == sum(c[2] == "ok" for c in cases)
    assert {m["text"] for m in meta} >= {"bioicons style, Grey, Test"}  # the committed template, logo fields
    credits = read(repo / "data/credits.csv")
    assert credits[0]["license"] == "unspecified" and "amazing_logos_v4#hostile/" in credits[0]["source_url"]


@pytest.mark.parametrize("name", sorted(GOOD_IMAGES))
def test_every_mode_ends_as_the_mark_on_white_aspect_kept(name):
    im = Image.open(io.BytesIO(raster.normalise(GOOD_IMAGES[name], 64, 0.0)))
    a = np.asarray(im).astype(int)
    assert im.mode == "RGB" and im.size == (64, 64)
    assert (a[:12] > 230).all() and (a[-12:] > 230).all()  # 60x30 scaled to 64x32: white bands above and below
    assert a[32, 32].max() < 60  # the dark mark, centred
    assert (a[32, 4] > 230).all()  # white (or transparent made white) beside it
    height, width = np.ptp(np.argwhere(a.max(axis=2) < 128), axis=0) + 1
    assert width > height  # the 20x14 mark upright (an EXIF-rotated JPEG as its viewers show it)


def test_selection_last_and_random():
    rows = [{"path": f"s/{i:07d}.img"} for i in range(100)]
    cfg = type("C", (), {"select": "last", "select_n": 10, "seed": 0})
    kept, rejected = logos.select(rows, cfg)
    assert [r["path"] for r in kept] == [f"s/{i:07d}.img" for i in range(90, 100)] and len(rejected) == 90
    cfg.select = "random"
    kept, _ = logos.select(rows, cfg)
    more, _ = logos.select(rows + [{"path": f"t/{i:07d}.img"} for i in range(100)], cfg)
    assert len(kept) == 10 and kept == logos.select(rows, cfg)[0]
    assert len({r["path"] for r in more} & {r["path"] for r in kept}) >= 1  # stable draws per row


def test_near_groups():
    h = {"a": 0, "b": 0b111, "c": 0b1111111111, "d": 0, "e": 1 << 63}
    assert logos.near_groups(h, 3) == {"a": "a", "b": "a", "c": "c", "d": "a", "e": "a"}
    assert logos.near_groups(h, 0) == {"a": "a", "b": "b", "c": "c", "d": "a", "e": "e"}


def test_fetch_memory_does_not_grow_with_the_shard(tmp_path):
    """Shards of 200 and 2,000 rows of 100 kB images (20 and 200 MB): fetch streams one row group at a
    time, so its peak is the same for both; reading a whole shard at once would add ~360 MB (arrow
    buffers and Python bytes). Compared with the small shard, not with a fixed figure: the baseline
    (interpreter, pyarrow, the allocator's own retention) differs between machines."""
    rng = np.random.default_rng(0)
    blobs = [encode(Image.fromarray(rng.integers(0, 255, (190, 180, 3), dtype=np.uint8))) for _ in range(10)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # VmHWM, not ru_maxrss: that survives exec, so it would report this test process's peak.
    code = ("import runpy, sys; sys.argv=['x']; runpy.run_module('stages.fetch', run_name='__main__')\n"
            "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))")
    peak_mb = {}
    for groups in (2, 20):
        shard = tmp_path / f"{groups}.parquet"  # incompressible images, distinct bytes, 100 rows per group as `datasets`
        with pq.ParquetWriter(shard, synthetic_logos.SCHEMA) as w:
            for g in range(groups):
                w.write_table(synthetic_logos.table([{"bytes": blobs[i % 10] + bytes([g, i]), "path": None}
                                                     for i in range(100)], [TEXT] * 100))
        repo = tmp_path / f"repo{groups}"
        write_params(repo, [str(shard)])
        p = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        assert len(read(repo / "data" / "manifest.csv")) == groups * 100
        peak_mb[groups] = int(p.stdout.split()[-1]) / 1024
    assert (tmp_path / "20.parquet").stat().st_size > 200e6
    assert peak_mb[20] - peak_mb[2] < 60, peak_mb


def test_make_demo_after_make_demo_logos_gets_a_valid_params_yaml(tmp_path):
    """`make demo` after `make demo-logos`: iconforge.overrides restores the committed params.yaml and
    prints only the demo's -S arguments, which DVC's own override code (what `dvc exp run -S` runs)
    applies. Resetting fetch.shards with -S instead corrupted params.yaml (ruamel.yaml's round trip)."""
    from dvc.utils.hydra import apply_overrides

    from iconforge import overrides
    from iconforge.config import parse_params

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "params.yaml").write_text(subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=ROOT, text=True,
                                                     capture_output=True, check=True).stdout, encoding="utf-8")
    for cmd in (["init", "-q"], ["add", "params.yaml"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "p"]):
        subprocess.run(["git", *cmd], cwd=repo, check=True)
    committed = (repo / "params.yaml").read_text(encoding="utf-8")

    def make(*files: str) -> dict:  # the Makefile's `python -m iconforge.overrides ... | xargs -0 dvc exp run`
        out = subprocess.run([sys.executable, "-m", "iconforge.overrides", *[str(ROOT / f) for f in files]], cwd=repo,
                             capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert (repo / "params.yaml").read_text(encoding="utf-8") == committed  # the last demo's keys are gone
        apply_overrides(repo / "params.yaml", [a for a in out.stdout.split("\0") if a and a != "-S"])
        return parse_params((repo / "params.yaml").read_text(encoding="utf-8"))

    demo = overrides.merged(parse_params(committed), overrides.read(ROOT / "demo.yaml"))
    logos = overrides.merged(demo, overrides.read(ROOT / "demo-logos.yaml"))
    assert make("demo.yaml") == demo
    assert make("demo.yaml", "demo-logos.yaml") == logos and logos["fetch"]["shards"]
    assert make("demo.yaml") == demo  # back: a params.yaml DVC can read, fetch.shards empty again
    assert "timeout_s: 60\n" in (repo / "params.yaml").read_text(encoding="utf-8")


def test_an_added_shard_renders_only_its_new_rows(tmp_path, monkeypatch, capsys):
    a = synthetic_logos.write(tmp_path / "a.parquet", 20, seed=1)
    b = synthetic_logos.write(tmp_path / "b.parquet", 10, seed=2)
    repo = tmp_path / "repo"
    monkeypatch.chdir(tmp_path)
    for shard_list in ([str(a)], [str(a), str(b)]):
        write_params(repo, shard_list)
        monkeypatch.chdir(repo)
        fetch.main()
        filter_license.main()
        rasterize_stage.main()
    out = capsys.readouterr().out
    assert "rendered 20, from cache 0" in out and "rendered 10, from cache 20" in out
