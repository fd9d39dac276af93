"""The interactive HTML report: one self-contained ``report.html`` that opens offline.

>>> from tamis.html import write_html_report
>>> write_html_report(report, "tamis-report", coords=xy)       # doctest: +SKIP
"""

from .report import write_html_report

__all__ = ["write_html_report"]
