"""The documentation holds together: every relative link in README.md and docs/*.md resolves, to a
file of the repository and, when it names an anchor in a Markdown file, to one of its headings
(as GitHub names them). The README stays a page a newcomer finishes. No root, no jail."""
import re
from collections import Counter
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token

from tests.support.servers import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 250
MARKDOWN = MarkdownIt("commonmark").enable("table")


def tokens(page: Path) -> list[Token]:
    """The page's block tokens followed by every inline token's children, in order."""
    found: list[Token] = []
    for token in MARKDOWN.parse(page.read_text()):
        found.append(token)
        found.extend(token.children or [])
    return found


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the page's headings: the text in lower case, without punctuation
    but `-` and `_`, spaces as `-`; a repeated one gets `-1`, `-2`..."""
    found, repeats = set(), Counter[str]()
    parsed = MARKDOWN.parse(page.read_text())
    for opening, inline in zip(parsed, parsed[1:], strict=False):
        if opening.type != "heading_open":
            continue
        text = "".join(child.content for child in inline.children or []
                       if child.type in ("text", "code_inline"))
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        found.add(f"{slug}-{repeats[slug]}" if repeats[slug] else slug)
        repeats[slug] += 1
    return found


def broken_links(page: Path) -> list[str]:
    """The page's relative links that lead nowhere, each with why."""
    broken = []
    for token in tokens(page):
        href = token.attrGet("href") if token.type == "link_open" else None
        if not isinstance(href, str) or urlsplit(href).scheme:
            continue
        parts = urlsplit(href)
        target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
        if not target.is_relative_to(REPO) or not target.exists():
            broken.append(f"{href}: no such file")
        elif parts.fragment and target.suffix == ".md" and unquote(parts.fragment) not in anchors(target):
            broken.append(f"{href}: no such heading in {target.relative_to(REPO)}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=[str(page.relative_to(REPO)) for page in PAGES])
def test_every_relative_link_resolves(page):
    assert broken_links(page) == []


def test_the_readme_is_short():
    lines = len((REPO / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines: move the detail into docs/"
