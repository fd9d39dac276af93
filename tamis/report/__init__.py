"""The report: the :class:`~.model.Report` (data only) and its views, which take a Report.

- :mod:`.folder`: the report folder (:func:`~.folder.write_report`, :func:`~.folder.read_report`);
- :mod:`.html`: ``report.html``, drawn by ``assets/report.js`` from the checks' declared views;
- :mod:`.thumbnails`: ``thumbs/`` and the one rule for where image paths are resolved;
- :mod:`.plots`: PNG plots (matplotlib, optional).
"""
