"""Labelled contact sheet: one row per prompt, `prompt | base | LoRA`, column headers on top."""
from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

HEADER_H = 28
LABEL_W = 320
MAX_CELL = 256  # 1024 px samples are shown at 256 px
FONT_SIZE = 14
LINE_GAP = 4
GAP = 4  # white space between images, so neighbouring cells stay apart
COLUMNS = ("prompt", "base", "LoRA")


def cell_size(image_size: int) -> int:
    return min(image_size, MAX_CELL)


def sheet_size(n_rows: int, image_size: int) -> tuple[int, int]:
    c = cell_size(image_size)
    return LABEL_W + 2 * c + GAP, HEADER_H + n_rows * (c + GAP)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """Greedy word wrap to a pixel width; a word longer than the width gets a line of its own."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines


def contact_sheet(rows: list[tuple[str, Image.Image, Image.Image]]) -> Image.Image:
    """rows: (prompt, base image, LoRA image); all images share one square size."""
    c = cell_size(rows[0][1].width)
    sheet = Image.new("RGB", sheet_size(len(rows), rows[0][1].width), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=FONT_SIZE)  # bundled with Pillow: works offline
    for x, title in zip((0, LABEL_W, LABEL_W + c + GAP), COLUMNS):
        draw.text((x + 8, HEADER_H // 2), title, fill="black", font=font, anchor="lm")
    draw.line((0, HEADER_H - 1, sheet.width, HEADER_H - 1), fill="grey")
    for i, (prompt, base, lora) in enumerate(rows):
        y = HEADER_H + GAP + i * (c + GAP)
        sheet.paste(base.convert("RGB").resize((c, c), Image.Resampling.LANCZOS), (LABEL_W, y))
        sheet.paste(lora.convert("RGB").resize((c, c), Image.Resampling.LANCZOS), (LABEL_W + c + GAP, y))
        ty = y + 8
        for line in _wrap(draw, prompt, font, LABEL_W - 16):
            if ty + FONT_SIZE > y + c:  # cut what does not fit in the row
                break
            draw.text((8, ty), line, fill="black", font=font)
            ty += FONT_SIZE + LINE_GAP
    return sheet
