"""Thumbnails of image outputs: made once with Pillow, cached on disk under
``DATA_DIR/thumbs``, named by the output's SHA-256 (outputs never change)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from PIL import Image, ImageOps

THUMB_SIZE = 384
THUMB_FORMAT = "webp"


def thumb_path(cache_dir: Path, sha256: str, size: int = THUMB_SIZE) -> Path:
    return cache_dir / sha256[:2] / f"{sha256}-{size}.{THUMB_FORMAT}"


def ensure_thumb(source: Path, cache_dir: Path, sha256: str, size: int = THUMB_SIZE) -> Path:
    """The cached thumbnail of ``source`` (made now when missing): the first frame,
    fitted into ``size`` x ``size``. Written to a temporary file and renamed, so a
    reader never sees half a thumbnail."""
    target = thumb_path(cache_dir, sha256, size)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as img:
        img.seek(0)
        frame = ImageOps.exif_transpose(img.copy())
    frame.thumbnail((size, size))
    if frame.mode not in ("RGB", "RGBA"):
        frame = frame.convert("RGBA" if "A" in frame.getbands() else "RGB")
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            frame.save(fh, format=THUMB_FORMAT, quality=80)
        Path(tmp).replace(target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
