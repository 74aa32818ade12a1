"""The self-contained HTML report: every figure is embedded, so the file can be mailed as it is.

Each capability contributes :class:`Section` objects; :func:`write_report` writes them last.

>>> s = Section("Audit", "<p>ok</p>")
>>> "<h2 id=\\"audit\\">Audit</h2>" in render_report("trustmed demo", [s])
True
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

from trustmed.io import atomic_write_text

__all__ = ["Section", "figure_to_html", "table_to_html", "render_report", "write_report"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{border-bottom:2px solid #345}h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#f0f3f6}td:first-child,th:first-child{text-align:left}
figure{display:inline-block;margin:.5em}figure img{max-width:520px}figcaption{font-size:.85em;color:#555}
.note{background:#fff8e5;border-left:4px solid #e0b040;padding:.4em .8em}nav a{margin-right:1em}
code{background:#f4f4f4;padding:0 .2em}
"""


@dataclass
class Section:
    """One titled part of the report; ``body`` is HTML (use the helpers below for tables/figures)."""

    title: str
    body: str
    subsections: list[Section] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")


def figure_to_html(png: str | Path | bytes, caption: str = "") -> str:
    """Embed a PNG (path or bytes) as a base64 ``<figure>``."""
    data = png if isinstance(png, bytes) else Path(png).read_bytes()
    b64 = base64.b64encode(data).decode("ascii")
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{b64}">{cap}</figure>'


def table_to_html(df, float_format: str = "{:.3f}", index: bool = False) -> str:
    """A pandas DataFrame as an HTML table (NaN shown as an em dash)."""
    return df.to_html(
        index=index, border=0, na_rep="—", float_format=lambda v: float_format.format(v), escape=True
    )


def _render_section(section: Section, level: int) -> str:
    parts = [f'<h{level} id="{section.anchor}">{html.escape(section.title)}</h{level}>', section.body]
    parts += [_render_section(sub, min(level + 1, 6)) for sub in section.subsections]
    return "\n".join(parts)


def render_report(title: str, sections: list[Section], intro: str = "") -> str:
    nav = " ".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in sections)
    body = "\n".join(_render_section(s, 2) for s in sections)
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{intro}<nav>{nav}</nav>\n{body}"
        "</body></html>\n"
    )


def write_report(path: str | Path, title: str, sections: list[Section], intro: str = "") -> Path:
    """Write the report atomically and return its path."""
    return atomic_write_text(path, render_report(title, sections, intro))
