"""Finding ABC in a fetched response: a plain ``.abc`` file, ``<pre>`` blocks or the visible text
of an HTML page, and the ``.abc`` files a page links to.

HTML is read with the standard library's ``HTMLParser``: it unescapes every entity and character
reference (``&amp;``, ``&gt;``, ``&#39;``, ``&eacute;``, ... as ``html.unescape`` does) in text and
attribute values, so nothing here maps entities by hand.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from html.parser import HTMLParser
from urllib.parse import urldefrag, urljoin, urlsplit

from folkrnn.transforms.records import decode_text, looks_binary

ABC_MEDIA_TYPES = {"text/vnd.abc", "text/x-abc", "text/plain"}
HTML_MEDIA_TYPES = {"text/html", "application/xhtml+xml"}

_X_LINE = re.compile(r"^[ \t]*X:", re.MULTILINE)
_K_LINE = re.compile(r"^[ \t]*K:", re.MULTILINE)


def media_type(content_type: str | None) -> str:
    """The media type of a Content-Type header, lower-case, without parameters (``text/html``)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def _has_abc_line(text: str) -> bool:
    return bool(_X_LINE.search(text) or _K_LINE.search(text))


def _has_abc_tune(text: str) -> bool:
    return bool(_X_LINE.search(text) and _K_LINE.search(text))


def _is_abc_url(url: str) -> bool:
    return urlsplit(url).path.lower().endswith(".abc")


class _PageParser(HTMLParser):
    """Collects ``<pre>`` blocks, the page's visible text, ``<a href>`` targets and ``<base href>``."""

    # Tags that end a line of text in a browser; without the newline, "X:1<br>K:G" reads as one line.
    BREAKS = {"br", "p", "div", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol",
              "dl", "dt", "dd", "hr", "blockquote", "section", "article", "header", "footer", "pre"}
    # Not "head": its end tag is optional, and a missing one would hide the whole page.
    INVISIBLE = {"script", "style", "title", "noscript", "template"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)  # &amp; &gt; &#39; ... become characters
        self.pre_blocks: list[str] = []
        self.text: list[str] = []
        self.hrefs: list[str] = []
        self.base: str | None = None
        self._pre: list[str] | None = None
        self._pre_depth = 0
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a" or tag == "base":
            href = dict(attrs).get("href")
            if href and tag == "a":
                self.hrefs.append(href)
            elif href and self.base is None:
                self.base = href
        if tag in self.INVISIBLE:
            self._hidden += 1
        if tag == "pre":
            self._pre_depth += 1
            if self._pre_depth == 1:
                self._pre = []
        if tag in self.BREAKS:
            self._data("\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag in self.INVISIBLE:  # <script/> opens nothing
            self._hidden -= 1

    def handle_endtag(self, tag: str) -> None:
        if tag in self.INVISIBLE and self._hidden:
            self._hidden -= 1
        if tag == "pre" and self._pre_depth:
            self._pre_depth -= 1
            if self._pre_depth == 0 and self._pre is not None:
                self.pre_blocks.append("".join(self._pre))
                self._pre = None
        if tag in self.BREAKS:
            self._data("\n")

    def handle_data(self, data: str) -> None:
        self._data(data)

    def _data(self, data: str) -> None:
        if self._hidden:
            return
        self.text.append(data)
        if self._pre is not None:
            self._pre.append(data)


def _tidy_pre(text: str) -> str:
    """A ``<pre>`` block as ABC: trailing spaces and the blank lines around it dropped."""
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n"


def _tidy_page_text(text: str) -> str:
    """Visible page text as ABC: lines left-aligned (source indentation is not ABC), runs of
    blank lines cut to one (a blank line ends a tune in ABC, more carry no meaning)."""
    out: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if line or (out and out[-1]):
            out.append(line)
    while out and not out[-1]:
        out.pop()
    return "\n".join(out) + "\n" if out else ""


def _abc_links(page_url: str, base: str | None, hrefs: Iterable[str]) -> list[str]:
    try:
        base_url = urljoin(page_url, base) if base else page_url
    except ValueError:  # a malformed <base href>: links are read against the page itself
        base_url = page_url
    links: list[str] = []
    seen: set[str] = set()
    for href in hrefs:
        try:
            link = urldefrag(urljoin(base_url, href.strip()))[0]  # the parser unescaped it
            wanted = urlsplit(link).scheme.lower() in ("http", "https") and _is_abc_url(link)
        except ValueError:
            # A malformed link (``http://[::1/x.abc``) to an .abc file is still followed, as
            # written: it becomes a bad_url reject naming the page, rather than vanishing.
            link = href.strip()
            wanted = link.lower().split("#", 1)[0].endswith(".abc")
        if wanted and link not in seen:
            seen.add(link)
            links.append(link)
    return links


def _extract_from_html(url: str, text: str) -> tuple[list[str], list[str]]:
    parser = _PageParser()
    parser.feed(text)
    parser.close()
    texts = [_tidy_pre(block) for block in parser.pre_blocks if _has_abc_line(block)]
    if not texts:
        # Page text is noisy (menus, prose), so it counts only with both X: and K: lines.
        page_text = _tidy_page_text("".join(parser.text))
        if _has_abc_tune(page_text):
            texts = [page_text]
    return texts, _abc_links(url, parser.base, parser.hrefs)


def extract_abc(url: str, body: bytes, content_type: str | None) -> tuple[list[str], list[str]]:
    """ABC texts in a response, and the absolute URLs of ``.abc`` files an HTML page links to.

    * ABC content (Content-Type text/vnd.abc or text/plain, a URL ending ``.abc``, or an unknown
      type whose text has ``X:`` and ``K:`` lines): ``[decoded text]``, when it has an ``X:`` or
      ``K:`` line at all.
    * HTML (text/html, or an unknown type whose body starts with ``<``): the ``<pre>`` blocks that
      hold ABC (entities unescaped, tags stripped); when none does, the page's visible text if it
      has ``X:`` and ``K:`` lines. Links: ``<a href>`` ending in ``.abc``, absolute, deduplicated,
      in page order.
    * Binary data (see ``looks_binary``) is never ABC: ``([], [])``.
    """
    if looks_binary(body):
        return [], []
    text, _ = decode_text(body)
    media = media_type(content_type)
    starts_with_tag = text.lstrip().startswith("<")
    if media in HTML_MEDIA_TYPES or (media not in ABC_MEDIA_TYPES and not _is_abc_url(url) and starts_with_tag):
        return _extract_from_html(url, text)
    declared_abc = media in ABC_MEDIA_TYPES or _is_abc_url(url)
    if (declared_abc and _has_abc_line(text)) or _has_abc_tune(text):
        return [text], []
    return [], []

