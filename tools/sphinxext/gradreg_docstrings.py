"""Sphinx extension for the book's API page (book/api.md): read gradreg's plain-text docstrings as
the reStructuredText that autodoc expects, without editing them.

gradreg's docstrings are plain text with ``literal`` markup. Three habits of that style mean
something else in reStructuredText, two of them errors under -W:

- an indented block (a formula, an aligned table, a command line) after a blank line: reST makes it
  a block quote and reflows it into one paragraph. It is shown as written (a literal block).
- ``|x|``, ``|L − b|``: an absolute value or a norm, which reST reads as a substitution reference
  ("Undefined substitution referenced"). Bars outside ``literals`` are escaped.
- a bullet list that starts on the line after a paragraph, or a paragraph that starts on the line
  after a list ("Unexpected indentation", "Bullet list ends without a blank line"). The blank
  lines reST needs around the list are added.

Nothing else changes, so anything else that is not valid reST still fails the build.
Loaded from _config.yml (``sphinx.local_extensions`` and ``sphinx.config.extensions``).
"""
from __future__ import annotations

import re

_LITERAL_OR_BAR = re.compile(r"(``.+?``)|\|")
_BULLET = re.compile(r"^(\s*)[-*+•] \S")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _escape_bars(line: str) -> str:
    return _LITERAL_OR_BAR.sub(lambda m: m.group(1) or r"\|", line)


def plain_to_rst(lines: list[str]) -> list[str]:
    """The docstring's lines (as autodoc prepared them: dedented) made valid reST."""
    out: list[str] = []
    list_indent: int | None = None  # indent of the bullets of the list we are in
    literal_base: int | None = None  # inside a literal block: the indent it must stay deeper than
    for line in lines:
        blank = not line.strip()
        prev_blank = not out or not out[-1].strip()
        if literal_base is not None:
            if blank or _indent(line) > literal_base:
                out.append(line)  # verbatim
                continue
            literal_base = None
            if not prev_blank:
                out.append("")
        if blank:
            out.append(line)
            continue
        bullet = _BULLET.match(line)
        base = 0 if list_indent is None else list_indent + 2  # where this paragraph's text starts
        if prev_blank and not bullet and _indent(line) > base and out:
            # an indented block after a blank line: show it as written. A paragraph of only "::"
            # makes the block literal and prints nothing itself.
            out.extend([" " * base + "::", "", line])
            literal_base = base
            continue
        if bullet:
            indent = len(bullet.group(1))
            if not prev_blank and list_indent != indent:
                out.append("")  # a list that starts right after a paragraph line
            list_indent = indent
        elif list_indent is not None and _indent(line) <= list_indent:
            if not prev_blank:
                out.append("")  # a paragraph that starts right after a list item
            list_indent = None
        out.append(_escape_bars(line))
    return out


def process_docstring(app, what, name, obj, options, lines: list[str]) -> None:
    if name == "gradreg" or name.startswith("gradreg."):
        lines[:] = plain_to_rst(lines)


def setup(app):
    app.connect("autodoc-process-docstring", process_docstring)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
