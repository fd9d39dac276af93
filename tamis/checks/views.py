"""What a check shows in the report: its gallery and its panels, declared as data.

A check declares, on its class, one ``gallery`` (how its flagged rows are shown, worst first)
and any ``panels`` (summary cards beside the issue counts). The scan writes the declarations
into ``summary.json -> report``; the HTML page and the PNG plots (:mod:`tamis.report`) draw
them by kind and never by a check's name, so a new check appears in ``report.html`` with its
table and gallery without touching the report's code.

Kinds
-----
- :class:`Samples`: one card per flagged row, with the named per-sample columns as captions;
- :class:`Groups`: flagged rows in groups, from a table with ``group_id``, ``row`` (and ``keep``);
  with a :class:`Slider`, the page regroups pairs the check found at a lower threshold;
- :class:`Pairs`: pairs of rows from a table with ``row_a``, ``row_b`` and a value column;
- :class:`Crosstab` (panel): a table's counts, rows x columns (e.g. classes per split);
- :class:`Histogram` (panel): ``{"edges", "counts"}`` the check put in its summary;
- :class:`Table` (panel): a table's first rows as they are.

A gallery whose table is missing from the report (the check that writes it did not run)
falls back to :class:`Samples`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Field:
    """A per-sample column shown on a card and in the side panel as ``caption: value``."""

    column: str
    caption: str


@dataclass(frozen=True)
class View:
    """Base of every declaration; ``as_dict()`` is what ``summary.json`` holds."""

    kind = ""

    def as_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class Samples(View):
    """One card per flagged row; ``fields`` below the label, then ``score_caption`` and the score."""

    fields: tuple[Field, ...] = ()
    score_caption: str = "score"
    kind = "samples"


@dataclass(frozen=True)
class Slider:
    """A threshold slider over a :class:`Groups` gallery: the page regroups ``table``'s pairs.

    ``table`` holds pairs ``row_a``, ``row_b`` and ``value`` (a similarity, larger = closer):
    every pair at or above the value the check's summary holds under ``lowest`` (the slider's
    floor). The gallery's groups must be the connected components of the pairs at or above the
    summary's ``threshold`` (where the slider starts), each group's id its smallest row. At ``t``
    the page regroups the pairs ``value >= t`` (the issue's flags, its counts and the gallery
    follow): a group the check found keeps the member the check kept, any other the member with
    the smallest id (the ``first`` policy); ``keep_param`` names the check's parameter holding its
    policy, which the page names when it is not ``"first"``.
    """

    table: str
    value: str = "similarity"
    threshold: str = "threshold"
    lowest: str = "threshold"
    keep_param: str = "keep"


@dataclass(frozen=True)
class Groups(View):
    """Flagged rows grouped by ``table``'s ``group_id`` (members ``row``; ``keep`` marks the one kept).

    ``where``: keep only table rows whose column equals the value (``("kind", "exact")``).
    ``member_columns``: columns of the table itself that head each group, as ``(column, caption)``:
    a bool column shows its caption when any member is true, another its distinct values.
    ``facts``: a table keyed by ``group_id`` whose columns head each group, as
    ``(column, caption, format)``; format ``"text"``, ``"number"`` or ``"counts"`` (a JSON
    object ``{"a": 3}`` shown as ``a x3``). ``exclude``: what the group's button excludes,
    ``"copies"`` (the members whose ``keep`` is false: all but the kept one) or ``"group"``.
    ``slider``: a :class:`Slider` that regroups the check's pairs at another threshold in the page.
    """

    table: str = "groups"
    where: tuple | None = None
    member_columns: tuple[tuple[str, str], ...] = ()
    facts: str | None = None
    fact_columns: tuple[tuple[str, str, str], ...] = ()
    score_caption: str = "score"
    exclude: str = "copies"
    slider: Slider | None = None
    kind = "groups"


@dataclass(frozen=True)
class Pairs(View):
    """Pairs ``(row_a, row_b)`` of ``table``, largest ``value`` first, each card captioned with
    ``field``; ``where`` filters as in :class:`Groups`. The button excludes the flagged member(s)."""

    table: str = "pairs"
    value: str = "similarity"
    where: tuple | None = None
    field: Field | None = None
    kind = "pairs"


@dataclass(frozen=True)
class Crosstab(View):
    """``table``'s ``value`` for each ``row`` (most first) and ``column`` value (None = the whole);
    ``share`` is shown in brackets, ``mark`` (a bool column) highlights a cell."""

    title: str
    table: str
    row: str
    column: str
    value: str = "count"
    share: str | None = None
    mark: str | None = None
    kind = "crosstab"


@dataclass(frozen=True)
class Histogram(View):
    """A histogram the check put in its summary under ``key`` (``{"edges": [...], "counts": [...]}``),
    with a line at ``summary[marker]`` when given; log-scaled counts."""

    title: str
    key: str
    x_label: str
    y_label: str
    marker: str | None = None
    note: str = ""
    kind = "histogram"


@dataclass(frozen=True)
class Table(View):
    """The first ``max_rows`` rows of ``table``, its ``columns`` (all when empty)."""

    title: str
    table: str
    columns: tuple[str, ...] = ()
    max_rows: int = 200
    kind = "table"


__all__ = ["Field", "View", "Samples", "Slider", "Groups", "Pairs", "Crosstab", "Histogram", "Table"]
