"""Deterministic placeholder images rendered with Pillow.

`render_image` draws a smooth colour field derived from the seed and the prompt, plus a short
text label, and encodes it. The same arguments always give the same bytes (for a given Pillow
build), and there are no per-pixel Python loops: a 256x256 field is built from Pillow's gradient
primitives, colour-mixed with one matrix conversion and resized to the target size.
"""

from __future__ import annotations

import hashlib
import io
from typing import Literal

from PIL import Image, ImageDraw, ImageFont

__all__ = ["ImageFormat", "render_image"]

ImageFormat = Literal["jpeg", "png", "webp"]

_MAX_SIDE = 16384
_FIELD = 256  # Pillow's gradient primitives are 256x256.


def _colour_matrix(digest: bytes) -> tuple[float, ...]:
    """A 12-tuple RGB->RGB matrix that mixes the three gradients into colours from `digest`."""
    matrix: list[float] = []
    for channel in range(3):
        raw = digest[channel * 4 : channel * 4 + 4]
        weights = [(b / 255.0 - 0.5) * 1.4 for b in raw[:3]]
        # Centre the channel's range around a hash-chosen mid level so it rarely clips flat.
        centre = 64.0 + raw[3] / 255.0 * 128.0
        offset = centre - sum(weights) * 127.5
        matrix.extend([*weights, offset])
    return tuple(matrix)


def _ascii(text: str) -> str:
    """Printable ASCII only, so every font (including the bitmap fallback) can draw it."""
    return "".join(ch if " " <= ch <= "~" else "?" for ch in text)


def _truncate(text: str, limit: int) -> str:
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    return text[: max(1, limit - 3)].rstrip() + "..."


def _draw_label(img: Image.Image, lines: list[str]) -> None:
    width, height = img.size
    size = max(8, min(width, height) // 28)
    font = ImageFont.load_default(size=size)
    draw = ImageDraw.Draw(img)
    margin = max(2, size // 2)
    max_chars = max(4, int((width - 3 * margin) / (size * 0.6)))
    texts = [_truncate(_ascii(line), max_chars) for line in lines if line]
    if not texts:
        return
    text = "\n".join(texts)
    left, top, right, bottom = draw.multiline_textbbox((margin, margin), text, font=font)
    draw.rectangle(
        (left - margin // 2, top - margin // 2, right + margin // 2, bottom + margin // 2),
        fill=(0, 0, 0),
    )
    draw.multiline_text((margin, margin), text, font=font, fill=(255, 255, 255))


def render_image(
    prompt: str,
    width: int,
    height: int,
    fmt: ImageFormat,
    seed: int = 0,
    label: str | None = None,
) -> bytes:
    """Render a deterministic `width` x `height` image and return it encoded as `fmt`.

    The colour field depends on `seed` and `prompt`; the top-left corner shows the (truncated)
    prompt, `label` (e.g. "SIMULATED") and the seed and size.
    """
    if not (0 < width <= _MAX_SIDE and 0 < height <= _MAX_SIDE):
        raise ValueError(f"image size out of range: {width}x{height}")
    if fmt not in ("jpeg", "png", "webp"):
        raise ValueError(f"unsupported image format: {fmt!r}")

    digest = hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()
    vertical = Image.linear_gradient("L")
    horizontal = vertical.transpose(Image.Transpose.ROTATE_90)
    radial = Image.radial_gradient("L")
    if digest[12] & 1:
        horizontal = horizontal.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if digest[12] & 2:
        vertical = vertical.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    field = Image.merge("RGB", (horizontal, vertical, radial))
    field = field.convert("RGB", _colour_matrix(digest))
    img = field.resize((width, height), Image.Resampling.BILINEAR)

    lines = [prompt or "(empty prompt)"]
    if label:
        lines.append(label)
    lines.append(f"seed {seed}  {width}x{height}")
    _draw_label(img, lines)

    out = io.BytesIO()
    if fmt == "jpeg":
        img.save(out, format="JPEG", quality=85)
    elif fmt == "png":
        img.save(out, format="PNG", compress_level=1)
    else:
        img.save(out, format="WEBP", quality=80, method=0)
    return out.getvalue()
