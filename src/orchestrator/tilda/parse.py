"""Pure parsing of a Tilda export: page HTML → page, blocks, texts, links and image
references; ``htaccess`` → aliases and home page; ``robots.txt`` / ``sitemap.xml`` →
indexability and the domain. No I/O here: the importer feeds text in.

The format is described in ``shared/reference/tilda.md``. Key facts used here:

* A page is identified by ``#allrecords[data-tilda-page-id]`` (file names are often
  changed by uploaders), never by the first ``[data-tilda-page-id]`` found: the shared
  header and footer are nested *inside* ``#allrecords`` as ``#t-header`` / ``#t-footer``
  with their own page ids.
* Blocks are ``div.t-rec`` (``id="rec<digits>"``, ``data-record-type``), usually
  followed by a comment naming the catalogue code (``<!-- T004 -->``).
* Editable text is in elements carrying ``field="…"``.
* Images are referenced as ``images/<name>`` in many lazy-load attributes; low-res
  placeholders (``-__resize__20x__``, ``-__resizeb__20x__``, ``-__empty__``) and
  resized copies (``-__resize__504x__``) map back to the original by removing that
  part of the name, matched case-insensitively.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from selectolax.lexbor import LexborHTMLParser, LexborNode

# --- image references ----------------------------------------------------------------

# Any "images/<file>" in raw HTML (attributes, inline styles, <style> blocks).
IMAGE_REF = re.compile(r"""(?<![\w/.-])(?:\./|/)?(images/[^\s"'()<>,;\\&?#]+)""")
VARIANT = re.compile(r"-__(?:resizeb?__\d+x\d*|empty)__", re.IGNORECASE)
PLACEHOLDER = re.compile(r"-__(?:resizeb?__20x|empty)__", re.IGNORECASE)


def image_name(ref: str) -> str:
    """The file name of an ``images/…`` reference."""
    return ref.split("/", 1)[1] if ref.startswith("images/") else ref


def original_image_name(ref: str) -> str:
    """The original's file name for a reference to it or to any of its variants."""
    return VARIANT.sub("", image_name(ref))


def is_placeholder(ref: str) -> bool:
    return PLACEHOLDER.search(ref) is not None


def image_refs(html: str) -> list[str]:
    """Every ``images/…`` reference in ``html``, in order, without repeats."""
    return list(dict.fromkeys(m[1] for m in IMAGE_REF.finditer(html)))


# --- htaccess, robots, sitemap ---------------------------------------------------------

REWRITE_ALIAS = re.compile(r"^RewriteRule\s+\^(.+?)/?\$\s+(\S+\.html)\s+\[NC\]\s*$", re.IGNORECASE)
DIRECTORY_INDEX = re.compile(r"^DirectoryIndex\s+(\S+)", re.IGNORECASE)
ERROR_404 = re.compile(r"^ErrorDocument\s+404\s+/?(\S+)", re.IGNORECASE)


@dataclass(frozen=True)
class Htaccess:
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> page file
    home_file: str | None = None
    error_404_file: str | None = None

    def alias_of(self, file_name: str) -> str | None:
        """The page's alias (the first one when several rules point at it)."""
        for alias, target in self.aliases.items():
            if target.lower() == file_name.lower():
                return alias
        return None


def parse_htaccess(text: str) -> Htaccess:
    aliases: dict[str, str] = {}
    home = None
    error_404 = None
    for raw in text.splitlines():
        line = raw.strip()
        if m := REWRITE_ALIAS.match(line):
            alias = re.sub(r"\\(.)", r"\1", m[1]).strip("/")
            if alias and not alias.startswith(("(", ".")):
                aliases.setdefault(alias, m[2])
        elif m := DIRECTORY_INDEX.match(line):
            home = m[1]
        elif m := ERROR_404.match(line):
            error_404 = m[1]
    return Htaccess(aliases=aliases, home_file=home, error_404_file=error_404)


def parse_robots(text: str) -> set[str]:
    """Paths disallowed for every crawler, without the leading slash (wildcard
    rules, like Tilda's fixed ``/tilda/form*``, are left out)."""
    out: set[str] = set()
    applies = True
    for raw in text.splitlines():
        key, _, value = raw.partition(":")
        key = key.strip().lower()
        value = value.strip()
        if key == "user-agent":
            applies = value == "*"
        elif key == "disallow" and applies and value and "*" not in value:
            out.add(value.strip("/"))
    return out


LOC = re.compile(r"<loc>\s*([^<\s]+)\s*</loc>", re.IGNORECASE)


@dataclass(frozen=True)
class Sitemap:
    domain: str | None
    paths: frozenset[str]  # without leading/trailing slash; "" is the home page


def parse_sitemap(text: str) -> Sitemap:
    domain = None
    paths = set()
    for m in LOC.finditer(text):
        url = urlsplit(m[1].replace("&amp;", "&"))
        if url.hostname and domain is None:
            domain = url.hostname
        paths.add(url.path.strip("/"))
    return Sitemap(domain=domain, paths=frozenset(paths))


def is_indexable(
    *,
    file_name: str,
    alias: str | None,
    is_home: bool,
    disallowed: set[str],
    sitemap: Sitemap | None,
) -> bool:
    """Not disallowed by robots.txt and, when there is a sitemap, listed in it."""
    keys = {file_name.strip("/")} | ({alias} if alias else set())
    if keys & disallowed:
        return False
    if sitemap is None:
        return True
    return bool(keys & sitemap.paths) or (is_home and "" in sitemap.paths)


# --- links -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LinkResolver:
    """Maps an href to one of the site's own page aliases (or page file names)."""

    aliases: frozenset[str] = frozenset()
    file_alias: dict[str, str] = field(default_factory=dict)  # page file -> alias
    domains: frozenset[str] = frozenset()

    def target(self, href: str) -> str | None:
        url = urlsplit(href.strip())
        if url.scheme not in ("", "http", "https"):
            return None
        if url.netloc and url.hostname not in self.domains:
            return None
        if not url.netloc and not url.path:
            return None
        path = url.path.strip("/")
        if path in self.aliases:
            return path
        if path.lower() in self.file_alias:
            return self.file_alias[path.lower()]
        if not path and (url.netloc or href.startswith("/")):
            return ""
        return None


# --- pages --------------------------------------------------------------------------------


class NotTildaPage(ValueError):
    """HTML without Tilda's ``#allrecords`` page container."""


@dataclass(frozen=True)
class TextField:
    field: str
    text: str
    html: str


@dataclass(frozen=True)
class Link:
    href: str
    text: str
    target_alias: str | None


@dataclass(frozen=True)
class Block:
    record_id: str
    record_type: str | None
    code: str | None
    placement: str  # page | header | footer
    texts: tuple[TextField, ...]
    links: tuple[Link, ...]
    image_refs: tuple[str, ...]


@dataclass(frozen=True)
class Page:
    file_name: str
    tilda_page_id: str
    project_id: str | None
    alias: str | None
    title: str
    description: str
    keywords: str
    canonical_url: str | None
    og: dict[str, str]
    head_image_refs: tuple[str, ...]
    blocks: tuple[Block, ...]
    header_id: str | None
    footer_id: str | None
    header_blocks: tuple[Block, ...]
    footer_blocks: tuple[Block, ...]


PAGE_FILE = re.compile(r"^page(\d+)\.html$", re.IGNORECASE)
SIGN = re.compile(r"^(\d+)#(\d+)$")
CODE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
WS = re.compile(r"[ \t\r\n\f\u00a0]+")
BLOCK_BREAK = "\x00"
BLOCK_TAGS = frozenset(
    {
        "address",
        "article",
        "blockquote",
        "div",
        "dl",
        "dt",
        "dd",
        "figcaption",
        "footer",
        "form",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "header",
        "hr",
        "li",
        "ol",
        "p",
        "pre",
        "section",
        "table",
        "tr",
        "ul",
    }
)
SKIP_TAGS = frozenset({"script", "style", "noscript", "template", "-comment"})
HEAD_IMAGE_META = ("og:image", "image")


def is_tilda_html(html: str) -> bool:
    """A cheap check before parsing: Tilda's page container is present."""
    return 'id="allrecords"' in html or "id='allrecords'" in html or "id=allrecords" in html


def parse_page(html: str, file_name: str, links: LinkResolver | None = None) -> Page:
    """Parse one exported page. Raises :class:`NotTildaPage` for other HTML."""
    tree = LexborHTMLParser(html)
    root = tree.css_first("#allrecords")
    if root is None:
        raise NotTildaPage(f"{file_name}: no #allrecords element (not a Tilda page)")
    attrs = root.attributes
    page_id = _digits(attrs.get("data-tilda-page-id"))
    project_id = _digits(attrs.get("data-tilda-project-id"))
    if page_id is None or project_id is None:
        sign = tree.css_first("[data-tilda-sign]")
        m = SIGN.match((sign.attributes.get("data-tilda-sign") or "") if sign else "")
        if m:
            project_id = project_id or m[1]
            page_id = page_id or m[2]
    if page_id is None and (m := PAGE_FILE.match(file_name)):
        page_id = m[1]
    if page_id is None:
        raise NotTildaPage(f"{file_name}: #allrecords has no data-tilda-page-id")
    resolver = links or LinkResolver()
    head = tree.head
    title_node = head.css_first("title") if head is not None else None
    meta: dict[str, str] = {}
    og: dict[str, str] = {}
    canonical = None
    head_refs: list[str] = []
    if head is not None:
        for node in head.css("meta"):
            a = node.attributes
            content = (a.get("content") or "").strip()
            name = (a.get("name") or "").lower()
            prop = (a.get("property") or a.get("itemprop") or "").lower()
            if name in ("description", "keywords"):
                meta.setdefault(name, content)
            if prop.startswith("og:"):
                og.setdefault(prop[3:], content)
            if prop in HEAD_IMAGE_META and content:
                head_refs.extend(image_refs(content))
        link = head.css_first('link[rel="canonical"]')
        if link is not None:
            canonical = (link.attributes.get("href") or "").strip() or None
    header_id = footer_id = None
    blocks: list[Block] = []
    header_blocks: list[Block] = []
    footer_blocks: list[Block] = []
    for rec in root.css("div.t-rec"):
        placement = _placement(rec, root)
        if placement is None:
            continue  # nested inside another record
        if placement == "header":
            container = _ancestor_with_id(rec, "t-header")
            header_id = header_id or _container_page_id(container)
            header_blocks.append(_block(rec, placement, resolver))
        elif placement == "footer":
            container = _ancestor_with_id(rec, "t-footer")
            footer_id = footer_id or _container_page_id(container)
            footer_blocks.append(_block(rec, placement, resolver))
        else:
            blocks.append(_block(rec, placement, resolver))
    return Page(
        file_name=file_name,
        tilda_page_id=page_id,
        project_id=project_id,
        alias=(attrs.get("data-tilda-page-alias") or "").strip("/") or None,
        title=_collapse(title_node.text()) if title_node is not None else "",
        description=meta.get("description", ""),
        keywords=meta.get("keywords", ""),
        canonical_url=canonical,
        og=og,
        head_image_refs=tuple(dict.fromkeys(head_refs)),
        blocks=tuple(blocks),
        header_id=header_id,
        footer_id=footer_id,
        header_blocks=tuple(header_blocks),
        footer_blocks=tuple(footer_blocks),
    )


def _digits(value: str | None) -> str | None:
    value = (value or "").strip()
    return value if value.isdigit() else None


def _placement(rec: LexborNode, root: LexborNode) -> str | None:
    node = rec.parent
    placement = "page"
    while node is not None and node.mem_id != root.mem_id:
        if node.tag == "div":
            node_id = node.attributes.get("id")
            if node_id == "t-header":
                placement = "header"
            elif node_id == "t-footer":
                placement = "footer"
            classes = node.attributes.get("class") or ""
            if "t-rec" in classes.split():
                return None
        node = node.parent
    return placement


def _ancestor_with_id(node: LexborNode, wanted: str) -> LexborNode | None:
    cur = node.parent
    while cur is not None:
        if cur.tag == "div" and cur.attributes.get("id") == wanted:
            return cur
        cur = cur.parent
    return None


def _container_page_id(node: LexborNode | None) -> str | None:
    return _digits(node.attributes.get("data-tilda-page-id")) if node is not None else None


def _block(rec: LexborNode, placement: str, resolver: LinkResolver) -> Block:
    a = rec.attributes
    rec_id = (a.get("id") or "").removeprefix("rec")
    code = None
    child = rec.child
    while child is not None:
        if child.tag == "-comment":
            comment = (child.comment_content or "").strip()
            if CODE.match(comment):
                code = comment
            break
        if child.tag != "-text" or (child.text_content or "").strip():
            break
        child = child.next
    texts: list[TextField] = []
    for node in rec.css("[field]"):
        if _inside_field(node, rec):
            continue
        name = node.attributes.get("field") or ""
        text = element_text(node)
        if text:
            texts.append(TextField(field=name, text=text, html=(node.inner_html or "").strip()))
    found_links: list[Link] = []
    for node in rec.css("a[href]"):
        href = (node.attributes.get("href") or "").strip()
        if not href:
            continue
        found_links.append(
            Link(href=href, text=_collapse(node.text()), target_alias=resolver.target(href))
        )
    return Block(
        record_id=rec_id,
        record_type=(a.get("data-record-type") or "").strip() or None,
        code=code,
        placement=placement,
        texts=tuple(texts),
        links=tuple(found_links),
        image_refs=tuple(image_refs(rec.html or "")),
    )


def _inside_field(node: LexborNode, rec: LexborNode) -> bool:
    cur = node.parent
    while cur is not None and cur.mem_id != rec.mem_id:
        if cur.attributes.get("field") is not None:
            return True
        cur = cur.parent
    return False


def element_text(node: LexborNode) -> str:
    """Plain text of an element, keeping line breaks: ``<br>`` is a line break, and
    block elements (div, p, li, h1…) start and end lines; other whitespace collapses
    as a browser would."""
    parts: list[str] = []
    _walk_text(node, parts)
    raw = "".join(parts)
    raw = re.sub(r"[ ]*" + BLOCK_BREAK + r"[\s" + BLOCK_BREAK + r"]*", "\n", raw)
    lines = [line.strip() for line in raw.split("\n")]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def _walk_text(node: LexborNode, parts: list[str]) -> None:
    child = node.child
    while child is not None:
        tag = child.tag
        if tag == "-text":
            parts.append(WS.sub(" ", child.text_content or ""))
        elif tag == "br":
            parts.append("\n")
        elif tag not in SKIP_TAGS and tag is not None:
            block = tag in BLOCK_TAGS
            if block:
                parts.append(BLOCK_BREAK)
            _walk_text(child, parts)
            if block:
                parts.append(BLOCK_BREAK)
        child = child.next


def _collapse(text: str | None) -> str:
    return WS.sub(" ", text or "").strip()


def all_image_refs(page: Page) -> list[str]:
    """Every image reference of the page's own content (head and blocks)."""
    refs: Iterable[str] = [*page.head_image_refs, *(r for b in page.blocks for r in b.image_refs)]
    return list(dict.fromkeys(refs))
