"""What one metadata column holds, and what is wrong with it: the metadata check's analyses.

:func:`profile_column` reads one Arrow column (the analysed rows only) and finds, on its own:

- ``missing``: nulls, NaN, inf, empty or blank strings;
- ``disguised_missing``: missing markers among strings (:data:`STRING_SENTINELS`); numeric
  sentinels (:data:`NUMERIC_SENTINELS`: -1, 9, 99, 999, ...) that stand apart from the other
  values (a negative one in an otherwise non-negative column, or one beyond the others' range by
  ``gap_factor`` times the spacing of the others' nearest distinct values); and zeros in an
  otherwise strictly positive column whose smallest positive value lies ``gap_factor`` times the
  spacing of the lowest distinct positives above zero (Pima's Glucose, BMI, Insulin; not a count
  such as Pregnancies, whose positives start one step above zero), and that hold at most
  :data:`MAX_ZERO_SHARE` of the values (a column mostly zero, as a capital gain, means zero).
  The gap test asks: were the zeros real, would the positives run down towards them?
- ``type``: numbers or dates stored as strings, several kinds of value in one column;
- ``inconsistent_category``: spellings of one category (:func:`spelling_groups`);
- ``identifier``: a column unique per row (strings, or a dense run of integers).

:func:`feature_codes` turns a profile into one small integer code per row, which
:func:`cv_accuracy` (a one-column classifier, cross-validated) and the split tests
(:func:`ks_test`, :func:`chi2_test`, :func:`benjamini_hochberg`) use.

Cost: O(N log N) per column; the string work runs once per distinct value (Arrow's dictionary
encoding), never per row. Spelling groups are bounded: see :func:`spelling_groups`.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: strings that stand for "unknown" (compared lower-cased and stripped of whitespace)
STRING_SENTINELS = frozenset({
    "n/a", "na", "n.a.", "nan", "null", "none", "nil", "?", "??", "-", "--", "---", ".", "unknown", "unk",
    "missing", "not available", "not applicable", "undefined", "#n/a", "#na", "(blank)", "blank", "no data",
    "tbd", "(null)", "<na>", "<null>", "not known", "unspecified",
})
#: numbers that often stand for "unknown": -1, and +-9, 99, 999, ... 999999999
NUMERIC_SENTINELS = np.array(sorted({-1.0} | {s * (10.0 ** k - 1) for k in range(1, 10) for s in (1, -1)}))
#: fewest distinct other values a column needs before a sentinel or a zero can stand apart from them
MIN_DISTINCT = 5
#: zeros holding more than this share of a column's values are its typical value, not a stand-in
MAX_ZERO_SHARE = 0.5
#: distinct values whose mean spacing measures how closely a column's values follow each other
SPACING_VALUES = 20
#: a string or integer column is an identifier when at least this share of its rows is unique
IDENTIFIER_SHARE = 0.95
#: ... and it has at least this many values
IDENTIFIER_MIN_ROWS = 20
#: a string column with more distinct values than this share of its rows is free text, not categories
CATEGORY_SHARE = 0.5
#: the shortest normalised spelling a one-edit typo is looked for in ("sony" is not: "sona" is another word)
MIN_TYPO_LENGTH = 5
#: spelling groups: the most frequent normalised spellings compared for one-edit typos
MAX_TYPO_KEYS = 20_000
#: ... and a deletion bucket shared by more spellings than this is too generic to pair them
MAX_BUCKET = 64
#: a column's feature for the one-column classifier: its most frequent values (or quantile bins)
MAX_LEVELS = 32
QUANTILE_BINS = 16

#: a number as a string (RE2 syntax: Arrow matches it), with or without thousands separators
_NUMBER = r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$|^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$"
#: the shape of a date or date-time string; the formats tried on it, in order (time zones and
#: fractions of a second are dropped first)
_DATE_SHAPE = r"^(?:\d{4}[-/]\d{1,2}[-/]\d{1,2}(?:[ T]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?(?:Z|[+-]\d{2}:?\d{2})?" \
              r"|\d{1,2}[./-]\d{1,2}[./-]\d{4})$"
_DATE_FORMATS = ("%Y-%m-%d", "%Y/%m/%d", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M",
                 "%Y-%m-%dT%H:%M:%S", "%d/%m/%Y", "%m/%d/%Y", "%d.%m.%Y", "%d-%m-%Y")
#: what a distinct string is (codes of :func:`_classify`)
BLANK, MARKER, NUMBER, DATE, TEXT = range(5)


@dataclass
class Finding:
    """One thing wrong with one column. ``rows``: positions among the analysed rows; ``rate``: the
    share of rows concerned, or for a column-wide finding its measure (accuracy, effect size);
    ``order``: rank within its kind, higher first; ``facts``: JSON-able details for the summary."""

    column: str
    kind: str
    rate: float
    rows: np.ndarray
    detail: str
    facts: dict = field(default_factory=dict)
    order: float = 0.0


@dataclass
class Profile:
    """One column, as the analyses see it (all arrays over the analysed rows).

    kind : "numeric", "datetime", "boolean", "category", "text" (free text), "identifier" or "empty"
    missing : null, NaN, inf, empty or blank
    disguised : a value standing for "unknown" (sentinel, disguised zero)
    numbers : the value as a number (numeric and datetime kinds; NaN where it is none)
    codes, values : the value's index into ``values`` (-1 where missing), for string and bool columns
    canonical : for ``codes``, the index of each value's canonical spelling
    """

    name: str
    kind: str
    stored: str
    array: Any
    missing: np.ndarray
    disguised: np.ndarray
    numbers: np.ndarray | None = None
    codes: np.ndarray | None = None
    values: list | None = None
    canonical: np.ndarray | None = None
    n_distinct: int = 0
    findings: list = field(default_factory=list)

    @property
    def usable(self) -> np.ndarray:
        """Rows holding a real value (neither missing nor disguised missing)."""
        return ~(self.missing | self.disguised)

    def show(self, i: int) -> str:
        """Row ``i``'s value, as the report shows it."""
        value = self.array[int(i)].as_py()
        return "null" if value is None else repr(value) if isinstance(value, str) else f"{value}"


def profile_column(name: str, array: pa.Array | pa.ChunkedArray, gap_factor: float, max_typo_ratio: float,
                   mixed_types: str | None = None) -> Profile:
    """The :class:`Profile` of one column and the findings it holds on its own (missing,
    disguised missing, type, inconsistent category, identifier)."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    stored = str(array.type)
    typ = array.type
    if pa.types.is_null(typ):
        m = len(array)
        prof = Profile(name, "empty", stored, array, np.ones(m, dtype=bool), np.zeros(m, dtype=bool))
    elif pa.types.is_string(typ) or pa.types.is_large_string(typ):
        prof = _string_profile(name, array, stored, gap_factor, max_typo_ratio, mixed_types)
    elif pa.types.is_boolean(typ):
        prof = _bool_profile(name, array, stored)
    else:
        prof = _number_profile(name, array, stored, gap_factor)
    if prof.missing.any():
        rows = np.flatnonzero(prof.missing)
        share = len(rows) / len(prof.missing)
        prof.findings.insert(0, Finding(name, "missing", share, rows, f"{len(rows):,} rows ({100 * share:.1f} %) have "
                                        "no value (null, NaN, inf or an empty string)"))
    return prof


# ---------------------------------------------------------------------------------------------- kinds of column
def _bool_profile(name: str, array: pa.Array, stored: str) -> Profile:
    missing = array.is_null().to_numpy(zero_copy_only=False)
    codes = np.where(missing, -1, pc.fill_null(array, False).to_numpy(zero_copy_only=False).astype(np.int64))
    return Profile(name, "boolean", stored, array, missing, np.zeros(len(array), dtype=bool), codes=codes,
                   values=[False, True], canonical=np.arange(2), n_distinct=int(len(np.unique(codes[codes >= 0]))))


def _number_profile(name: str, array: pa.Array, stored: str, gap_factor: float) -> Profile:
    typ = array.type
    kind = "numeric"
    if pa.types.is_timestamp(typ) or pa.types.is_date(typ):
        kind = "datetime"
        array_num = array.cast(pa.timestamp("us")) if pa.types.is_date(typ) else array
        values = array_num.cast(pa.int64())
    elif pa.types.is_time(typ) or pa.types.is_duration(typ):
        values = array.cast(pa.int64())
    else:
        values = array
    nums = values.to_numpy(zero_copy_only=False).astype(np.float64)   # nulls -> NaN
    missing = ~np.isfinite(nums) | array.is_null().to_numpy(zero_copy_only=False)
    prof = Profile(name, kind, stored, array, missing, np.zeros(len(array), dtype=bool), numbers=nums)
    if kind == "numeric":
        _disguised_numbers(prof, gap_factor)
    _numeric_identifier(prof)
    return prof


def _string_profile(name: str, array: pa.Array, stored: str, gap_factor: float, max_typo_ratio: float,
                    mixed_types: str | None) -> Profile:
    """Strings: classified once per distinct value as blank, missing marker, number, date or text."""
    encoded = array.dictionary_encode()
    codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    dictionary = encoded.dictionary
    counts = np.bincount(codes[codes >= 0], minlength=len(dictionary))
    cls, as_number = _classify(dictionary)
    present = codes >= 0
    safe = np.where(present, codes, 0)
    row_cls = np.where(present, cls[safe], BLANK) if len(dictionary) else np.full(len(codes), BLANK)
    missing = row_cls == BLANK
    disguised = row_cls == MARKER
    prof = Profile(name, "category", stored, array, missing, disguised, codes=np.where(missing, -1, codes),
                   values=dictionary.to_pylist(), n_distinct=int((counts > 0).sum()))
    values = prof.values
    shares = {c: int(counts[cls == c].sum()) for c in (NUMBER, DATE, TEXT)}
    total = sum(shares.values())
    markers = [values[i] for i in np.flatnonzero(cls == MARKER)]
    if total == 0:
        prof.kind = "empty"
    else:
        major = max(shares, key=lambda c: (shares[c], c == TEXT))
        minority = [c for c in shares if c != major and shares[c]]
        prof.kind = {NUMBER: "numeric", DATE: "datetime", TEXT: "category"}[major]
        if major in (NUMBER, DATE):
            prof.numbers = np.where(row_cls == major, as_number[safe] if len(dictionary) else np.nan, np.nan)
        _type_finding(prof, major, minority, shares, total, row_cls, markers, mixed_types)
    if markers:
        rows = np.flatnonzero(disguised)
        facts = [{"value": values[i], "count": int(counts[i]), "why": "a missing marker"}
                 for i in np.flatnonzero(cls == MARKER)]
        prof.findings.append(_disguised_finding(name, rows, len(array), facts))
    if prof.kind == "numeric":
        _disguised_numbers(prof, gap_factor)
        _numeric_identifier(prof)
    elif prof.kind == "category":
        n_text = shares[TEXT]
        distinct_text = int((counts[cls == TEXT] > 0).sum())
        if n_text >= IDENTIFIER_MIN_ROWS and distinct_text >= IDENTIFIER_SHARE * n_text:
            prof.kind = "identifier"
            prof.findings.append(_identifier_finding(name, distinct_text, n_text))
        elif distinct_text > max(MAX_LEVELS, CATEGORY_SHARE * n_text):
            prof.kind = "text"
        else:
            _spelling_finding(prof, cls, counts, row_cls, max_typo_ratio)
    return prof


def _classify(dictionary: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """For each distinct string: what it is (:data:`BLANK`, :data:`MARKER`, :data:`NUMBER`, :data:`DATE`,
    :data:`TEXT`) and, for a number or a date, its value (seconds since 1970 for a date). Vectorised
    (Arrow compute), so a column of a million distinct strings costs no Python loop."""
    v = len(dictionary)
    stripped = pc.utf8_trim_whitespace(dictionary)
    flag = lambda arr: np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)  # noqa: E731
    cls = np.full(v, TEXT, dtype=np.int8)
    as_number = np.full(v, np.nan)
    blank = flag(pc.equal(stripped, ""))
    marker = ~blank & flag(pc.is_in(pc.utf8_lower(stripped), value_set=pa.array(sorted(STRING_SENTINELS))))
    number = ~blank & ~marker & flag(pc.match_substring_regex(stripped, _NUMBER))
    if number.any():
        picked = pc.replace_substring(stripped.filter(pa.array(number)), ",", "")
        try:
            as_number[number] = pc.cast(picked, pa.float64()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):   # e.g. "1e999": Python says inf
            as_number[number] = [float(t) for t in picked.to_pylist()]
    dated = ~blank & ~marker & ~number & flag(pc.match_substring_regex(stripped, _DATE_SHAPE))
    if dated.any():
        idx = np.flatnonzero(dated)
        core = pc.replace_substring_regex(stripped.take(pa.array(idx)), r"(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?$", "")
        seconds = np.full(len(idx), np.nan)
        for fmt in _DATE_FORMATS:
            todo = np.isnan(seconds)
            if not todo.any():
                break
            parsed = pc.strptime(core.filter(pa.array(todo)), format=fmt, unit="s", error_is_null=True)
            seconds[todo] = pc.cast(parsed, pa.int64()).to_numpy(zero_copy_only=False).astype(np.float64)
        dated[idx[np.isnan(seconds)]] = False
        as_number[idx] = seconds
    cls[blank], cls[marker], cls[number], cls[dated] = BLANK, MARKER, NUMBER, DATE
    return cls, as_number


def _type_finding(prof: Profile, major: int, minority: list[int], shares: dict, total: int, row_cls: np.ndarray,
                  markers: list[str], mixed_types: str | None) -> None:
    word = {NUMBER: "numbers", DATE: "dates", TEXT: "text"}
    origin = f" (its Python values mixed {mixed_types.replace(',', ', ')})" if mixed_types else ""
    if minority:
        rows = np.flatnonzero(np.isin(row_cls, minority))
        parts = ", ".join(f"{100 * shares[c] / total:.1f} % {word[c]}" for c in [major] + minority)
        prof.findings.append(Finding(prof.name, "type", len(rows) / len(row_cls), rows,
                                     f"mixed types: {parts}{origin}; the rows listed hold the minority",
                                     {"shares": {word[c]: shares[c] / total for c in [major] + minority}}))
    elif major in (NUMBER, DATE):
        note = f"; its other values are missing markers ({', '.join(map(repr, markers[:5]))}): read it with " \
               "those as missing" if markers else ""
        prof.findings.append(Finding(prof.name, "type", 1.0, np.empty(0, dtype=np.int64),
                                     f"{word[major]} stored as strings{origin}{note}",
                                     {"stored_as": prof.stored, "holds": word[major]}))


def _disguised_finding(name: str, rows: np.ndarray, m: int, facts: list[dict]) -> Finding:
    parts = "; ".join(f"{f['value']!r} x{f['count']:,} ({f['why']})" for f in facts[:8])
    return Finding(name, "disguised_missing", len(rows) / max(1, m), rows,
                   f"{len(rows):,} rows ({100 * len(rows) / max(1, m):.1f} %) hold a value that stands for "
                   f"unknown: {parts}", {"values": facts})


def _spacing(d: np.ndarray, top: bool) -> float:
    """Mean spacing of the :data:`SPACING_VALUES` lowest (or highest) of the sorted distinct values ``d``."""
    k = min(SPACING_VALUES, len(d) - 1)
    return float(d[-1] - d[-1 - k]) / k if top else float(d[k] - d[0]) / k


def _disguised_numbers(prof: Profile, gap_factor: float) -> None:
    """Numeric sentinels and disguised zeros (the module's rule), added to ``prof.disguised``."""
    x = prof.numbers
    ok = prof.usable & np.isfinite(x)
    vals = x[ok]
    if not len(vals):
        return
    candidates = np.unique(vals[np.isin(vals, NUMERIC_SENTINELS)])
    others = np.unique(vals[~np.isin(vals, candidates)])
    hits, facts = [], []
    if len(others) >= MIN_DISTINCT:
        for value in candidates:
            why = None
            if value < 0 <= others[0]:
                why = f"negative in a column otherwise >= 0 (from {others[0]:g})"
            elif value > others[-1] and value - others[-1] >= gap_factor * _spacing(others, True):
                why = f"far above the other values (at most {others[-1]:g})"
            elif value < others[0] and others[0] - value >= gap_factor * _spacing(others, False):
                why = f"far below the other values (from {others[0]:g})"
            if why is not None:
                hits.append(value)
                facts.append({"value": float(value), "count": int((vals == value).sum()), "why": why})
    rest = vals[~np.isin(vals, hits)]
    positives = np.unique(rest[rest > 0])
    n_zero = int((rest == 0).sum())
    if n_zero and n_zero <= MAX_ZERO_SHARE * len(rest) and not (rest < 0).any() and len(positives) >= MIN_DISTINCT \
            and positives[0] >= gap_factor * _spacing(positives, False):
        hits.append(0.0)
        facts.append({"value": 0.0, "count": n_zero,
                      "why": f"zero in a column otherwise strictly positive ({positives[0]:g} .. {positives[-1]:g})"})
    if not hits:
        return
    mask = ok & np.isin(x, hits)
    prof.disguised |= mask
    for f in facts:
        f["value"] = int(f["value"]) if float(f["value"]).is_integer() else f["value"]
    old = [f for f in prof.findings if f.kind == "disguised_missing"]
    if old:   # a string column with markers and numeric sentinels: one finding
        prof.findings.remove(old[0])
        facts = old[0].facts["values"] + facts
    prof.findings.append(_disguised_finding(prof.name, np.flatnonzero(prof.disguised), len(x), facts))


def _identifier_finding(name: str, distinct: int, n: int) -> Finding:
    return Finding(name, "identifier", distinct / max(1, n), np.empty(0, dtype=np.int64),
                   f"unique per row ({distinct:,} distinct values in {n:,} rows): an identifier (or free text), "
                   "not used as a predictor", {"n_distinct": distinct})


def _numeric_identifier(prof: Profile) -> None:
    """A dense run of distinct integers (0, 1, 2, ... shuffled) is an identifier."""
    vals = prof.numbers[prof.usable & np.isfinite(prof.numbers)]
    prof.n_distinct = int(len(np.unique(vals))) if len(vals) else 0
    if len(vals) < IDENTIFIER_MIN_ROWS or not np.all(vals == np.round(vals)):
        return
    if prof.n_distinct >= IDENTIFIER_SHARE * len(vals) and vals.max() - vals.min() + 1 <= 2 * prof.n_distinct:
        prof.kind = "identifier"
        prof.findings.append(_identifier_finding(prof.name, prof.n_distinct, len(vals)))


# ---------------------------------------------------------------------------------------------- spellings
def spelling_key(text: str) -> str:
    """A spelling reduced to what tells categories apart: accents, case, whitespace and
    punctuation dropped ("Hewlett-Packard ", "hewlett packard" -> "hewlettpackard"), but ``+`` and
    ``#`` kept ("C++" and "C#" are not "C")."""
    folded = unicodedata.normalize("NFKD", text.casefold())
    return "".join(ch for ch in folded if ch.isalnum() or ch in "+#")


def _one_edit(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` differ by one insertion, deletion, substitution or swap of neighbours."""
    if a == b:
        return False
    la, lb = len(a), len(b)
    if abs(la - lb) > 1:
        return False
    if la == lb:
        diff = [i for i in range(la) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1
                                  and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    if la > lb:
        a, b = b, a
    i = 0
    while i < len(a) and a[i] == b[i]:
        i += 1
    return a[i:] == b[i + 1:]


def spelling_groups(keys: list[str], counts: np.ndarray, max_ratio: float) -> np.ndarray:
    """For each normalised spelling, the index of the spelling it is a variant of (itself when none).

    Spellings of at least :data:`MIN_TYPO_LENGTH` characters one edit apart
    (:func:`_one_edit`), with the same digits, are joined when the rarer has at most
    ``max_ratio`` times the rows of the commoner: a typo is rarer than the word. Each spelling
    joins the most frequent one it may (a star, never a chain). Pairs are found through
    shared one-deletion variants (every pair one edit apart shares one), never by comparing all
    pairs: only the :data:`MAX_TYPO_KEYS` most frequent spellings take part, and a variant shared
    by more than :data:`MAX_BUCKET` of them pairs none. Time and memory O(K L) for K spellings of
    length L, plus at most K L MAX_BUCKET^2 / 2 comparisons (in practice a few per spelling).
    """
    k = len(keys)
    parent = np.arange(k)
    order = sorted(range(k), key=lambda i: (-counts[i], keys[i]))
    eligible = [i for i in order if len(keys[i]) >= MIN_TYPO_LENGTH][:MAX_TYPO_KEYS]
    if len(eligible) < 2 or max_ratio <= 0:
        return parent
    buckets: dict[str, list[int]] = {}
    for i in eligible:
        key = keys[i]
        for variant in {key} | {key[:j] + key[j + 1:] for j in range(len(key))}:
            buckets.setdefault(variant, []).append(i)
    neighbours: dict[int, set[int]] = {}
    for members in buckets.values():
        if 1 < len(members) <= MAX_BUCKET:
            for a in members:
                neighbours.setdefault(a, set()).update(members)
    digits = {i: re.sub(r"\D", "", keys[i]) for i in eligible}
    roots: set[int] = set()
    for b in eligible:   # most frequent first: a spelling's possible parents are already placed
        best = None
        for a in neighbours.get(b, ()):
            if a in roots and counts[b] <= max_ratio * counts[a] and digits[a] == digits[b] \
                    and _one_edit(keys[a], keys[b]):
                if best is None or (counts[a], keys[best]) > (counts[best], keys[a]):
                    best = a
        if best is None:
            roots.add(b)
        else:
            parent[b] = best
    return parent


def _spelling_finding(prof: Profile, cls: np.ndarray, counts: np.ndarray, row_cls: np.ndarray,
                      max_ratio: float) -> None:
    """Group the text values' spellings; the rows with a non-canonical spelling are the finding."""
    values = prof.values
    text_ids = [i for i in np.flatnonzero(cls == TEXT) if counts[i] > 0]
    by_key: dict[str, list[int]] = {}
    for i in text_ids:
        key = spelling_key(values[i])
        if key:
            by_key.setdefault(key, []).append(i)
    keys = list(by_key)
    key_counts = np.array([counts[by_key[key]].sum() for key in keys], dtype=np.int64)
    parent = spelling_groups(keys, key_counts, max_ratio)
    members: dict[int, list[int]] = {}
    for j, key in enumerate(keys):
        members.setdefault(int(parent[j]), []).extend(by_key[key])
    canonical = np.arange(len(values))
    groups = []
    for root in sorted(members, key=lambda r: (-int(counts[members[r]].sum()), keys[r])):
        ids = members[root]
        if len(ids) < 2:
            continue
        best = min(ids, key=lambda i: (-counts[i], values[i]))
        canonical[ids] = best
        others = sorted((i for i in ids if i != best), key=lambda i: (-counts[i], values[i]))
        groups.append({"canonical": values[best], "rows": int(counts[ids].sum()),
                       "spellings": {values[i]: int(counts[i]) for i in others}})
    prof.canonical = canonical
    if not groups:
        return
    codes = prof.codes
    safe = np.where(codes >= 0, codes, 0)
    odd = (codes >= 0) & (row_cls == TEXT) & (canonical[safe] != safe)
    rows = np.flatnonzero(odd)
    shown = "; ".join(f"{g['canonical']!r} <- " + ", ".join(map(repr, list(g["spellings"])[:4])) for g in groups[:5])
    prof.findings.append(Finding(prof.name, "inconsistent_category", len(rows) / len(codes), rows,
                                 f"{len(groups)} value(s) spelled more than one way ({len(rows):,} rows with a "
                                 f"non-canonical spelling): {shown}", {"groups": groups[:50], "n_groups": len(groups)}))


# ---------------------------------------------------------------------------------------------- features and tests
def feature_codes(prof: Profile) -> tuple[np.ndarray, int] | None:
    """``(codes, n_levels)``: one small integer per row for the one-column classifier and the split
    tests; a row without a real value gets level ``n_levels - 1``. Categories: the canonical
    spellings, the :data:`MAX_LEVELS` most frequent apart and the rest together; numbers and
    dates: their distinct values when few, else :data:`QUANTILE_BINS` quantile bins. None for
    free text, identifiers and empty columns."""
    usable = prof.usable
    if prof.kind in ("numeric", "datetime"):
        ok = usable & np.isfinite(prof.numbers)
        vals = prof.numbers[ok]
        if not len(vals):
            return None
        distinct = np.unique(vals)
        if len(distinct) <= MAX_LEVELS:
            level = np.searchsorted(distinct, vals)
            n = len(distinct)
        else:
            edges = np.unique(np.quantile(vals, np.linspace(0, 1, QUANTILE_BINS + 1)[1:-1]))
            level = np.searchsorted(edges, vals, side="right")
            n = len(edges) + 1
    elif prof.kind in ("category", "boolean"):
        ok = usable & (prof.codes >= 0)
        canon = prof.canonical if prof.canonical is not None else np.arange(len(prof.values))
        code = canon[prof.codes[ok]]
        if not len(code):
            return None
        freq = np.bincount(code, minlength=len(prof.values))
        top = np.lexsort((np.arange(len(freq)), -freq))[:MAX_LEVELS]
        top = top[freq[top] > 0]
        lookup = np.full(len(freq), len(top))
        lookup[top] = np.arange(len(top))
        level = lookup[code]
        n = len(top) + 1
    else:
        return None
    out = np.full(len(usable), n, dtype=np.int64)
    out[ok] = level
    return out, n + 1


def fold_of(m: int, folds: int) -> np.ndarray:
    """The cross-validation fold of each of ``m`` rows: a fixed shuffle (seed 0), so runs agree."""
    return np.random.default_rng(0).permutation(m) % folds


def cv_accuracy(codes: np.ndarray, n_levels: int, y: np.ndarray, n_classes: int, fold: np.ndarray,
                folds: int) -> tuple[float, float]:
    """``(accuracy, majority accuracy)``, cross-validated: each fold's rows are predicted by the most
    frequent class of their level in the other folds (their majority class where the level is
    unseen; ties to the lower class), and by the other folds' majority class. One pass over the
    rows: O(m + folds x levels x classes) time and memory."""
    if not len(y):
        return 0.0, 0.0
    per_fold = np.bincount((fold * n_levels + codes) * n_classes + y, minlength=folds * n_levels * n_classes) \
        .reshape(folds, n_levels, n_classes)
    train = per_fold.sum(axis=0, keepdims=True) - per_fold            # each fold's table from the other folds
    class_totals = train.sum(axis=1)                                    # (folds, classes)
    majority = np.argmax(class_totals, axis=1)                          # (folds,)
    best = np.argmax(train, axis=2)                                     # (folds, levels)
    unseen = train.sum(axis=2) == 0
    best = np.where(unseen, majority[:, None], best)
    hit = best[fold, codes] == y
    return float(hit.mean()), float((majority[fold] == y).mean())


def ks_test(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov: ``(D, p)``, the asymptotic p-value (Stephens' correction)."""
    from scipy.special import kolmogorov

    a, b = np.sort(a), np.sort(b)
    both = np.concatenate([a, b])
    d = float(np.max(np.abs(np.searchsorted(a, both, side="right") / len(a)
                            - np.searchsorted(b, both, side="right") / len(b))))
    en = len(a) * len(b) / (len(a) + len(b))
    lam = (np.sqrt(en) + 0.12 + 0.11 / np.sqrt(en)) * d
    return d, float(np.clip(kolmogorov(lam), 0.0, 1.0))


def chi2_test(a: np.ndarray, b: np.ndarray, n_levels: int) -> tuple[float, float]:
    """Chi-square test of two samples of levels: ``(Cramer's V, p)``."""
    from scipy.special import chdtrc

    table = np.stack([np.bincount(a, minlength=n_levels), np.bincount(b, minlength=n_levels)]).astype(np.float64)
    table = table[:, table.sum(axis=0) > 0]
    n = table.sum()
    if table.shape[1] < 2 or n == 0:
        return 0.0, 1.0
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / n
    stat = float(((table - expected) ** 2 / expected).sum())
    return float(np.sqrt(stat / n)), float(chdtrc(table.shape[1] - 1, stat))


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values of the p-values ``p`` (the false discovery rate at which each passes)."""
    p = np.asarray(p, dtype=np.float64)
    if not len(p):
        return p
    order = np.argsort(p, kind="stable")
    ranked = p[order] * len(p) / np.arange(1, len(p) + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty_like(q)
    out[order] = np.clip(q, 0.0, 1.0)
    return out
