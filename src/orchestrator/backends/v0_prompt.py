"""What a v0 job sends and what it keeps: the page context it is given, the chat
messages built from it, and the code taken out of the answer. Pure functions
(table-tested); the I/O lives in ``backends/v0.py``.

A page comes in through :class:`PageSource`, a narrow protocol the backend is given
(the imported Tilda pages in production, an in-memory source in tests), so this
module knows nothing about how pages are stored.
"""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass, field
from typing import Literal, Protocol

from PIL import Image, UnidentifiedImageError
from pydantic import JsonValue

OutputFormat = Literal["tsx", "md"]

# Image types the OpenAI-compatible image_url part accepts.
IMAGE_MIME_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})
MAX_IMAGE_SIDE = 1024  # larger images are scaled down before sending
MAX_IMAGE_BYTES = 1_000_000  # ... and so are heavier ones
MAX_CONTEXT_CHARS = 30_000  # the page's text sent as context, at most
MAX_BLOCK_CHARS = 4_000

SYSTEM_TSX = (
    "You are v0, generating production-ready Next.js (App Router) code with React, "
    "TypeScript and Tailwind CSS. Answer with exactly one self-contained page component "
    'in a single ```tsx code block (file="app/page.tsx"), exporting the page as its '
    "default export. Put every sub-component in that same file; use no packages beyond "
    "react, next and lucide-react; use semantic HTML and accessible markup. When page "
    "content is given as context, keep its texts (in its language) and its order unless "
    "asked otherwise; images given are the page's own, describe them with alt text and "
    "use /placeholder.svg?height=H&width=W URLs for them. Say at most two short "
    "sentences outside the code block."
)
SYSTEM_MD = (
    "You are v0, an expert in Next.js, React, TypeScript and Tailwind CSS. Answer in "
    "Markdown; put code in fenced code blocks with their language and file name. When "
    "page content is given as context, keep its texts (in its language) and its order "
    "unless asked otherwise."
)


# --- page context ------------------------------------------------------------------------


@dataclass(frozen=True)
class PageBlock:
    """One block of a page, in page order: its kind (Tilda record type or catalogue
    code, when known) and its texts."""

    texts: list[str]
    kind: str | None = None


@dataclass(frozen=True)
class PageContext:
    """What a v0 job is told about an imported page."""

    page_id: str
    title: str
    description: str | None = None
    address: str | None = None
    blocks: list[PageBlock] = field(default_factory=list)
    image_ids: list[str] = field(default_factory=list)  # asset ids, page order


@dataclass(frozen=True)
class ImageData:
    mime_type: str
    data: bytes


class PageSource(Protocol):
    """Where v0 jobs find imported pages. Both methods raise
    :class:`orchestrator.errors.NotFound` for an unknown id."""

    async def page_context(self, page_id: str) -> PageContext: ...

    async def asset_image(self, asset_id: str) -> ImageData: ...


# --- messages --------------------------------------------------------------------------------


def system_prompt(output_format: OutputFormat, extra: str | None) -> str:
    base = SYSTEM_TSX if output_format == "tsx" else SYSTEM_MD
    extra = (extra or "").strip()
    return f"{base}\n\n{extra}" if extra else base


def page_text(page: PageContext, images_sent: int) -> str:
    """The page as plain text: title, description, address, each block's texts in
    order (long pages cut at ``MAX_CONTEXT_CHARS``), and how many images follow."""
    lines = [f"Context: an existing web page (imported from a Tilda site, page {page.page_id})."]
    lines.append(f"Title: {_one_line(page.title) or '(untitled)'}")
    if page.description:
        lines.append(f"Description: {_one_line(page.description)}")
    if page.address:
        lines.append(f"Address: {page.address}")
    shown = [b for b in page.blocks if any(t.strip() for t in b.texts)]
    if shown:
        lines.append("Blocks, in page order:")
    used = sum(len(x) + 1 for x in lines)
    for i, block in enumerate(shown, start=1):
        body = "\n".join(t.strip() for t in block.texts if t.strip())
        if len(body) > MAX_BLOCK_CHARS:
            body = body[:MAX_BLOCK_CHARS].rstrip() + " [...]"
        kind = f" ({block.kind})" if block.kind else ""
        entry = f"[{i}]{kind}\n{body}"
        if used + len(entry) + 1 > MAX_CONTEXT_CHARS:
            lines.append(f"[... {len(shown) - i + 1} more blocks left out]")
            break
        lines.append(entry)
        used += len(entry) + 1
    total = len(page.image_ids)
    if total:
        if images_sent:
            lines.append(f"Images: the first {images_sent} of the page's {total} are attached.")
        else:
            lines.append(f"Images: the page has {total} (none attached).")
    return "\n".join(lines)


def data_url(image: ImageData) -> str:
    return f"data:{image.mime_type};base64,{base64.b64encode(image.data).decode('ascii')}"


def build_messages(
    *,
    prompt: str,
    output_format: OutputFormat,
    system: str | None = None,
    page: PageContext | None = None,
    page_images: list[ImageData] | None = None,
    images: list[ImageData] | None = None,
) -> list[dict[str, JsonValue]]:
    """The chat messages of a job: the system prompt, then one user message with the
    page context (text, then its images), the prompt, and the job's own images."""
    page_images = page_images or []
    images = images or []
    parts: list[JsonValue] = []
    if page is not None:
        parts.append({"type": "text", "text": page_text(page, len(page_images))})
        parts += [_image_part(im) for im in page_images]
    parts.append({"type": "text", "text": prompt})
    parts += [_image_part(im) for im in images]
    content: JsonValue = parts if len(parts) > 1 else prompt
    return [
        {"role": "system", "content": system_prompt(output_format, system)},
        {"role": "user", "content": content},
    ]


def _image_part(image: ImageData) -> JsonValue:
    return {"type": "image_url", "image_url": {"url": data_url(image)}}


def _one_line(text: str) -> str:
    return " ".join(text.split())


def prepare_image(image: ImageData) -> ImageData:
    """An image as sent: a raster type v0 reads, scaled down (to ``MAX_IMAGE_SIDE``)
    and re-encoded when it is large or heavy. Raises ValueError for anything that is
    not a readable PNG, JPEG, WEBP or GIF."""
    try:
        with Image.open(io.BytesIO(image.data)) as im:
            fmt = (im.format or "").upper()
            mime = Image.MIME.get(fmt)
            if mime not in IMAGE_MIME_TYPES:
                raise ValueError(f"unsupported image type {fmt or 'unknown'}")
            small = max(im.size) <= MAX_IMAGE_SIDE and len(image.data) <= MAX_IMAGE_BYTES
            if small:
                return ImageData(mime, image.data)
            im.seek(0)
            frame = im.convert("RGBA" if _has_alpha(im) else "RGB")
            frame.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))
            out = io.BytesIO()
            if frame.mode == "RGBA":
                frame.save(out, format="PNG", optimize=True)
                return ImageData("image/png", out.getvalue())
            frame.save(out, format="JPEG", quality=85)
            return ImageData("image/jpeg", out.getvalue())
    except (UnidentifiedImageError, OSError, EOFError) as exc:
        raise ValueError("not a readable image") from exc


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)


# --- the answer ----------------------------------------------------------------------------------

_FENCE = re.compile(r"^(?P<indent>[ \t]{0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)$", re.M)
CODE_LANGS = frozenset({"tsx", "jsx", "typescript", "ts", "javascript", "js", "react"})


@dataclass(frozen=True)
class CodeBlock:
    lang: str
    info: str
    code: str
    closed: bool


def code_blocks(answer: str) -> list[CodeBlock]:
    """The fenced code blocks of a Markdown answer, in order. A block left open at
    the end (an answer cut off by its length limit) is returned with ``closed=False``."""
    blocks: list[CodeBlock] = []
    pos = 0
    while True:
        start = _FENCE.search(answer, pos)
        if start is None:
            return blocks
        fence = start["fence"]
        info = start["info"].strip()
        body_from = start.end() + 1
        closer = re.compile(rf"^[ \t]{{0,3}}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$", re.M)
        end = closer.search(answer, body_from)
        lang = info.split()[0].lower() if info else ""
        if end is None:
            blocks.append(CodeBlock(lang, info, answer[body_from:].rstrip("\n"), False))
            return blocks
        code = answer[body_from : end.start()].rstrip("\n")
        blocks.append(CodeBlock(lang, info, code, True))
        pos = end.end()


_CODE_START = re.compile(r"^\s*(?:['\"]use client['\"]|import\s|export\s|//|/\*)")


def extract_code(answer: str) -> str | None:
    """The page component's code from an answer: the code block whose file name is
    a page (``file="app/page.tsx"``), else the longest TSX/JSX/TS/JS block, else the
    longest block of any language; an answer with no block that reads as code
    itself is taken whole. None when the answer has no code."""
    blocks = [b for b in code_blocks(answer) if b.code.strip()]
    if not blocks:
        return answer.strip() + "\n" if _CODE_START.match(answer) else None
    coded = [b for b in blocks if b.lang in CODE_LANGS]
    pages = [b for b in coded if re.search(r"""file=["']?[^"'\s]*page\.[jt]sx?\b""", b.info)]
    pool = pages or coded or blocks
    best = max(pool, key=lambda b: len(b.code))
    return best.code + "\n"
