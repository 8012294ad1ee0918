"""Pure Tilda parsing: image names and placeholders, htaccess, robots, sitemap,
indexability, links, text with line breaks, and pages built from the reference
(header/footer nesting trap, Zero Block attribute quirks, products, covers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.testing import tilda_export as te
from orchestrator.tilda import parse

U = "tild3532-3836-4331-a238-653863613936"


@pytest.mark.parametrize(
    ("ref", "original", "placeholder"),
    [
        (f"images/{U}__photo.jpg", f"{U}__photo.jpg", False),
        (f"images/{U}__-__resize__20x__photo.jpg", f"{U}__photo.jpg", True),
        (f"images/{U}__-__resizeb__20x__photo.jpg", f"{U}__photo.jpg", True),
        (f"images/{U}__-__empty__photo.jpg", f"{U}__photo.jpg", True),
        (f"images/{U}__-__resize__504x__Untitled-1.png", f"{U}__Untitled-1.png", False),
        (f"images/{U}__-__RESIZE__20x__Photo.JPG", f"{U}__Photo.JPG", True),
        ("images/tildacopy.png", "tildacopy.png", False),
        ("images/lib__tildaicon__0000-11__star.svg", "lib__tildaicon__0000-11__star.svg", False),
    ],
)
def test_image_names(ref: str, original: str, placeholder: bool) -> None:
    assert parse.original_image_name(ref) == original
    assert parse.is_placeholder(ref) is placeholder


@pytest.mark.parametrize(
    ("html", "refs"),
    [
        ('<img src="images/a.jpg" data-original="images/b.jpg">', ["images/a.jpg", "images/b.jpg"]),
        ("style=\"background-image:url('images/c.jpg');\"", ["images/c.jpg"]),
        ('style="background: url(&quot;images/d.png&quot;) center"', ["images/d.png"]),
        ("<style>.x{background:url(images/e.png)}</style>", ["images/e.png"]),
        ('<a href="./images/f.jpg"></a><a href="/images/f.jpg"></a>', ["images/f.jpg"]),
        ('<a href="https://cdn.example/images/g.jpg">', []),  # not the export's folder
        ('<img src="images/h.jpg?t=1">', ["images/h.jpg"]),
        ("<p>no images here</p>", []),
    ],
)
def test_image_refs(html: str, refs: list[str]) -> None:
    assert parse.image_refs(html) == refs


HTACCESS = """ErrorDocument 403 /404.html
ErrorDocument 404 /page39062999.html
DirectoryIndex page39062866.html
RewriteEngine On
RewriteCond %{HTTP:X-Forwarded-Proto} =http
RewriteRule ^(.*)$ https://%{HTTP_HOST}/$1 [R=301,L]
RewriteRule ^(.*)$ robots_%{HTTP_HOST}.txt [NC,L]
RewriteRule ^favicon.ico$ https://static.tildacdn.com/tild3935-x/favicon.ico [R=302,L]
RewriteRule ^cv$ page39062899.html [NC]
RewriteRule ^cv/$ page39062899.html [NC]
RewriteRule ^services/regular-cleaning$ page39063010.html [NC]
RewriteRule ^services/regular-cleaning/$ page39063010.html [NC]
RewriteRule ^blog/esp$ page39063300.html [NC]
"""


def test_htaccess() -> None:
    h = parse.parse_htaccess(HTACCESS)
    assert h.aliases == {
        "cv": "page39062899.html",
        "services/regular-cleaning": "page39063010.html",
        "blog/esp": "page39063300.html",
    }
    assert h.home_file == "page39062866.html"
    assert h.error_404_file == "page39062999.html"
    assert h.alias_of("PAGE39062899.html") == "cv"
    assert h.alias_of("page1.html") is None
    assert parse.parse_htaccess("") == parse.Htaccess()


def test_robots_and_sitemap() -> None:
    robots = """User-Agent: *
Disallow: /page39063181.html
Disallow: /contacts
Disallow: /tilda/form*
Disallow: /*_escaped_fragment_*
Disallow:
User-Agent: Yandex
Disallow: /about
Sitemap: https://x.com/sitemap.xml
"""
    assert parse.parse_robots(robots) == {"page39063181.html", "contacts"}
    sm = parse.parse_sitemap(
        "<urlset><url><loc>https://x.com/</loc></url><url><loc>https://x.com/blog/esp</loc>"
        "<lastmod>2023-08-24T10:11:25+00:00</lastmod></url></urlset>"
    )
    assert sm.domain == "x.com"
    assert sm.paths == frozenset({"", "blog/esp"})


SM = parse.Sitemap(domain="x.com", paths=frozenset({"", "about", "page5.html"}))


@pytest.mark.parametrize(
    ("file_name", "alias", "is_home", "disallowed", "sitemap", "expected"),
    [
        ("page1.html", "about", False, set(), SM, True),
        ("page1.html", None, True, set(), SM, True),  # the home page is "https://x.com/"
        ("page5.html", None, False, set(), SM, True),
        ("page2.html", "header", False, set(), SM, False),  # not in the sitemap
        ("page1.html", "about", False, {"about"}, SM, False),
        ("page1.html", "about", False, {"page1.html"}, None, False),
        ("page9.html", "x", False, set(), None, True),  # no sitemap, no robots rule
    ],
)
def test_indexable(
    file_name: str,
    alias: str | None,
    is_home: bool,
    disallowed: set[str],
    sitemap: parse.Sitemap | None,
    expected: bool,
) -> None:
    got = parse.is_indexable(
        file_name=file_name, alias=alias, is_home=is_home, disallowed=disallowed, sitemap=sitemap
    )
    assert got is expected


RESOLVER = parse.LinkResolver(
    aliases=frozenset({"blog", "services/deep-cleaning", "history"}),
    file_alias={"page12.html": "blog"},
    domains=frozenset({"cus.org.ua"}),
)


@pytest.mark.parametrize(
    ("href", "target"),
    [
        ("/blog", "blog"),
        ("/services/deep-cleaning/", "services/deep-cleaning"),
        ("http://cus.org.ua/history", "history"),
        ("https://other.org/history", None),
        ("page12.html", "blog"),
        ("/", ""),
        ("#rec123", None),
        ("#popup:legal", None),
        ("tel:+1555", None),
        ("mailto:a@b.c", None),
        ("javascript:t190_scrollToTop()", None),
        ("/unknown", None),
    ],
)
def test_link_targets(href: str, target: str | None) -> None:
    assert RESOLVER.target(href) == target


def _text(html: str) -> str:
    tree = parse.LexborHTMLParser(f"<div id='x'>{html}</div>")
    node = tree.css_first("#x")
    assert node is not None
    return parse.element_text(node)


@pytest.mark.parametrize(
    ("html", "text"),
    [
        ("One<br>Two", "One\nTwo"),
        ("One<br/><br/>Three", "One\n\nThree"),
        ("  spaced \n\t out  ", "spaced out"),
        ("<p>Para 1</p><p>Para 2</p>", "Para 1\nPara 2"),
        ("<ul><li>a</li><li>b</li></ul>", "a\nb"),
        ("Tom &amp; Jerry&#039;s &quot;show&quot;", 'Tom & Jerry\'s "show"'),
        ('See <a href="/x">this</a> <strong>now</strong>', "See this now"),
        ("<script>var x=1</script>Shown", "Shown"),
        ("<div>Title</div>Body", "Title\nBody"),
    ],
)
def test_element_text(html: str, text: str) -> None:
    assert _text(html) == text


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, te.ExpectedExport]:
    root = tmp_path_factory.mktemp("export")
    return root, te.build_export(root)


def _parse(root: Path, page: te.ExpectedPage) -> parse.Page:
    html = (root / page.file_name).read_text(encoding="utf-8")
    return parse.parse_page(html, page.file_name)


def test_page_id_is_the_allrecords_one_not_the_nested_header(
    export: tuple[Path, te.ExpectedExport],
) -> None:
    root, exp = export
    about = exp.page("about")
    page = _parse(root, about)
    assert page.tilda_page_id == te.ABOUT_ID  # not the header's, which comes first
    assert page.project_id == te.PROJECT_ID
    assert page.alias == "about"
    assert page.header_id == te.HEADER_ID and page.footer_id == te.FOOTER_ID
    assert [b.code for b in page.blocks] == ["T050", "T004", "t979"]
    assert [b.placement for b in page.header_blocks] == ["header"]
    assert [b.code for b in page.footer_blocks] == ["T345", None]  # the anchor has no code
    assert page.title == "About us"
    assert page.blocks[0].texts[0].text == "About 'Example'"
    assert page.blocks[1].texts[0].text == "Our team of twelve.\nFriendly & insured."


def test_cover_meta_and_og(export: tuple[Path, te.ExpectedExport]) -> None:
    root, exp = export
    page = _parse(root, exp.pages[te.HOME_ID])
    assert page.alias is None
    assert page.keywords == "cleaning, home, office"
    assert page.description == "Home cleaning in Springfield & nearby"
    assert page.canonical_url == f"https://{te.DOMAIN}/"
    assert page.og["type"] == "website"
    cover = page.blocks[0]
    assert cover.record_type == "205" and cover.code == "T181"
    assert [parse.original_image_name(r) for r in cover.image_refs] == [te.IMG_COVER, te.IMG_COVER]
    assert [t.field for t in cover.texts] == ["title", "descr"]
    assert parse.original_image_name(page.head_image_refs[0]).lower() == te.IMG_OG.lower()


def test_zero_block_quirks_and_products(export: tuple[Path, te.ExpectedExport]) -> None:
    root, exp = export
    zero = _parse(root, exp.page("services/regular-cleaning")).blocks[0]
    assert zero.code == "T396"
    assert [(t.field, t.text) for t in zero.texts] == [
        ("tn_text_1", "Regular cleaning\nevery week"),
        ("tn_text_3", "Book now"),
    ]
    assert [lk.href for lk in zero.links] == ["/contacts"]
    assert {parse.original_image_name(r) for r in zero.image_refs} == {te.IMG_ZERO}
    shop = _parse(root, exp.page("shop")).blocks[0]
    assert [(t.field.split("__")[0], t.text) for t in shop.texts] == [
        ("li_title", "Mop deluxe"),
        ("li_price", "25"),
        ("li_title", "Eco spray"),
        ("li_price", "9.90"),
    ]


def test_header_page_and_not_tilda() -> None:
    with pytest.raises(parse.NotTildaPage, match="no #allrecords"):
        parse.parse_page("<html><body><p>hello</p></body></html>", "index.html")
    with pytest.raises(parse.NotTildaPage, match="data-tilda-page-id"):
        parse.parse_page('<div id="allrecords"></div>', "index.html")
    # the page id falls back to the Tilda label's sign, then to the file name
    signed = parse.parse_page(
        '<div id="allrecords"></div><div id="tildacopy" data-tilda-sign="77#88"></div>', "a.html"
    )
    assert (signed.project_id, signed.tilda_page_id) == ("77", "88")
    assert parse.parse_page('<div id="allrecords"></div>', "page123.html").tilda_page_id == "123"
