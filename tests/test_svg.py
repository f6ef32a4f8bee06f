"""iconforge.dataset.svg: sanitizing and rendering single untrusted SVGs (in-process).
Every safety and geometry test runs with each renderer (the `renderer` fixture)."""
import base64
import io
import time

import cairosvg
import numpy as np
import pytest
from PIL import Image

from iconforge.config import RENDERERS
from iconforge.dataset.svg import DARK, RENDERER_VERSIONS, WHITE, SvgError, render, sanitize, strip_light_dark

NS = 'xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink"'
# Black to the edges of its viewBox, a red dot in the middle (one flat colour would be blank).
SQUARE = (f'<svg {NS} viewBox="0 0 10 10"><rect width="10" height="10" fill="#000"/>'
          f'<rect x="4" y="4" width="2" height="2" fill="red"/></svg>').encode()


@pytest.fixture(params=RENDERERS)
def renderer(request) -> str:
    return request.param


def png(data: bytes, renderer: str, size: int = 100, margin: float = 0.1) -> Image.Image:
    im = Image.open(io.BytesIO(render(data, size, margin, renderer).png))
    im.load()
    return im


def rgb(im: Image.Image, x: int, y: int) -> tuple:
    return im.getpixel((x, y))


BLACK, RED = (0, 0, 0), (255, 0, 0)


def test_every_configurable_renderer_exists():
    assert set(RENDERER_VERSIONS) == set(RENDERERS)


def test_square_fills_the_inner_box_with_white_margin(renderer):
    im = png(SQUARE, renderer)
    assert im.mode == "RGB" and im.size == (100, 100)
    assert rgb(im, 9, 50) == WHITE and rgb(im, 10, 50) == BLACK
    assert rgb(im, 89, 50) == BLACK and rgb(im, 90, 50) == WHITE
    assert rgb(im, 50, 9) == WHITE and rgb(im, 50, 10) == BLACK and rgb(im, 50, 90) == WHITE
    assert rgb(im, 50, 50) == RED
    assert not im.info  # no metadata chunks (timestamps, software, ...)


def test_wide_drawing_keeps_aspect_and_is_centred(renderer):
    im = png(f'<svg {NS} width="200" height="100" viewBox="0 0 20 10" preserveAspectRatio="none">'
             f'<rect width="20" height="10" fill="red"/></svg>'.encode(), renderer)
    # inner box 80x80 at (10, 10); a 2:1 drawing is 80x40, centred vertically
    assert rgb(im, 10, 30) == RED and rgb(im, 89, 69) == RED
    assert rgb(im, 50, 29) == WHITE and rgb(im, 50, 70) == WHITE and rgb(im, 9, 50) == WHITE


def test_transparency_is_flattened_onto_white(renderer):
    im = png(f'<svg {NS} viewBox="0 0 10 10"><rect width="5" height="10" fill="#000" '
             f'fill-opacity="0.5"/></svg>'.encode(), renderer)
    r, g, b = rgb(im, 30, 50)
    assert r == g == b and 120 <= r <= 135 and rgb(im, 70, 50) == WHITE


def test_white_only_mark_is_flattened_onto_dark_grey(renderer):
    # A white logo on transparent (bioicons' nf-core-logo-mono-white.svg): invisible on white.
    data = (f'<svg {NS} viewBox="0 0 10 10"><circle cx="5" cy="5" r="3" fill="#fff"/>'
            f'<text x="1" y="9" font-size="2" fill="white" font-family="NoSuchFont">nf</text></svg>').encode()
    raster = render(data, 100, 0.1, renderer)
    im = Image.open(io.BytesIO(raster.png))
    assert raster.background == DARK and rgb(im, 50, 50) == WHITE
    assert rgb(im, 5, 5) == rgb(im, 20, 20) == DARK  # margin and drawing share the background
    # Some visible ink (a dark outline) keeps the white background.
    outlined = data.replace(b'fill="#fff"/>', b'fill="#fff" stroke="#000" stroke-width="0.5"/>')
    assert render(outlined, 100, 0.1, renderer).background == WHITE


def test_same_input_gives_identical_bytes(renderer):
    assert render(SQUARE, 64, 0.05, renderer) == render(SQUARE, 64, 0.05, renderer)


ILLUSTRATOR = b"""<?xml version="1.0" encoding="utf-8"?>
<!-- Generator: Adobe Illustrator 26.0.0, SVG Export Plug-In -->
<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" "http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd" [
  <!ENTITY ns_svg "http://www.w3.org/2000/svg">
  <!ENTITY ns_xlink "http://www.w3.org/1999/xlink">
  <!ENTITY st0 "fill:#FF0000;">
]>
<svg version="1.1" xmlns="&ns_svg;" xmlns:xlink="&ns_xlink;" viewBox="0 0 10 10">
  <rect width="5" height="10" style="&st0;"/>
</svg>
"""


def test_illustrator_internal_entities_render(renderer):
    with pytest.raises(Exception):  # what the fix is for: cairosvg alone refuses the DTD
        cairosvg.svg2png(ILLUSTRATOR)
    assert b"DOCTYPE" not in sanitize(ILLUSTRATOR)
    assert rgb(png(ILLUSTRATOR, renderer), 30, 50) == RED


def test_trailing_junk_after_root_is_dropped(renderer):
    data = SQUARE + b"\nAAAA/base64 private data ]]>\n</i:pgf>\n</svg>\n"
    assert rgb(png(data, renderer), 20, 20) == BLACK


def test_xxe_does_not_read_local_files(tmp_path, renderer):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET-MARKER")
    for dtd in (f'<!ENTITY x SYSTEM "file://{secret}">', f'<!ENTITY x SYSTEM "{secret}">'):
        data = (f'<?xml version="1.0"?><!DOCTYPE svg [{dtd}]>'
                f'<svg {NS} viewBox="0 0 10 10"><rect width="5" height="5"/><text y="9">&x;</text></svg>').encode()
        try:
            out = sanitize(data)
            render(data, 64, 0, renderer)
        except SvgError as e:
            assert "TOPSECRET" not in str(e)
        else:
            assert b"TOPSECRET" not in out
    pe = (f'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY % p SYSTEM "file://{secret}"> %p;]>'
          f'<svg {NS} viewBox="0 0 10 10"><rect width="5" height="5"/></svg>').encode()
    try:
        assert b"TOPSECRET" not in sanitize(pe)
    except SvgError as e:
        assert "TOPSECRET" not in str(e)


def test_billion_laughs_is_rejected_quickly(renderer):
    ents = '<!ENTITY l0 "lol">' + "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    bomb = f'<?xml version="1.0"?><!DOCTYPE svg [{ents}]><svg {NS}><text>&l9;</text></svg>'.encode()
    t = time.perf_counter()
    with pytest.raises(SvgError, match="invalid XML"):
        render(bomb, 64, 0, renderer)
    assert time.perf_counter() - t < 2


def test_strip_light_dark_handles_nested_parentheses():
    assert strip_light_dark("fill: light-dark(rgb(1, 2, 3), var(--d, #121212)); stroke: "
                            "light-dark(#000, #fff)") == "fill: rgb(1, 2, 3); stroke: #000"
    assert strip_light_dark("color: light-dark(light-dark(red, blue), green)") == "color: red"
    with pytest.raises(SvgError):
        strip_light_dark("fill: light-dark(red, blue")


def test_light_dark_renders_the_light_colour(renderer):
    data = (f'<svg {NS} viewBox="0 0 10 10"><style>.a {{ fill: light-dark(rgb(0, 0, 255), #fff); }}</style>'
            f'<rect class="a" width="10" height="5"/>'
            f'<rect y="5" width="10" height="5" style="fill: light-dark(rgb(255, 0, 0), var(--x, #121212))"/>'
            f'</svg>').encode()
    im = png(data, renderer)
    assert rgb(im, 50, 20) == (0, 0, 255) and rgb(im, 50, 80) == RED


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"),
    (b"  \n", "empty file"),
    (SQUARE[:40], "invalid XML"),  # truncated
    (b"<!DOCTYPE html><html><body><p>not found</p></body></html>", "not an SVG"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "invalid XML"),
    (f'<svg {NS} viewBox="0 0 10 10"></svg>'.encode(), r"blank \(nothing drawn\)"),
    (f'<svg {NS} viewBox="0 0 10 10"><g><rect width="10" height="10" opacity="0"/><circle r="0"/>'
     f'<text> </text></g></svg>'.encode(), r"blank \(nothing drawn\)"),
    (f'<svg {NS} viewBox="0 0 10 10"><rect width="10" height="10" fill="#fff"/></svg>'.encode(), "blank"),
    (f'<svg {NS} viewBox="0 0 10 10"><rect x="-5" width="20" height="10" fill="#123"/></svg>'.encode(),
     r"blank \(one flat colour\)"),  # a background and nothing on it
])
def test_bad_files_are_rejected_with_a_reason(data, reason, renderer):
    with pytest.raises(SvgError, match=reason):
        render(data, 64, 0.05, renderer)


def test_huge_declared_dimensions_render_at_the_target_size(renderer):
    for root in ('width="1000000000" height="1000000000" viewBox="0 0 10 10"', 'width="1e9" height="5e8"'):
        data = f'<svg {NS} {root}><rect width="50%" height="100%" fill="red"/></svg>'.encode()
        t = time.perf_counter()
        im = png(data, renderer)
        assert time.perf_counter() - t < 2 and im.size == (100, 100) and rgb(im, 40, 50) == RED


def test_use_recursion_is_refused_not_hung(renderer):
    # cairosvg rejects the icon; resvg skips the recursive <use> and draws the rest.
    for body in ('<g id="a"><use xlink:href="#a"/></g>', '<use id="a" href="#b"/><use id="b" href="#a"/>'):
        data = f'<svg {NS} viewBox="0 0 10 10"><rect width="5" height="5"/>{body}</svg>'.encode()
        t = time.perf_counter()
        try:
            im = png(data, renderer, 64, 0)
        except SvgError as e:
            assert str(e).startswith("render error")
        else:
            assert rgb(im, 10, 10) == BLACK and rgb(im, 50, 50) == WHITE
        assert time.perf_counter() - t < 2


def test_external_links_are_never_followed(tmp_path, renderer):
    red = tmp_path / "red.png"
    Image.new("RGB", (10, 10), RED).save(red)
    (tmp_path / "red.css").write_text("rect { fill: red }")
    for href in (f"file://{red}", str(red), "red.png", "http://127.0.0.1:9/red.png"):
        data = (f'<svg {NS} viewBox="0 0 20 10"><rect width="10" height="10" fill="#000"/>'
                f'<image x="10" width="10" height="10" xlink:href="{href}"/>'
                f'<image x="10" width="10" height="10" href="{href}"/>'
                f'<use xlink:href="{href}#x"/><image x="10" width="10" height="10"/></svg>').encode()
        assert href.encode() not in sanitize(data)
        im = png(data, renderer)
        assert rgb(im, 70, 50) == WHITE and rgb(im, 30, 50) == BLACK
    # An SVG inside a data: URL is out of the sanitizer's reach: its own links must stay dead too.
    inner = (f'<svg {NS} viewBox="0 0 10 10"><rect width="2" height="2" fill="#00f"/>'
             f'<image width="10" height="10" href="{red}"/><image width="10" height="10" xlink:href="file://{red}"/>'
             f'</svg>')
    href = "data:image/svg+xml;base64," + base64.b64encode(inner.encode()).decode()
    im = png(f'<svg {NS} viewBox="0 0 10 10"><rect width="5" height="10"/>'
             f'<image width="10" height="10" xlink:href="{href}"/></svg>'.encode(), renderer)
    assert rgb(im, 15, 15) == (0, 0, 255) and rgb(im, 70, 50) == WHITE
    # CSS @import survives sanitizing; cairosvg's url_fetcher refuses it, resvg ignores @import.
    data = (f'<svg {NS} viewBox="0 0 10 10"><style>@import "file://{tmp_path}/red.css";</style>'
            f'<rect width="5" height="10" fill="#000"/></svg>').encode()
    assert rgb(png(data, renderer), 30, 50) == BLACK


def test_data_urls_still_work(renderer):
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), RED).save(buf, format="PNG")
    href = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    data = f'<svg {NS} viewBox="0 0 10 10"><image width="5" height="10" xlink:href="{href}"/></svg>'.encode()
    assert rgb(png(data, renderer), 30, 50) == RED


def test_a_filter_pointing_nowhere_is_ignored(renderer):
    # As browsers do; resvg alone would not draw the element (4 OpenClipart bioicons).
    for attr in ('filter="url(#missing)"', 'style="fill:red;filter:url(#missing)"'):
        data = f'<svg {NS} viewBox="0 0 10 10"><rect width="5" height="10" fill="red" {attr}/></svg>'.encode()
        assert rgb(png(data, renderer), 30, 50) == RED


def test_inkscape_flowroot_is_not_drawn(renderer):
    # Browsers skip this never-standardized element; cairosvg painted its white frame over the icon.
    data = (f'<svg {NS} viewBox="0 0 10 10"><rect width="10" height="10"/><rect x="3" y="3" width="4" height="4" '
            f'fill="red"/><flowRoot><flowRegion><rect width="5" height="10" fill="#fff"/></flowRegion>'
            f'<flowPara>text</flowPara></flowRoot></svg>').encode()
    assert b"flow" not in sanitize(data)
    assert rgb(png(data, renderer), 20, 50) == BLACK


def test_resvg_falls_back_to_an_installed_font():
    # resvg alone drops text whose font families are all missing; cairo substitutes a font.
    text = '<text x="1" y="8" font-size="8" {}>Hi</text>'
    for attr in ('font-family="NoSuchFont"', 'style="font-family: \'NoSuchFont\', sans-serif"', "",
                 'class="t"><style>.t { font-family: NoSuchFont !important }</style'):
        data = f'<svg {NS} viewBox="0 0 20 10">{text.format(attr)}<rect width="1" height="1"/></svg>'.encode()
        for r in RENDERERS:
            ink = (np.asarray(png(data, r, 100, 0)) != WHITE).any(axis=-1).sum()
            assert ink > 200, (attr, r)


def test_use_copies_draw_like_use_and_stay_fast():
    # <use> of a shape, with x/y and a fill inherited from the <use>, also inside a <clipPath>
    data = (f'<svg {NS} viewBox="0 0 10 10"><defs><rect id="r" width="5" height="5"/>'
            f'<clipPath id="c"><use xlink:href="#r" x="5"/></clipPath></defs>'
            f'<use xlink:href="#r" x="5" y="5" fill="red"/>'
            f'<rect width="10" height="5" fill="#00f" clip-path="url(#c)"/></svg>').encode()
    im = png(data, "cairosvg")
    assert rgb(im, 70, 70) == RED and rgb(im, 30, 70) == WHITE  # the <use> at (5, 5)
    assert rgb(im, 70, 30) == (0, 0, 255) and rgb(im, 30, 30) == WHITE  # clipped to x >= 5
    # Thousands of <use>: cairosvg alone scans the whole document for each one (~10 s here).
    n = 2000
    defs = "".join(f'<path id="p{i}" d="M{i % 10} 0h1v1h-1z"/>' for i in range(n))
    uses = "".join(f'<use xlink:href="#p{i}" y="{i % 9}" fill="#000"/>' for i in range(n))
    t = time.perf_counter()
    png(f'<svg {NS} viewBox="0 0 10 10"><defs>{defs}</defs>{uses}</svg>'.encode(), "cairosvg")
    assert time.perf_counter() - t < 5
