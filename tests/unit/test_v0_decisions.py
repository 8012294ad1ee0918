"""The v0 backend's pure parts: error mapping, SSE decoding, chunk reading, retry
decisions, token counts, message building, code extraction, image preparation."""

from __future__ import annotations

import base64
import io
import json

import httpx2
import pytest
from PIL import Image
from pydantic import JsonValue

from orchestrator import errors
from orchestrator.backends import v0_prompt as vp
from orchestrator.backends.v0 import (
    DONE,
    Chunk,
    RetryPolicy,
    SseDecoder,
    V0Client,
    error_detail,
    interpret_event,
    response_error,
    stream_error,
    total_tokens,
)
from orchestrator.errors import ErrorCode as C


def err(message: str, typ: str | None = None, code: str | None = None) -> str:
    return json.dumps({"error": {"message": message, "type": typ, "code": code}})


@pytest.mark.parametrize(
    ("status", "body", "retry_after", "cls", "code"),
    [
        (
            400,
            err("bad model", "invalid_request_error"),
            None,
            errors.UpstreamError,
            C.INVALID_PARAMS,
        ),
        (404, err("no such model"), None, errors.UpstreamError, C.INVALID_PARAMS),
        (413, "too big", None, errors.UpstreamError, C.INVALID_PARAMS),
        (
            401,
            err("Invalid API key", "authentication_error"),
            None,
            errors.UpstreamError,
            C.UPSTREAM_AUTH,
        ),
        (403, err("forbidden"), None, errors.UpstreamError, C.UPSTREAM_AUTH),
        (402, err("out of credits"), None, errors.UpstreamError, C.INSUFFICIENT_CREDITS),
        (429, err("slow down", "rate_limit_error"), "3", errors.RateLimited, C.RATE_LIMITED),
        (
            500,
            err("boom", "server_error"),
            None,
            errors.TransientUpstreamError,
            C.UPSTREAM_UNAVAILABLE,
        ),
        (
            502,
            "<html>bad gateway</html>",
            None,
            errors.TransientUpstreamError,
            C.UPSTREAM_UNAVAILABLE,
        ),
        (503, "", None, errors.TransientUpstreamError, C.UPSTREAM_UNAVAILABLE),
        (408, "", None, errors.TransientUpstreamError, C.UPSTREAM_UNAVAILABLE),
        (418, "teapot", None, errors.UpstreamError, C.UPSTREAM_ERROR),
    ],
)
def test_response_error(
    status: int, body: str, retry_after: str | None, cls: type[Exception], code: C
) -> None:
    exc = response_error(status, body, retry_after)
    assert type(exc) is cls and exc.code == code
    if status == 429:
        assert isinstance(exc, errors.RateLimited) and exc.retry_after_s == 3.0
    if code in (C.INVALID_PARAMS, C.UPSTREAM_AUTH, C.UPSTREAM_UNAVAILABLE) and status != 503:
        assert exc.extra["http_status"] == status


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (err("m", "t", "c"), ("m", "t", "c")),
        (json.dumps({"error": "plain"}), ("plain", None, None)),
        (json.dumps({"detail": "x"}), ('{"detail": "x"}', None, None)),
        ("  not\n json  ", ("not json", None, None)),
        ("", ("(empty body)", None, None)),
    ],
)
def test_error_detail(body: str, expected: tuple[str, str | None, str | None]) -> None:
    assert error_detail(body) == expected


@pytest.mark.parametrize(
    ("error", "cls", "code"),
    [
        ({"message": "slow", "type": "rate_limit_error"}, errors.RateLimited, C.RATE_LIMITED),
        ({"message": "x", "type": "invalid_request_error"}, errors.UpstreamError, C.INVALID_PARAMS),
        (
            {"message": "x", "code": "context_length_exceeded"},
            errors.UpstreamError,
            C.INVALID_PARAMS,
        ),
        ({"message": "x", "type": "authentication_error"}, errors.UpstreamError, C.UPSTREAM_AUTH),
        (
            {"message": "x", "type": "server_error"},
            errors.TransientUpstreamError,
            C.STREAM_INTERRUPTED,
        ),
        ("just text", errors.TransientUpstreamError, C.STREAM_INTERRUPTED),
    ],
)
def test_stream_error(error: object, cls: type[Exception], code: C) -> None:
    exc = stream_error(error)  # type: ignore[arg-type]
    assert type(exc) is cls and exc.code == code


def feed_all(lines: list[str]) -> list[str]:
    d = SseDecoder()
    out = [x for line in lines if (x := d.feed(line)) is not None]
    tail = d.flush()
    return out + ([tail] if tail is not None else [])


@pytest.mark.parametrize(
    ("lines", "events"),
    [
        (["data: a", "", "data: b", ""], ["a", "b"]),
        (["data:a", ""], ["a"]),  # no space after the colon
        (["data: one", "data: two", ""], ["one\ntwo"]),  # multi-line data
        ([": keep-alive", "", "data: x", ""], ["x"]),  # comments are skipped
        (["event: message", "id: 4", "data: y", ""], ["y"]),  # other fields ignored
        (["data: x\r", "\r"], ["x"]),  # CRLF
        (["data: last"], ["last"]),  # no blank line at the end: flushed
        (["", "", ""], []),
        (["data: [DONE]", ""], ["[DONE]"]),
    ],
)
def test_sse_decoder(lines: list[str], events: list[str]) -> None:
    assert feed_all(lines) == events


def chunk(delta: dict[str, str], finish: str | None = None, **extra: object) -> str:
    return json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "model": "v0-1.5-md",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
    )


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("[DONE]", DONE),
        (" [DONE] ", DONE),
        (
            chunk({"role": "assistant", "content": ""}),
            Chunk("", None, None, "chatcmpl-1", "v0-1.5-md"),
        ),
        (chunk({"content": "Hi"}), Chunk("Hi", None, None, "chatcmpl-1", "v0-1.5-md")),
        (chunk({}, "stop"), Chunk("", "stop", None, "chatcmpl-1", "v0-1.5-md")),
        (chunk({}, "length"), Chunk("", "length", None, "chatcmpl-1", "v0-1.5-md")),
        (
            json.dumps({"id": "c", "choices": [], "usage": {"total_tokens": 9}}),
            Chunk("", None, {"total_tokens": 9}, "c", None),
        ),
        (
            json.dumps(
                {
                    "id": "c",
                    "object": "chat.completion",
                    "choices": [
                        {
                            "message": {"role": "assistant", "content": "all"},
                            "finish_reason": "stop",
                        }
                    ],
                }
            ),
            Chunk("all", "stop", None, "c", None),
        ),
        (json.dumps({"choices": [{"delta": {"content": None}}]}), Chunk()),
    ],
)
def test_interpret_event(data: str, expected: object) -> None:
    assert interpret_event(data) == expected


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ("{not json", C.STREAM_INTERRUPTED),
        ("[1, 2]", C.BAD_RESPONSE),
        (json.dumps({"error": {"message": "m", "type": "server_error"}}), C.STREAM_INTERRUPTED),
        (
            json.dumps({"error": {"message": "m", "type": "invalid_request_error"}}),
            C.INVALID_PARAMS,
        ),
    ],
)
def test_interpret_event_errors(data: str, code: C) -> None:
    with pytest.raises(errors.UpstreamError) as info:
        interpret_event(data)
    assert info.value.code == code


def test_retry_policy() -> None:
    p = RetryPolicy()
    assert p(errors.RateLimited("x", 2.5)) == 2.5
    assert p(errors.RateLimited("x", None)) is True
    assert p(errors.UpstreamError(C.UPSTREAM_AUTH, "bad key")) is False
    assert p(errors.UpstreamError(C.INVALID_PARAMS, "bad")) is False
    assert p(ValueError("?")) is False
    connect = [p(httpx2.ConnectError("refused")) for _ in range(6)]
    assert connect == [True] * 5 + [False]
    transient = [p(errors.TransientUpstreamError(C.STREAM_INTERRUPTED, "cut")) for _ in range(4)]
    assert transient == [True, True, True, False]


async def test_every_attempt_that_streamed_is_counted() -> None:
    """An attempt that began streaming and then failed (here a rate limit reported
    mid-stream) was billed but reports no usage: its prompt and what it streamed are
    counted on top of the last attempt's usage (they used not to be, issue 12)."""
    chunk = json.dumps({"choices": [{"delta": {"content": "abcdefgh"}}]})
    usage = json.dumps({"choices": [], "usage": {"total_tokens": 50}})
    stop = json.dumps({"choices": [{"delta": {}, "finish_reason": "stop"}]})
    streams = [
        [chunk, err("slow down", "rate_limit_exceeded")],
        [chunk, stop, usage, "[DONE]"],
    ]

    def answer(request: httpx2.Request) -> httpx2.Response:
        body = "".join(f"data: {d}\n\n" for d in streams.pop(0))
        return httpx2.Response(200, text=body, headers={"content-type": "text/event-stream"})

    async with httpx2.AsyncClient(transport=httpx2.MockTransport(answer)) as http:
        client = V0Client(http, "http://v0.test", "key")
        body: dict[str, JsonValue] = {"messages": [{"role": "user", "content": "x" * 40}]}
        got = await client.complete(body)
    assert total_tokens(got.usage) == 50 and got.attempts == 2
    assert got.broken_tokens == 10 + 2  # 40 prompt characters, 8 streamed: 4 a token


@pytest.mark.parametrize(
    ("usage", "total"),
    [
        (None, None),
        ({}, None),
        ({"total_tokens": 30, "prompt_tokens": 10, "completion_tokens": 20}, 30),
        ({"prompt_tokens": 10, "completion_tokens": 20}, 30),
        ({"completion_tokens": 7}, 7),
        ({"total_tokens": True}, None),
        ({"total_tokens": -1, "prompt_tokens": 4}, 4),
        ({"total_tokens": "12"}, None),
    ],
)
def test_total_tokens(usage: dict[str, object] | None, total: int | None) -> None:
    assert total_tokens(usage) == total  # type: ignore[arg-type]


# --- messages ---------------------------------------------------------------------------------

PAGE = vp.PageContext(
    page_id="p1",
    title="  Пекарня\n«Утро» ",
    description="Fresh bread every day",
    address="/about/us",
    blocks=[
        vp.PageBlock(["Hello", "  ", "Line two"], "T004"),
        vp.PageBlock(["   "]),  # no text: left out
        vp.PageBlock(["Contacts"]),
    ],
    image_ids=["a1", "a2", "a3"],
)
PNG = vp.ImageData("image/png", b"\x89PNG...")


def test_page_text() -> None:
    text = vp.page_text(PAGE, 2)
    assert text.splitlines() == [
        "Context: an existing web page (imported from a Tilda site, page p1).",
        "Title: Пекарня «Утро»",
        "Description: Fresh bread every day",
        "Address: /about/us",
        "Blocks, in page order:",
        "[1] (T004)",
        "Hello",
        "Line two",
        "[2]",
        "Contacts",
        "Images: the first 2 of the page's 3 are attached.",
    ]
    assert vp.page_text(PAGE, 0).endswith("Images: the page has 3 (none attached).")
    bare = vp.page_text(vp.PageContext(page_id="x", title=""), 0)
    assert bare.splitlines()[1:] == ["Title: (untitled)"]


def test_page_text_is_bounded() -> None:
    big = vp.PageContext(
        page_id="big", title="t", blocks=[vp.PageBlock(["w" * 10_000]) for _ in range(20)]
    )
    text = vp.page_text(big, 0)
    assert len(text) <= vp.MAX_CONTEXT_CHARS + 100
    assert "[...]" in text and "more blocks left out]" in text


@pytest.mark.parametrize(
    ("kw", "content"),
    [
        ({}, "Build it"),  # text only: a plain string
        (
            {"images": [PNG]},
            [
                {"type": "text", "text": "Build it"},
                {"type": "image_url", "image_url": {"url": vp.data_url(PNG)}},
            ],
        ),
        (
            {"page": PAGE, "page_images": [PNG]},
            [
                {"type": "text", "text": vp.page_text(PAGE, 1)},
                {"type": "image_url", "image_url": {"url": vp.data_url(PNG)}},
                {"type": "text", "text": "Build it"},
            ],
        ),
    ],
)
def test_build_messages(kw: dict[str, object], content: object) -> None:
    messages = vp.build_messages(prompt="Build it", output_format="tsx", **kw)  # type: ignore[arg-type]
    assert messages[0] == {"role": "system", "content": vp.SYSTEM_TSX}
    assert messages[1] == {"role": "user", "content": content}


def test_system_prompt() -> None:
    assert vp.system_prompt("tsx", None) == vp.SYSTEM_TSX
    assert vp.system_prompt("md", "  ") == vp.SYSTEM_MD
    assert vp.system_prompt("tsx", "Use dark mode.") == vp.SYSTEM_TSX + "\n\nUse dark mode."
    assert "app/page.tsx" in vp.SYSTEM_TSX and "default export" in vp.SYSTEM_TSX


def test_data_url() -> None:
    url = vp.data_url(vp.ImageData("image/jpeg", b"abc"))
    assert url == "data:image/jpeg;base64," + base64.b64encode(b"abc").decode()


# --- code extraction --------------------------------------------------------------------------

PAGE_CODE = "export default function Page() {\n  return <main />\n}"


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        (f"Here it is.\n\n```tsx\n{PAGE_CODE}\n```\n\nDone.", PAGE_CODE + "\n"),
        (f'```tsx file="app/page.tsx"\n{PAGE_CODE}\n```', PAGE_CODE + "\n"),
        # the page file wins over a longer component file
        (
            '```tsx file="components/big.tsx"\n'
            + "x" * 500
            + '\n```\n```tsx file="app/page.tsx"\n'
            + PAGE_CODE
            + "\n```",
            PAGE_CODE + "\n",
        ),
        # no page file: the longest code block
        ("```tsx\nshort\n```\n```jsx\nmuch longer code\n```", "much longer code\n"),
        # code languages beat others
        ("```bash\nnpm install something-long-long\n```\n```ts\nconst a = 1\n```", "const a = 1\n"),
        # no code language at all: the longest block
        ("```\nplain block\n```", "plain block\n"),
        # tildes and longer fences; a ``` inside a ```` block does not close it
        (f"~~~tsx\n{PAGE_CODE}\n~~~", PAGE_CODE + "\n"),
        ("````tsx\nconst s = `\n```\n`\n````", "const s = `\n```\n`\n"),
        # cut off by the length limit: the open block is kept
        (
            "Sure.\n```tsx\nexport default function Page() {\n  return (",
            "export default function Page() {\n  return (\n",
        ),
        # no block, but the answer is code
        (
            "'use client'\nexport default function P() {}",
            "'use client'\nexport default function P() {}\n",
        ),
        ("import x from 'y'\n", "import x from 'y'\n"),
        # prose only, or empty blocks
        ("I cannot do that.", None),
        ("```tsx\n\n```", None),
        ("", None),
    ],
)
def test_extract_code(answer: str, code: str | None) -> None:
    assert vp.extract_code(answer) == code


def test_code_blocks_info_and_closed() -> None:
    blocks = vp.code_blocks('a\n```tsx file="app/page.tsx"\nx\n```\n```css\ny')
    assert [(b.lang, b.info, b.code, b.closed) for b in blocks] == [
        ("tsx", 'tsx file="app/page.tsx"', "x", True),
        ("css", "css", "y", False),
    ]


# --- images ----------------------------------------------------------------------------------


def encode(mode: str, size: tuple[int, int], fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 128 if mode == "L" else (10, 20, 30, 0)[: len(mode)]).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("mode", "size", "fmt", "mime", "max_side", "same"),
    [
        ("RGB", (64, 48), "PNG", "image/png", 64, True),
        ("RGB", (64, 48), "JPEG", "image/jpeg", 64, True),
        ("RGB", (64, 48), "WEBP", "image/webp", 64, True),
        ("RGB", (2000, 1000), "JPEG", "image/jpeg", 1024, False),
        ("RGBA", (3000, 1500), "PNG", "image/png", 1024, False),  # alpha kept as PNG
        ("RGB", (1500, 3000), "PNG", "image/jpeg", 1024, False),  # opaque: JPEG
    ],
)
def test_prepare_image(
    mode: str, size: tuple[int, int], fmt: str, mime: str, max_side: int, same: bool
) -> None:
    data = encode(mode, size, fmt)
    out = vp.prepare_image(vp.ImageData("application/octet-stream", data))
    assert out.mime_type == mime and (out.data == data) is same
    with Image.open(io.BytesIO(out.data)) as im:
        assert max(im.size) == max_side


@pytest.mark.parametrize(
    "data",
    [
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        b"",
        b"\x89PNG\r\n\x1a\n broken",
        encode("RGB", (8, 8), "BMP"),
    ],
)
def test_prepare_image_refuses(data: bytes) -> None:
    with pytest.raises(ValueError):
        vp.prepare_image(vp.ImageData("image/svg+xml", data))
