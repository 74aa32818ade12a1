"""Figures (matplotlib) and the self-contained HTML report."""

from trustmed.report.html import Section, figure_to_html, render_report, table_to_html, write_report

__all__ = ["Section", "figure_to_html", "render_report", "table_to_html", "write_report"]
