"""Synthetic Tilda exports, built in code from the format reference
(``shared/reference/tilda.md``), for the tests and the import benchmark.

:func:`build_export` writes a small realistic site (home with a cover background,
an about page with a gallery, a Zero Block page under a slashed alias, a static
product block, a non-indexed contacts page, shared header and footer pages, the stock
404 page, placeholders and case-mismatched variants). :func:`build_large_export`
writes N generated pages for the benchmark. :func:`zip_folder` packs either the way
Tilda does (one top folder ``project<ID>/``)."""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

PROJECT_ID = "7732209"
DOMAIN = "example-cleaning.com"
HEADER_ID = "39062801"
FOOTER_ID = "39062802"
HOME_ID = "39062866"
ABOUT_ID = "39062899"
SERVICE_ID = "39063010"
SHOP_ID = "39063055"
CONTACTS_ID = "39063181"
BLOG_ID = "39063300"


def tilda_name(n: int, upload: str) -> str:
    """A Tilda-style image file name: ``tild`` + hex-pair uuid + ``__`` + upload name."""
    digits = hashlib.sha256(str(n).encode()).hexdigest()[:14]
    hexpairs = "".join(f"{ord(c):02x}" for c in digits)
    uid = f"{hexpairs[0:4]}-{hexpairs[4:8]}-{hexpairs[8:12]}-{hexpairs[12:16]}-{hexpairs[16:28]}"
    return f"tild{uid}__{upload}"


def variant(name: str, kind: str) -> str:
    """``tildXXXX__photo.jpg`` → ``tildXXXX__-__resize__20x__photo.jpg`` and friends."""
    uid, _, upload = name.partition("__")
    return f"{uid}__-__{kind}__{upload}"


def png(seed: int, size: tuple[int, int] = (48, 32)) -> bytes:
    """A small PNG, different for every seed."""
    colour = ((seed * 67) % 256, (seed * 131) % 256, (seed * 29 + 90) % 256)
    im = Image.new("RGB", size, colour)
    im.putpixel((0, 0), ((seed >> 16) & 255, (seed >> 8) & 255, seed & 255))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def jpeg(seed: int, size: tuple[int, int] = (64, 40)) -> bytes:
    colour = ((seed * 13) % 256, (seed * 71 + 40) % 256, (seed * 97) % 256)
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG", quality=80)
    return buf.getvalue()


# --- HTML pieces -----------------------------------------------------------------------


def head(
    *,
    title: str,
    description: str,
    alias: str | None,
    og_image: str | None,
    keywords: str | None = None,
    domain: str = DOMAIN,
) -> str:
    url = f"https://{domain}/{alias or ''}"
    kw = f'<meta name="keywords" content="{keywords}" />' if keywords else ""
    og_img = f'<meta property="og:image" content="images/{og_image}" />' if og_image else ""
    return f"""<!DOCTYPE html><html><head><meta charset="utf-8" />
<meta http-equiv="Content-Type" content="text/html; charset=utf-8" />
<meta name="viewport" content="width=device-width, initial-scale=1.0" />
<!--metatextblock--><title>{title}</title><meta name="description" content="{description}" />
{kw}<meta property="og:url" content="{url}" /><meta property="og:title" content="{title}" />
<meta property="og:description" content="{description}" />
<meta property="og:type" content="website" />
{og_img}<link rel="canonical" href="{url}"><!--/metatextblock-->
<meta name="format-detection" content="telephone=no" />
<meta property="fb:app_id" content="257953674358265" />
<link rel="shortcut icon" href="images/tildafavicon.ico" type="image/x-icon" />
<!-- Assets --><script src="js/tilda-fallback-1.0.min.js" async charset="utf-8"></script>
<link rel="stylesheet" href="css/tilda-grid-3.0.min.css" type="text/css" media="all" />
<link rel="stylesheet" href="css/tilda-blocks-page{alias or "x"}.min.css" type="text/css" />
<script src="js/jquery-1.10.2.min.js" charset="utf-8"></script>
<script src="js/tilda-scripts-3.0.min.js" charset="utf-8" defer></script>
<script src="js/lazyload-1.3.min.export.js" charset="utf-8" async></script>
</head>"""


def body(
    *,
    page_id: str,
    alias: str | None,
    records: str,
    project_id: str = PROJECT_ID,
    header: str | None = None,
    footer: str | None = None,
) -> str:
    alias_attr = f' data-tilda-page-alias="{alias}"' if alias else ""
    hdr = ""
    ftr = ""
    if header is not None:
        hdr = (
            f'<!--header--><div id="t-header" class="t-records" data-hook="blocks-collection-'
            f'content-node" data-tilda-project-id="{project_id}" data-tilda-page-id="{HEADER_ID}" '
            f'data-tilda-page-alias="header" data-tilda-formskey="abc" data-tilda-lazy="yes">'
            f"{header}</div><!--/header-->"
        )
    if footer is not None:
        ftr = (
            f'<!--footer--><div id="t-footer" class="t-records" data-hook="blocks-collection-'
            f'content-node" data-tilda-project-id="{project_id}" data-tilda-page-id="{FOOTER_ID}" '
            f'data-tilda-page-alias="footer" data-tilda-formskey="abc" data-tilda-lazy="yes">'
            f"{footer}</div><!--/footer-->"
        )
    return f"""<body class="t-body" style="margin:0;"><!--allrecords--><div id="allrecords"
data-tilda-export="yes" class="t-records" data-hook="blocks-collection-content-node"
data-tilda-project-id="{project_id}" data-tilda-page-id="{page_id}"{alias_attr}
data-tilda-formskey="abc" data-tilda-cookie="no" data-tilda-lazy="yes"
data-tilda-project-lang="EN">{hdr}{records}{ftr}</div><!--/allrecords-->
<!-- Tilda copyright. Don't remove this line --><div class="t-tildalabel " id="tildacopy"
data-tilda-sign="{project_id}#{page_id}"><a href="https://tilda.cc/?upm=1"
class="t-tildalabel__link">
<div class="t-tildalabel__wrapper"><div class="t-tildalabel__txtleft">Made on </div>
<div class="t-tildalabel__wrapimg"><img src="images/tildacopy.png" class="t-tildalabel__img"
fetchpriority="low"></div><div class="t-tildalabel__txtright">Tilda</div></div></a></div>
<!-- Stat --><script type="text/javascript">window.mainTracker = 'tilda';</script>
</body></html>"""


def rec(rec_id: str, record_type: str, code: str | None, inner: str, extra: str = "") -> str:
    comment = f"<!-- {code} -->" if code else ""
    return (
        f'<div id="rec{rec_id}" class="r t-rec t-rec_pt_60 t-rec_pb_60" style="padding-top:60px;'
        f'padding-bottom:60px;" data-animationappear="off" data-record-type="{record_type}"'
        f"{extra}>{comment}{inner}</div>"
    )


def t004(rec_id: str, text: str) -> str:
    return rec(
        rec_id,
        "106",
        "T004",
        f'<div class="t004"><div class="t-container "><div class="t-col t-col_8 t-prefix_2">'
        f'<div field="text" class="t-text t-text_md ">{text}</div></div></div></div>',
    )


def t050_h1(rec_id: str, title: str) -> str:
    return rec(
        rec_id,
        "60",
        "T050",
        f'<div class="t050"><div class="t-container t-align_center"><div class="t-col t-col_10 '
        f't-prefix_1"><h1 class="t050__title t-title t-title_xxl" field="title">{title}</h1>'
        f"</div></div></div>",
    )


def cover(rec_id: str, image: str, title: str, descr: str) -> str:
    return rec(
        rec_id,
        "205",
        "T181",
        f'<div class="t-cover" id="recorddiv{rec_id}"bgimgfield="img" style="height:100vh;'
        f"background-image:url('images/{variant(image, 'resizeb__20x')}');\">"
        f'<div class="t-cover__carrier" id="coverCarry{rec_id}" data-content-cover-id="{rec_id}" '
        f'data-content-cover-bg="images/{image}" data-content-cover-height="100vh" '
        f'data-content-cover-parallax="" style="height:100vh;background-attachment:scroll; "'
        f' itemscope itemtype="http://schema.org/ImageObject"><meta itemprop="image" '
        f'content="images/{image}"></div><div class="t-cover__filter" style="height:100vh;">'
        f'</div><div class="t181"><div class="t-container"><h1 class="t181__title t-title '
        f't-title_xl" field="title">{title}</h1><div class="t181__descr t-descr t-descr_md" '
        f'field="descr">{descr}</div></div></div></div>',
    )


def gallery(rec_id: str, images: list[str], empty_first: bool = True) -> str:
    cells = []
    for i, img in enumerate(images):
        src = variant(img, "empty" if (empty_first and i == 0) else "resize__20x")
        cells.append(
            f'<div class="t979__item"><div class="t979__imgwrapper"><img class="t979__img '
            f't-img" src="images/{src}" data-original="images/{img}" imgfield="gi_img__{i}" '
            f'data-img-zoom-url="images/{img}" data-zoomable="yes" alt=""></div>'
            f'<div class="t979__title t-name t-name_md" field="li_title__{1000 + i}">Photo '
            f"{i + 1}</div></div>"
        )
    return rec(rec_id, "979", "t979", f'<div class="t979">{"".join(cells)}</div>')


def zero_block(rec_id: str, text_html: str, image: str, button_href: str) -> str:
    # Zero Block markup: single quotes, and no space between some attributes.
    return rec(
        rec_id,
        "396",
        "T396",
        f'<div class=\'t396\'><div class="t396__artboard" data-artboard-recid="{rec_id}" '
        f'data-artboard-height="550" data-artboard-valign="center">'
        f"<div class='t396__elem tn-elem tn-elem__{rec_id}1' data-elem-id='1' "
        f"data-elem-type='text' "
        f'data-field-top-value="120" data-field-left-value="20"><div class=\'tn-atom\''
        f"field='tn_text_1'>{text_html}</div></div>"
        f"<div class='t396__elem tn-elem' data-elem-id='2' data-elem-type='image' "
        f"data-field-width-value=\"360\"><div class='tn-atom'><img class='tn-atom__img t-img' "
        f"data-original='images/{image}' src='images/{variant(image, 'empty')}'"
        f"imgfield='tn_img_2' alt=''></div></div>"
        f"<div class='t396__elem tn-elem' data-elem-id='3' data-elem-type='button'>"
        f"<a class='tn-atom' href=\"{button_href}\"field='tn_text_3'>Book now</a></div>"
        f"</div></div>",
    )


def products(rec_id: str, items: list[tuple[str, str, str]]) -> str:
    cells = []
    for i, (name, price, img) in enumerate(items):
        lid = 1600000000000 + i
        cells.append(
            f'<div class="t754__col t-col t-col_4 t-align_left t-item js-product" '
            f'data-product-lid="{lid}"><div class="t754__imgwrapper"><div class="t754__bgimg '
            f'js-product-img t-bgimg" bgimgfield="li_img__{lid}" data-original="images/{img}" '
            f"style=\"background: url('images/{variant(img, 'resizeb__20x')}') center center "
            f'no-repeat; background-size:cover;"></div></div><div class="t754__textwrapper">'
            f'<div class="t754__title t-name t-name_md js-product-name" field="li_title__{lid}">'
            f'{name}</div><div class="t754__price-wrapper"><div class="t754__price '
            f't754__price-item t-name t-name_md"><div class="t754__price-value js-product-price"'
            f' field="li_price__{lid}">{price}</div><div class="t754__price-currency">$</div>'
            f'</div></div></div><a href="#order" class="t754__btn t-btn"><span>Buy</span></a>'
            f"</div>"
        )
    return rec(
        rec_id,
        "754",
        "t754",
        f'<div class="t754"><div class="t754__parent t-container">{"".join(cells)}</div></div>',
    )


def form_block(rec_id: str) -> str:
    return rec(
        rec_id,
        "210",
        "T186",
        f'<div class="t186"><div class="t-container"><div class="t186__title t-title" '
        f'field="title">Write to us</div><form id="form{rec_id}" name="form{rec_id}" '
        f'data-formactiontype="2" data-inputbox=".t-input-group"><input type="text" '
        f'name="email" data-tilda-rule="email" data-tilda-req="1" placeholder="E-mail">'
        f'<button type="submit" class="t-submit">Send</button></form>'
        f'<div class="t186__text t-descr" field="descr">Or call <a href="tel:+15550100">'
        f'+1 555 0100</a>, or mail <a href="mailto:hi@{DOMAIN}">hi@{DOMAIN}</a>.</div>'
        f"</div></div>",
    )


def menu(rec_id: str, logo: str, items: list[tuple[str, str]]) -> str:
    links = "".join(
        f'<li class="t228__list_item"><a class="t-menu__link-item" href="{href}" '
        f'data-menu-submenu-hook="">{label}</a></li>'
        for href, label in items
    )
    return rec(
        rec_id,
        "257",
        "T228",
        f'<div id="nav{rec_id}marker"></div><div class="t228"><div class="t228__leftside">'
        f'<a href="/"><img src="images/{logo}" imgfield="img" class="t228__imglogo" alt=""></a>'
        f'</div><nav class="t228__centercontainer"><ul class="t228__list">{links}</ul></nav>'
        f'<div class="t228__right_descr" field="descr">Open daily<br />8:00\u201320:00</div></div>',
    )


def footer_block(rec_id: str, year: int) -> str:
    return rec(
        rec_id,
        "345",
        "T345",
        f'<div class="t345"><div class="t-container"><div class="t345__text t-descr" '
        f'field="text">© {year} Example Cleaning<br />All rights reserved</div>'
        f'<a href="javascript:t190_scrollToTop();" class="t345__totop">Up</a></div></div>',
    )


def anchor(rec_id: str, name: str) -> str:
    return rec(rec_id, "215", None, f'<a name="{name}" style="font-size:0;"></a>')


STOCK_404 = """<!DOCTYPE html><html><head><meta charset="utf-8" /><title>404</title>
<meta name="robots" content="noindex" /></head><body><div class="t404">
<img src="images/logo404.png">
<p>Page not found</p></div></body></html>"""

READ_ME = (
    "Published on Tilda.cc\n- - -\nUpload the project to your website:\n"
    "1. Copy the contents of this folder to your server by FTP\n"
    "2. Rename file htaccess to .htaccess\n"
)


# --- the small realistic site ----------------------------------------------------------


@dataclass
class ExpectedPage:
    tilda_page_id: str
    file_name: str
    alias: str | None
    title: str
    role: str = "page"
    indexable: bool = True
    is_home: bool = False
    codes: list[str | None] = field(default_factory=list)
    images: list[str] = field(default_factory=list)  # original names the page's content uses


@dataclass
class ExpectedExport:
    project_id: str
    domain: str
    pages: dict[str, ExpectedPage]  # by tilda page id
    images: dict[str, bytes]  # original image file name -> content
    missing: list[str]  # referenced originals that are not in images/

    def page(self, alias: str) -> ExpectedPage:
        return next(p for p in self.pages.values() if p.alias == alias)


IMG_LOGO = tilda_name(1, "logo.png")
IMG_COVER = tilda_name(2, "photo_2026-03-11_22-.jpg")
IMG_GALLERY = [tilda_name(10 + i, f"gallery_{i}.jpg") for i in range(3)]
IMG_GALLERY_DUP = tilda_name(20, "same_as_gallery_0.jpg")  # same bytes as IMG_GALLERY[0]
IMG_ZERO = tilda_name(30, "team.png")
IMG_PRODUCTS = [tilda_name(40 + i, f"product_{i}.jpg") for i in range(2)]
IMG_OG = tilda_name(50, "untitled-1.png")
IMG_OG_VARIANT_REF = variant(tilda_name(50, "Untitled-1.png"), "resize__504x")
IMG_MISSING = tilda_name(60, "gone.jpg")
IMG_BLOG = tilda_name(70, "blog.jpg")


def _images() -> dict[str, bytes]:
    out = {IMG_LOGO: png(1), IMG_COVER: jpeg(2), IMG_ZERO: png(30), IMG_OG: png(50, (120, 63))}
    for i, name in enumerate(IMG_GALLERY):
        out[name] = jpeg(10 + i)
    out[IMG_GALLERY_DUP] = out[IMG_GALLERY[0]]
    for i, name in enumerate(IMG_PRODUCTS):
        out[name] = jpeg(40 + i)
    return out


def _htaccess(aliases: dict[str, str], home_file: str) -> str:
    lines = [
        "ErrorDocument 403 /404.html",
        "ErrorDocument 404 /404.html",
        f"DirectoryIndex {home_file}",
        "RewriteEngine On",
        "RewriteCond %{HTTP:X-Forwarded-Proto} =http",
        "RewriteRule ^(.*)$ https://%{HTTP_HOST}/$1 [R=301,L]",
        "RewriteCond %{REQUEST_FILENAME} /robots.txt",
        'RewriteCond "%{DOCUMENT_ROOT}/robots_%{HTTP_HOST}.txt" -f',
        "RewriteRule ^(.*)$ robots_%{HTTP_HOST}.txt [NC,L]",
    ]
    for alias, target in aliases.items():
        lines.append(f"RewriteRule ^{alias}$ {target} [NC]")
        lines.append(f"RewriteRule ^{alias}/$ {target} [NC]")
    return "\n".join(lines) + "\n"


def _robots(noindex: list[tuple[str, str | None]], domain: str) -> str:
    lines = ["User-Agent: *"]
    for file_name, alias in noindex:
        lines.append(f"Disallow: /{file_name}")
        if alias:
            lines.append(f"Disallow: /{alias}")
    lines += [
        "Disallow: /tilda/form*",
        "Disallow: /tilda/popup*",
        "Disallow: /*_escaped_fragment_*",
        "Disallow:",
        f"Sitemap: https://{domain}/sitemap.xml",
        f"Host: {domain}",
    ]
    return "\n".join(lines) + "\n"


def _sitemap(paths: list[str], domain: str) -> str:
    urls = "".join(
        f"<url><loc>https://{domain}/{p}</loc><lastmod>2026-08-24T10:11:25+00:00</lastmod></url>"
        for p in paths
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<urlset xmlns="http://www.sitemaps.org/'
        f'schemas/sitemap/0.9">{urls}</urlset>\n'
    )


def _write_common(root: Path, images: dict[str, bytes]) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "css").mkdir(exist_ok=True)
    (root / "js").mkdir(exist_ok=True)
    (root / "files").mkdir(exist_ok=True)
    (root / "readme.txt").write_text(READ_ME, encoding="utf-8")
    (root / "404.html").write_text(STOCK_404, encoding="utf-8")
    (root / "css" / "tilda-grid-3.0.min.css").write_text(".t-container{}", encoding="utf-8")
    (root / "js" / "tilda-scripts-3.0.min.js").write_text("/* tilda */", encoding="utf-8")
    (root / "js" / "lazyload-1.3.min.export.js").write_text("/* lazy */", encoding="utf-8")
    (root / "images" / "tildacopy.png").write_bytes(png(999, (8, 8)))
    (root / "images" / "logo404.png").write_bytes(png(998, (8, 8)))
    (root / "images" / "tildafavicon.ico").write_bytes(b"\x00\x00\x01\x00")
    for name, data in images.items():
        (root / "images" / name).write_bytes(data)


def _placeholders(root: Path, names: list[str]) -> None:
    for name in names:
        for kind in ("resize__20x", "resizeb__20x"):
            (root / "images" / variant(name, kind)).write_bytes(png(7, (20, 13)))
        (root / "images" / variant(name, "empty")).write_bytes(png(8, (2, 2)))


def _page(root: Path, file_name: str, html: str) -> None:
    (root / file_name).write_text(html, encoding="utf-8")
    start = html.index("<!--allrecords-->")
    end = html.index("<!--/allrecords-->") + len("<!--/allrecords-->")
    stem = file_name.removesuffix(".html")
    (root / "files" / f"{stem}body.html").write_text(html[start:end], encoding="utf-8")


def build_export(dest: Path, *, revision: int = 1, project_id: str = PROJECT_ID) -> ExpectedExport:
    """Write a realistic export folder at ``dest`` (created) and say what it holds.

    ``revision=2`` is the same site re-published later: the about page's text changed,
    the shop page was removed and a blog page (``blog/esp``) added; the rest is
    byte-for-byte the same."""
    root = dest
    images = _images()
    if revision >= 2:
        for name in IMG_PRODUCTS:
            images.pop(name)
        images[IMG_BLOG] = jpeg(70)
    _write_common(root, images)
    _placeholders(root, [n for n in images if n != IMG_OG])
    (root / "images" / IMG_OG_VARIANT_REF).write_bytes(png(51, (50, 26)))
    (root / "images" / variant(IMG_OG, "resize__20x")).write_bytes(png(9, (20, 10)))

    nav = [
        ("/about", "About"),
        ("/services/regular-cleaning", "Regular cleaning"),
        (f"http://{DOMAIN}/shop", "Shop"),
        ("/contacts", "Contacts"),
        ("", "More"),
        ("#popup:legal", "Legal"),
    ]
    header_html = menu("631500001", IMG_LOGO, nav)
    footer_html = footer_block("631500002", 2026) + anchor("631500003", "bottom")
    pages: dict[str, ExpectedPage] = {}
    aliases: dict[str, str] = {}

    def add(
        page_id: str,
        alias: str | None,
        title: str,
        descr: str,
        records: str,
        codes: list[str | None],
        imgs: list[str],
        *,
        og_image: str | None = None,
        role: str = "page",
        indexable: bool = True,
        is_home: bool = False,
        keywords: str | None = None,
        nest: bool = True,
    ) -> None:
        file_name = f"page{page_id}.html"
        html = head(
            title=title,
            description=descr,
            alias=alias,
            og_image=og_image,
            keywords=keywords,
        ) + body(
            page_id=page_id,
            alias=alias,
            records=records,
            project_id=project_id,
            header=header_html if nest else None,
            footer=footer_html if nest else None,
        )
        _page(root, file_name, html)
        if alias:
            aliases[alias] = file_name
        pages[page_id] = ExpectedPage(
            tilda_page_id=page_id,
            file_name=file_name,
            alias=alias,
            title=title,
            role=role,
            indexable=indexable,
            is_home=is_home,
            codes=codes,
            images=imgs,
        )

    add(
        HEADER_ID,
        "header",
        "Header",
        "",
        header_html,
        ["T228"],
        [IMG_LOGO],
        role="header",
        indexable=False,
        nest=False,
    )
    add(
        FOOTER_ID,
        "footer",
        "Footer",
        "",
        footer_html,
        ["T345", None],
        [],
        role="footer",
        indexable=False,
        nest=False,
    )
    add(
        HOME_ID,
        None,
        "Example Cleaning — spotless homes",
        "Home cleaning in Springfield &amp; nearby",
        cover("631567001", IMG_COVER, "Spotless homes", "Regular &amp; deep cleaning")
        + t004(
            "631567002",
            "We clean homes and offices.<br />Since 2015.<br /><br />"
            'See <a href="/services/regular-cleaning">regular cleaning</a> or our '
            '<a href="http://example-cleaning.com/shop">shop</a>.',
        ),
        ["T181", "T004"],
        [IMG_COVER],
        og_image=IMG_OG_VARIANT_REF,
        is_home=True,
        keywords="cleaning, home, office",
    )
    about_text = (
        "Our team of twelve.<br />Friendly &amp; insured."
        if revision < 2
        else "Our team of fifteen.<br />Friendly &amp; insured.<br />Now also on Sundays."
    )
    add(
        ABOUT_ID,
        "about",
        "About us",
        "Who we are",
        t050_h1("631567101", "About &#039;Example&#039;")
        + t004("631567102", about_text)
        + gallery("631567103", [*IMG_GALLERY, IMG_GALLERY_DUP]),
        ["T050", "T004", "t979"],
        [*IMG_GALLERY, IMG_GALLERY_DUP],
    )
    add(
        SERVICE_ID,
        "services/regular-cleaning",
        "Regular cleaning",
        "Weekly or monthly",
        zero_block(
            "631567201",
            "Regular cleaning<br>every week",
            IMG_ZERO,
            "/contacts",
        )
        + t004("631567202", f'Missing photo below.<img src="images/{IMG_MISSING}">'),
        ["T396", "T004"],
        [IMG_ZERO],
    )
    if revision < 2:
        add(
            SHOP_ID,
            "shop",
            "Shop",
            "Cleaning supplies",
            products(
                "631567301",
                [("Mop deluxe", "25", IMG_PRODUCTS[0]), ("Eco spray", "9.90", IMG_PRODUCTS[1])],
            ),
            ["t754"],
            list(IMG_PRODUCTS),
        )
    else:
        add(
            BLOG_ID,
            "blog/esp",
            "Blog",
            "News",
            t004("631567401", "First post.")
            + rec(
                "631567402",
                "3",
                "T107",
                f'<div class="t107"><img class="t-img" '
                f'src="images/{variant(IMG_BLOG, "resize__20x")}"'
                f' data-original="images/{IMG_BLOG}" imgfield="img"></div>',
            ),
            ["T004", "T107"],
            [IMG_BLOG],
        )
    add(
        CONTACTS_ID,
        "contacts",
        "Contacts",
        "How to reach us",
        form_block("631567501"),
        ["T186"],
        [],
        indexable=False,
    )
    home_file = f"page{HOME_ID}.html"
    (root / "htaccess").write_text(_htaccess(aliases, home_file), encoding="utf-8")
    (root / "robots.txt").write_text(
        _robots([(f"page{CONTACTS_ID}.html", "contacts")], DOMAIN), encoding="utf-8"
    )
    listed = [
        "" if p.is_home else (p.alias or p.file_name)
        for p in pages.values()
        if p.indexable and p.role == "page"
    ]
    (root / "sitemap.xml").write_text(_sitemap(listed, DOMAIN), encoding="utf-8")
    return ExpectedExport(
        project_id=project_id,
        domain=DOMAIN,
        pages=pages,
        images=images,
        missing=[IMG_MISSING],
    )


# --- the large generated site (benchmark) ------------------------------------------------


def build_large_export(
    dest: Path, *, pages: int = 1000, images_per_page: int = 3, project_id: str = "9100001"
) -> int:
    """Write ``pages`` generated pages (plus header and footer) with
    ``images_per_page`` distinct images each, and one image every page shares.
    Returns the number of distinct original images."""
    root = dest
    shared = tilda_name(1, "shared.png")
    images: dict[str, bytes] = {shared: png(1)}
    header_html = menu("900000001", shared, [("/p1", "One"), ("/p2", "Two")])
    footer_html = footer_block("900000002", 2026)
    aliases: dict[str, str] = {}
    for n in range(pages):
        page_id = str(50_000_000 + n)
        alias = f"section{n % 10}/page-{n}"
        own = [tilda_name(1000 + n * images_per_page + k, f"p{n}_{k}.jpg") for k in range(3)][
            :images_per_page
        ]
        for k, name in enumerate(own):
            images[name] = png(1000 + n * images_per_page + k, (16, 16))
        recs = (
            cover(f"{page_id}1", own[0], f"Page {n}", "Lorem ipsum dolor sit amet") if own else ""
        )
        recs += t004(
            f"{page_id}2",
            f"Paragraph one of page {n}.<br />Line two with a "
            f'<a href="/section{(n + 1) % 10}/page-{(n + 1) % pages}">link</a>.',
        )
        recs += t050_h1(f"{page_id}3", f"Heading {n}")
        if len(own) > 1:
            recs += gallery(f"{page_id}4", own[1:])
        recs += t004(f"{page_id}5", "Closing words. " * 20)
        html = head(
            title=f"Page {n}",
            description=f"Description of page {n}",
            alias=alias,
            og_image=own[0] if own else None,
        ) + body(
            page_id=page_id,
            alias=alias,
            records=recs,
            project_id=project_id,
            header=header_html,
            footer=footer_html,
        )
        file_name = f"page{page_id}.html"
        (root / "files").mkdir(parents=True, exist_ok=True)
        _page(root, file_name, html)
        aliases[alias] = file_name
    for page_id, alias, recs in (
        (HEADER_ID, "header", header_html),
        (FOOTER_ID, "footer", footer_html),
    ):
        html = head(title=alias, description="", alias=alias, og_image=None) + body(
            page_id=page_id, alias=alias, records=recs, project_id=project_id
        )
        _page(root, f"page{page_id}.html", html)
        aliases[alias] = f"page{page_id}.html"
    _write_common(root, images)
    (root / "htaccess").write_text(_htaccess(aliases, f"page{50_000_000}.html"), encoding="utf-8")
    (root / "robots.txt").write_text(_robots([], DOMAIN), encoding="utf-8")
    (root / "sitemap.xml").write_text(_sitemap(list(aliases), DOMAIN), encoding="utf-8")
    return len(images)


def zip_folder(folder: Path, zip_path: Path, *, top: str | None = None) -> Path:
    """Zip an export folder; ``top`` is the single top folder (Tilda: ``project<ID>``)."""
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).as_posix()
            name = f"{top}/{rel}" if top else rel
            if path.is_dir():
                zf.writestr(name + "/", b"")
            else:
                zf.write(path, name)
    return zip_path
