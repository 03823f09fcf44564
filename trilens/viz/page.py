"""One self-contained HTML page of sections (text, tables, plotly figures) that opens offline: plotly.js is inlined
once at the top and every figure is a ``<div>`` drawn by it; the page is written atomically."""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1100px;
       color: #222; line-height: 1.45; padding: 0 1rem; }
h1 { font-size: 1.7rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2.5rem; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .92rem; }
th, td { border: 1px solid #ddd; padding: .3rem .6rem; text-align: left; vertical-align: top; }
th { background: #f5f5f5; }
code, pre { background: #f6f8fa; border-radius: 4px; font-size: .88rem; }
pre { padding: .6rem; overflow-x: auto; }
.verdict { font-weight: 600; white-space: nowrap; }
.reproduced { color: #1a7f37; } .not-reproduced { color: #cf222e; } .not-comparable { color: #9a6700; }
.failed { color: #cf222e; } .muted { color: #666; font-size: .9rem; }
nav ul { columns: 2; }
"""


@dataclass
class Section:
    """A titled part of the page: ``html`` blocks (already escaped or built here), then ``figures``."""

    title: str
    anchor: str
    blocks: list[str] = field(default_factory=list)
    figures: list[tuple[str, Any]] = field(default_factory=list)  # (caption, plotly figure)

    def text(self, words: str, cls: str | None = None) -> None:
        self.blocks.append(f"<p{f' class={cls!r}' if cls else ''}>{html.escape(words)}</p>")

    def code(self, text: str) -> None:
        self.blocks.append(f"<pre><code>{html.escape(text)}</code></pre>")

    def table(self, header: list[str], rows: list[list[Any]], cell_classes: list[list[str | None]] | None = None) -> None:
        """A table; ``cell_classes`` gives a CSS class per cell (None for none)."""
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = []
        for i, row in enumerate(rows):
            cls = cell_classes[i] if cell_classes else [None] * len(row)
            body.append("<tr>" + "".join(f"<td{f' class={c!r}' if c else ''}>{html.escape(str(v))}</td>"
                                         for v, c in zip(row, cls)) + "</tr>")
        self.blocks.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")

    def figure(self, caption: str, fig: Any) -> None:
        self.figures.append((caption, fig))


def page_html(title: str, sections: list[Section], intro: list[str] = ()) -> str:
    """The page: a title, intro paragraphs, a table of contents, then every section with its figures inline."""
    from plotly.offline import get_plotlyjs

    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style><script type='text/javascript'>{get_plotlyjs()}</script></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    parts += [f"<p>{html.escape(p)}</p>" for p in intro]
    if len(sections) > 1:
        parts.append("<nav><ul>" + "".join(f"<li><a href='#{s.anchor}'>{html.escape(s.title)}</a></li>"
                                             for s in sections) + "</ul></nav>")
    for s in sections:
        parts.append(f"<section id='{html.escape(s.anchor)}'><h2>{html.escape(s.title)}</h2>")
        parts += s.blocks
        for caption, fig in s.figures:
            parts.append(f"<figure>{fig.to_html(include_plotlyjs=False, full_html=False)}"
                         f"<figcaption class='muted'>{html.escape(caption)}</figcaption></figure>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_page(path: str | os.PathLike, title: str, sections: list[Section], intro: list[str] = ()) -> Path:
    """Write ``page_html(...)`` to ``path`` through a temporary file and a rename."""
    from ..atomic import atomic_write_text

    return atomic_write_text(path, page_html(title, sections, intro))
