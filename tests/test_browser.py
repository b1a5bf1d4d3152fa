"""The browser check of the built book (chaosnb.book.check_pages) on small HTML fixtures.

A clean page (a loaded image, MathJax-rendered math from the offline MathJax package, working links) must give no
defect; a page with a broken image, raw math, dead links, a JavaScript error and a request to an outside host
must give each of those defects. Needs Debian's chromium (``make test`` installs it)."""

import importlib
import struct
import zlib
from pathlib import Path

import pytest

from chaosnb.book import Defect, check_link, check_pages, html_pages


def _png(path: Path, width: int = 4, height: int = 3) -> None:
    """A tiny valid RGB PNG (grey), written without any imaging library."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + b"\x80\x80\x80" * width for _ in range(height))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _mathjax() -> str:
    """file: URL of the offline MathJax that the book serves (package sphinx-mathjax-offline)."""
    package = importlib.import_module("sphinx-mathjax-offline")
    return (Path(package.__file__).parent / "static" / "mathjax" / "tex-chtml.js").as_uri()


CDN_MATHJAX = "https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"
PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>{title}</title>
<script defer src="{mathjax}"></script></head><body>{body}</body></html>"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    _png(root / "fig.png")
    mathjax = _mathjax()
    (root / "good.html").write_text(PAGE.format(title="good", mathjax=mathjax, body=(
        '<h1 id="top">Good</h1><img src="fig.png" alt="figure">'
        '<table><tr><td><span class="verdict-badge">partly</span></td><td><a href="other.html#part">page</a></td>'
        '</tr></table><div class="cell_output"><img src="fig.png" alt="plot"></div>'
        '<div class="computed-by">computed by <a href="api.html#chaosnb.f">f</a></div>'
        '<p>Inline <span class="math notranslate nohighlight">\\(\\lambda_i = \\log|1 - \\gamma h_i|\\)</span>.</p>'
        '<div class="math notranslate nohighlight">\\[Y_{t+1} = (I - \\gamma H_t) Y_t\\]</div>'
        '<p><a href="other.html#part">other page</a> <a href="#top">top</a> '
        '<a href="https://example.org/paper">paper (external, not followed)</a></p>'
        '<pre>code may hold $x$ and \\(y\\)</pre>')))
    (root / "other.html").write_text(PAGE.format(title="other", mathjax=mathjax, body='<p id="part">part</p>'))
    (root / "api.html").write_text(PAGE.format(title="api", mathjax=mathjax, body='<dt id="chaosnb.f">f()</dt>'))
    (root / "bad.html").write_text(PAGE.format(title="bad", mathjax=mathjax, body=(
        '<img src="missing.png" alt="broken figure">'
        '<p>raw dollar math $a + b$ left in the text</p>'
        '<span class="math notranslate nohighlight">\\(x^2^3\\)</span>'
        '<a href="nowhere.html">dead page</a> <a href="other.html#nothing">dead anchor</a> '
        '<a href="#gone">dead local anchor</a>'
        '<span class="xref py py-func">chaosnb.unresolved</span>'
        '<img src="https://cdn.example.com/remote.png" alt="remote">'
        '<div class="cell_output"><img src="fig.png" alt="plot without credit"></div>'
        '<div class="cell_output"><img src="fig.png" alt="plot"></div><div class="computed-by">computed by f</div>'
        '<table><tr><td>Figure 9</td><td><span class="verdict-badge">reproduced</span></td></tr></table>'
        '<script>console.error("boom from the page")</script>')))
    # the book before this check: MathJax from a CDN, which an offline reader (and this check) cannot load
    (root / "cdn.html").write_text(PAGE.format(title="cdn", mathjax=CDN_MATHJAX, body=(
        '<p>Theorem: <span class="math notranslate nohighlight">\\(\\lambda_1 \\le 0\\)</span></p>')))
    (root / "index.html").write_text('<meta http-equiv="Refresh" content="0; url=good.html" />')
    (root / "stale.html").write_text('<meta http-equiv="Refresh" content="0; url=removed.html" />')
    return root


@pytest.fixture(scope="module")
def defects(site, tmp_path_factory):
    shots = tmp_path_factory.mktemp("shots")
    found = check_pages(site, screenshots=shots)
    return found, shots


def _of(defects, page):
    return [d for d in defects if d.page == page]


def test_clean_page_passes(defects):
    found, _ = defects
    assert _of(found, "good.html") == [] and _of(found, "other.html") == [] and _of(found, "index.html") == []
    assert _of(found, "api.html") == []


def test_broken_page_reports_every_defect(defects):
    found, _ = defects
    bad = _of(found, "bad.html")
    kinds = {d.kind for d in bad}
    assert kinds == {"image", "math", "link", "console", "request", "figure"}
    text = "\n".join(str(d) for d in bad)
    assert "not loaded: missing.png" in text
    assert "not loaded: https://cdn.example.com/remote.png" in text
    assert "raw math in text: raw dollar math $a + b$" in text
    assert "math: not rendered: Double exponent" in text  # a TeX error box counts as not rendered
    assert "nowhere.html ('dead page'): no file" in text
    assert "other.html#nothing ('dead anchor'): no element with id 'nothing'" in text
    assert "#gone ('dead local anchor'): no element with id 'gone'" in text
    assert "unresolved cross-reference: chaosnb.unresolved" in text
    assert "verdict row without a link to its figure: Figure 9" in text
    assert text.count("no 'computed by' line under the figure fig.png") == 1
    assert "'computed by' line without a link to the API page: computed by f" in text
    assert "boom from the page" in text
    assert "blocked request to https://cdn.example.com/remote.png" in text


def test_math_from_a_cdn_is_caught(defects):
    found, _ = defects
    text = "\n".join(str(d) for d in _of(found, "cdn.html"))
    assert f"blocked request to {CDN_MATHJAX}" in text
    assert "math: not rendered: \\(\\lambda_1 \\le 0\\)" in text
    assert "math: raw math in text: \\(\\lambda_1 \\le 0\\)" in text


def test_redirect_pages_are_followed_without_a_browser(defects):
    found, _ = defects
    stale = _of(found, "stale.html")
    assert len(stale) == 1 and stale[0].kind == "link"
    assert stale[0].detail.startswith("redirect to removed.html: no file ") and stale[0].detail.endswith("removed.html")


def test_screenshots_saved_for_opened_pages(defects):
    _, shots = defects
    for name in ("good", "other", "bad"):
        png = shots / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000


def test_html_pages_skip_support_folders(tmp_path):
    for rel in ("a.html", "book/b.html", "_static/c.html", "_sources/d.html"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("<p>x</p>")
    assert [p.relative_to(tmp_path).as_posix() for p in html_pages(tmp_path)] == ["a.html", "book/b.html"]


def test_check_link_rules(tmp_path):
    page = tmp_path / "p.html"
    page.write_text('<p id="here">x</p>')
    (tmp_path / "q.html").write_text('<a name="old"></a><div id="new"></div>')
    cache = {}
    assert check_link(page.as_uri() + "#here", page, {"here"}, cache) is None
    assert check_link((tmp_path / "q.html").as_uri() + "#old", page, set(), cache) is None
    assert check_link((tmp_path / "q.html").as_uri() + "#new", page, set(), cache) is None
    assert "no element with id 'x'" in check_link((tmp_path / "q.html").as_uri() + "#x", page, set(), cache)
    assert "no file" in check_link((tmp_path / "r.html").as_uri(), page, set(), cache)
    assert check_link("https://example.org/x", page, set(), cache) is None  # not followed, not requested
    assert "unexpected link scheme" in check_link("ftp://example.org/x", page, set(), cache)
    assert str(Defect("p.html", "link", "why")) == "p.html: link: why"
