"""What the reference agents read of a ticket: its plain text, with Markdown and HTML markup
taken off (markdown-it renders the Markdown, the standard library's HTML parser takes the text
out of the HTML), hidden elements dropped, entities decoded, whitespace folded.

The rules that look for instructions aimed at the agents read the raw text as well: what a
ticket hides from a person's eye is exactly where such an instruction would be put."""

from __future__ import annotations

import re
from functools import lru_cache
from html.parser import HTMLParser

from markdown_it import MarkdownIt

_MARKUP = re.compile(r"<[A-Za-z/!][^>]*>|(^|\n)\s{0,3}(#{1,6}\s|[-*+]\s|>\s?|\d+\.\s)|\*\*|__|`|\[[^\]]*\]\(")
_BLOCK = frozenset({"p", "div", "br", "li", "tr", "table", "h1", "h2", "h3", "h4", "h5", "h6",
                    "blockquote", "pre", "ul", "ol", "section", "article", "header", "footer"})
_SKIP = frozenset({"script", "style", "head", "title"})
_VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
                   "param", "source", "track", "wbr"})  # elements with no end tag
_HIDDEN = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*0", re.I)


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping: list[str] = []  # open elements whose text is not shown

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        style = " ".join(v or "" for k, v in attrs if k == "style")
        hidden = any(k == "hidden" for k, _ in attrs) or bool(_HIDDEN.search(style))
        if tag in _SKIP or hidden or self._skipping:
            if tag not in _VOID:
                self._skipping.append(tag)
            return
        if tag in _BLOCK:
            self.parts.append("\n")
        elif tag == "td":
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if self._skipping:
            if tag in self._skipping:  # closes it and whatever was left open inside it
                del self._skipping[len(self._skipping) - 1 - self._skipping[::-1].index(tag):]
            return
        if tag in _BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


@lru_cache(maxsize=1)
def _markdown() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": True})


def has_markup(text: str) -> bool:
    return bool(_MARKUP.search(text))


def plain_text(text: str) -> str:
    """The ticket as a person reads it, without its markup."""
    if not has_markup(text):
        return " ".join(text.split())
    parser = _Text()
    parser.feed(_markdown().render(text))
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).replace("`", "").splitlines())
    return "\n".join(line for line in lines if line)
