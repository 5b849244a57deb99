"""A tiny document model: the report and the explanation are built once as blocks, then
rendered as markdown (report.md, README), self-contained HTML (report.html) or rich tables
(the terminal). Writing the content once keeps the three from drifting apart.

Text may use `backticks` for code; nothing else is interpreted.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

from normlab.errors import NormlabError


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: list[str]


@dataclass(frozen=True)
class Table:
    """A table of already-formatted cells; `right` lists the columns to right-align."""

    columns: list[str]
    rows: list[list[str]]
    title: str = ""
    right: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class Image:
    """An image file, given relative to the document's folder."""

    path: str
    alt: str


Block = Heading | Para | Bullets | Table | Image

_CODE = re.compile(r"`([^`]+)`")


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(blocks: list[Block]) -> str:
    """GitHub-flavoured markdown; images are relative links."""
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {b.text}")
        elif isinstance(b, Para):
            out.append(b.text)
        elif isinstance(b, Bullets):
            out.append("\n".join(f"- {item}" for item in b.items))
        elif isinstance(b, Table):
            lines = [f"**{b.title}**", ""] if b.title else []
            lines.append("| " + " | ".join(_md_cell(c) for c in b.columns) + " |")
            lines.append(
                "|"
                + "|".join("---:" if i in b.right else "---" for i in range(len(b.columns)))
                + "|"
            )
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            out.append("\n".join(lines))
        else:
            out.append(f"![{b.alt}]({b.path})")
    return "\n\n".join(out) + "\n"


def _html_text(text: str) -> str:
    return _CODE.sub(r"<code>\1</code>", html.escape(text))


def _data_uri(path: Path) -> str:
    kind = {".png": "image/png", ".svg": "image/svg+xml"}.get(path.suffix)
    if kind is None:
        raise NormlabError(f"cannot embed {path}: only .png and .svg images are supported")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise NormlabError(f"cannot embed {path} ({exc.strerror}); regenerate the report") from None
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


_STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.2em; }
th, td { border: 1px solid #ccc; padding: 3px 9px; }
th { background: #f3f3f3; }
td.r, th.r { text-align: right; font-variant-numeric: tabular-nums; }
caption { font-weight: 600; text-align: left; padding: 4px 0; }
img { max-width: 100%; height: auto; display: block; margin: 0.6em 0 1.4em; }
code { background: #f3f3f3; padding: 0 3px; border-radius: 3px; }
"""


def to_html(blocks: list[Block], title: str, base: Path) -> str:
    """One self-contained HTML page: images are embedded, so the file opens offline and can be
    mailed or attached on its own. No scripts, no external resources."""
    body: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{_html_text(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            body.append(f"<p>{_html_text(b.text)}</p>")
        elif isinstance(b, Bullets):
            items = "".join(f"<li>{_html_text(i)}</li>" for i in b.items)
            body.append(f"<ul>{items}</ul>")
        elif isinstance(b, Table):

            def cls(i: int, b: Table = b) -> str:
                return ' class="r"' if i in b.right else ""

            caption = f"<caption>{_html_text(b.title)}</caption>" if b.title else ""
            head = "".join(f"<th{cls(i)}>{_html_text(c)}</th>" for i, c in enumerate(b.columns))
            rows = "".join(
                "<tr>"
                + "".join(f"<td{cls(i)}>{_html_text(c)}</td>" for i, c in enumerate(r))
                + "</tr>"
                for r in b.rows
            )
            body.append(
                f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
            )
        else:
            src = _data_uri(base / b.path)
            body.append(f'<img src="{src}" alt="{html.escape(b.alt)}">')
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style>"
        '<link rel="icon" href="data:,"></head>\n<body>\n' + "\n".join(body) + "\n</body></html>\n"
    )
