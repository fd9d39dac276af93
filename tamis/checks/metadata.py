"""Metadata: what is wrong with the store's other columns (Parquet / Arrow / DataFrame columns,
extra .npz arrays): every column that holds none of the inputs, or those named with
``--metadata-cols``.

Per column (:mod:`.shared.tabular` holds the analyses and their rules):

- ``missing`` (null, NaN, inf, empty string) and ``disguised_missing`` (missing markers such as
  "N/A", "?", "unknown"; numeric sentinels -1, 99, 999, ... that stand apart from the other
  values; zeros in an otherwise strictly positive column, e.g. a Glucose of 0): the rows are
  flagged (score 0);
- ``type``: numbers or dates stored as strings, several kinds of value in one column;
- ``inconsistent_category``: spellings of one value differing by case, whitespace, punctuation,
  accents or one edit; the canonical spelling is the most frequent (score 0.5 for the others);
- ``identifier``: unique per row; never judged as a predictor;
- ``leaky_predictor``: the column alone predicts the label (or the split) far better than the
  best reference: cross-validated (``folds``, a fixed shuffle) accuracy of the most frequent
  label per value (categories) or per quantile bin (numbers), against the majority class and,
  where another check built them, the embeddings' out-of-sample class probabilities (neighbour
  votes, or pred_probs). A leak removes at least ``min_leak_gain`` of the reference's errors, by
  more than 3 standard errors of the reference's accuracy; leaks are ranked by their margin;
- ``split_shift``: the column's distribution differs between the training split (named like
  one, else the largest) and an evaluation split: Kolmogorov-Smirnov for numbers and dates,
  chi-square for categories; a shift has a Benjamini-Hochberg q-value at most ``alpha`` over
  all the column x split tests and an effect (KS D, Cramer's V) of at least ``min_effect``. Its
  rows are the evaluation rows outside the training values' range (or with values training
  never saw).

``metadata.parquet`` lists every finding (``column``, ``kind``, ``rate``, ``rows``: input rows,
``detail``), most severe first: leaky predictors (of the label, then of the split, by margin),
disguised missing, missing, split shift, inconsistent categories, types, identifiers; within a
kind, the larger rate first. ``rate`` is the share of the analysed rows concerned, except for a
leaky predictor (its cross-validated accuracy) and a split shift (its effect size).
``summary.json -> checks.metadata.columns.<name>``: the column's type and its findings (the first
:data:`SUMMARY_ROWS` rows of each). Rows with an unusable embedding are left out, as everywhere.
A column holding no value at all is reported, but flags no row. Nothing is excluded.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from ..config import Interval, Options
from ..io.readers.columns import MIXED_TYPES_KEY
from .base import Check, CheckResult, plain
from .leakage import TRAIN_NAMES
from .shared.confident import class_probabilities
from .shared.tabular import (
    Finding,
    Profile,
    benjamini_hochberg,
    chi2_test,
    cv_accuracy,
    feature_codes,
    fold_of,
    ks_test,
    profile_column,
)
from .views import Field, Samples, Table

#: the order of the kinds in metadata.parquet, most severe first
KINDS = ("leaky_predictor", "disguised_missing", "missing", "split_shift", "inconsistent_category", "type",
         "identifier")
#: kinds whose rows hold a wrong value: flagged (score 0) or doubtful (score 0.5)
FLAGGED_KINDS = ("missing", "disguised_missing")
DOUBTFUL_KINDS = ("inconsistent_category", "type")
#: rows of each finding listed in summary.json (metadata.parquet lists them all)
SUMMARY_ROWS = 100
#: the fewest rows a split (or each side of a split test) needs to be compared
MIN_SPLIT_ROWS = 5
#: findings named on one row's ``metadata_finding``
NOTES_PER_ROW = 3


class Metadata(Check):
    name = "metadata"
    requires = ("metadata",)
    uses_neighbours = True
    description = ("the store's other columns: missing and disguised-missing values, types, spellings, leaky "
                   "predictors, split shift")
    gallery = Samples(fields=(Field("metadata_finding", "finding"),), score_caption="score")
    panels = (Table(title="Metadata findings, most severe first", table="metadata",
                    columns=("column", "kind", "rate", "detail")),)
    _parameter_constraints = {
        "folds": Interval(int, 2, 20),
        "min_leak_gain": Interval(float, 0, 1, closed="right"),
        "alpha": Interval(float, 0, 1, closed="neither"),
        "min_effect": Interval(float, 0, 1),
        "gap_factor": Interval(float, 1, None),
        "max_typo_ratio": Interval(float, 0, 1),
        "embedding_baseline": Options(("reuse", "compute", "none")),
    }

    def __init__(self, folds: int = 5, min_leak_gain: float = 0.3, alpha: float = 0.01, min_effect: float = 0.1,
                 gap_factor: float = 5.0, max_typo_ratio: float = 0.2, embedding_baseline: str = "reuse") -> None:
        self.folds = folds
        self.min_leak_gain = min_leak_gain
        self.alpha = alpha
        self.min_effect = min_effect
        self.gap_factor = gap_factor
        self.max_typo_ratio = max_typo_ratio
        self.embedding_baseline = embedding_baseline

    def skip_reason(self, available: frozenset[str]) -> str | None:
        if "metadata" in available:
            return super().skip_reason(available)
        return ("needs columns besides the inputs (embedding, label, path, split, id, pred_probs, quality, group), "
                "holding one number, string, bool or date per row, and the store has none (a .npy store holds "
                "embeddings only; list and nested columns are not read)")

    def _run(self, ctx) -> CheckResult:
        rows = ctx.valid_rows
        m = len(rows)
        profiles = self._profiles(ctx, rows)
        findings = [f for p in profiles for f in p.findings]
        leaks, predictors = self._leaks(ctx, profiles, rows)
        shifts, reference = self._shifts(ctx, profiles, rows)
        findings = sorted(findings + leaks + shifts, key=_severity)
        flagged = np.zeros(m, dtype=bool)
        for p in profiles:
            if p.kind != "empty":   # a column with no value at all is one finding, not every row's
                flagged |= p.missing | p.disguised
        doubtful = np.zeros(m, dtype=bool)
        for f in findings:
            if f.kind in DOUBTFUL_KINDS:
                doubtful[f.rows] = True
        score = np.where(flagged, 0.0, np.where(doubtful, 0.5, 1.0))
        notes = _notes(findings, {p.name: p for p in profiles}, m)
        note_column = np.full(ctx.n, None, dtype=object)
        note_column[rows] = notes
        summary = {
            "n_columns": len(profiles),
            "n_rows": int(flagged.sum()),
            "n_findings": len(findings),
            "counts": {kind: sum(f.kind == kind for f in findings) for kind in KINDS},
            "columns": {p.name: {"type": p.kind, "stored_as": p.stored, "n_distinct": int(p.n_distinct),
                                 "findings": [_as_json(f, rows) for f in findings if f.column == p.name]}
                        for p in profiles},
            "skipped_columns": dict(ctx.store.metadata_skipped),
            "predictors": predictors,
            "split_reference": reference,
        }
        return CheckResult(flags=ctx.to_rows(flagged, fill=False, dtype=bool),
                           scores=ctx.to_rows(score, fill=np.nan, dtype=np.float64),
                           summary=summary, tables={"metadata": _table(findings, rows)},
                           columns={"metadata_finding": pa.array(note_column.tolist(), type=pa.string())})

    # ------------------------------------------------------------------ per column
    def _profiles(self, ctx, rows: np.ndarray) -> list[Profile]:
        table = ctx.store.metadata
        if table is None:
            return []
        take = None if len(rows) == ctx.n else pa.array(rows, type=pa.int64())
        out = []
        for field in table.schema:
            column = table.column(field.name)
            if take is not None:
                column = column.take(take)
            mixed = (field.metadata or {}).get(MIXED_TYPES_KEY)
            out.append(profile_column(field.name, column, self.gap_factor, self.max_typo_ratio,
                                      mixed.decode() if mixed else None))
        return out

    # ------------------------------------------------------------------ leaky predictors
    def _leaks(self, ctx, profiles: list[Profile], rows: np.ndarray) -> tuple[list[Finding], dict]:
        store, m = ctx.store, len(rows)
        targets = []
        if store.labels is not None:
            y = ctx.label_codes[rows]
            targets.append(("label", y, len(ctx.label_names), self._embedding_reference(ctx, y)))
        if store.split is not None:
            targets.append(("split", ctx.split_codes[rows], len(ctx.split_names), None))
        features = {p.name: feature_codes(p) for p in profiles}
        fold = fold_of(m, self.folds)
        findings, predictors = [], {}
        for target, y, n_classes, embedding in targets:
            if n_classes < 2 or m < 2 * self.folds or not any(v is not None for v in features.values()):
                continue
            results = []
            for p in profiles:
                if features[p.name] is None:
                    continue
                accuracy, majority = cv_accuracy(*features[p.name], y, n_classes, fold, self.folds)
                reference = max(majority, embedding["accuracy"]) if embedding else majority
                margin = accuracy - reference
                gain = margin / (1.0 - reference) if reference < 1 else 0.0
                noise = 3.0 * math.sqrt(reference * (1.0 - reference) / m)
                results.append({"column": p.name, "accuracy": accuracy, "majority_accuracy": majority,
                                "reference_accuracy": reference, "margin": margin, "gain": gain,
                                "leak": bool(gain >= self.min_leak_gain and margin > noise)})
            results.sort(key=lambda r: (-r["margin"], r["column"]))
            rank = 0
            for r in results:
                if not r["leak"]:
                    continue
                rank += 1
                r["rank"] = rank
                versus = f"{r['majority_accuracy']:.3f} for the majority {target}"
                if embedding:
                    versus += f" and {embedding['accuracy']:.3f} for the {' + '.join(embedding['sources'])}"
                why = "recorded after the label, or derived from it?" if target == "label" else \
                    "the splits were not drawn at random with respect to it"
                findings.append(Finding(
                    r["column"], "leaky_predictor", r["accuracy"], np.empty(0, dtype=np.int64),
                    f"predicts the {target} alone with {r['accuracy']:.3f} cross-validated accuracy ({self.folds} "
                    f"folds), against {versus}: +{r['margin']:.3f}, {100 * r['gain']:.0f} % of the errors left; "
                    f"rank {rank} for the {target}: {why}",
                    {"target": target, "rank": rank, "accuracy": r["accuracy"], "margin": r["margin"],
                     "gain": r["gain"], "majority_accuracy": r["majority_accuracy"],
                     "reference_accuracy": r["reference_accuracy"]},
                    order=(2.0 if target == "label" else 0.0) + r["margin"]))
            predictors[target] = {"folds": self.folds, "embedding": embedding, "columns": results[:50]}
        return findings, predictors

    def _embedding_reference(self, ctx, y: np.ndarray) -> dict | None:
        """The out-of-sample accuracy of the class probabilities label_error uses: reused when built,
        built here only with ``embedding_baseline="compute"``."""
        if self.embedding_baseline == "none":
            return None
        built = ctx.built_all("class_probabilities")
        if built:
            P, used = built[0][1]
        elif self.embedding_baseline == "compute" and len(y) >= 3 and \
                (ctx.store.embeddings is not None or ctx.store.pred_probs is not None):
            P, used = class_probabilities(ctx, self.name)
        else:
            return None
        accuracy = float((np.argmax(np.asarray(P), axis=1) == y).mean()) if len(y) else 0.0
        return {"accuracy": accuracy, "sources": list(used)}

    # ------------------------------------------------------------------ split shift
    def _shifts(self, ctx, profiles: list[Profile], rows: np.ndarray) -> tuple[list[Finding], str | None]:
        if ctx.store.split is None:
            return [], None
        codes = ctx.split_codes[rows]
        names = ctx.split_names
        sizes = np.bincount(codes, minlength=len(names))
        trainish = [i for i, s in enumerate(names) if str(s).lower() in TRAIN_NAMES]
        reference = max(trainish, key=lambda i: sizes[i]) if trainish else int(np.argmax(sizes))
        evaluations = [s for s in range(len(names)) if s != reference and sizes[s] >= MIN_SPLIT_ROWS]
        tests = []
        for p in profiles:
            for s in evaluations:
                test = _split_test(p, codes == reference, codes == s)
                if test is not None:
                    tests.append({**test, "column": p.name, "split": str(names[s])})
        q = benjamini_hochberg(np.array([t["p"] for t in tests]))
        findings = []
        train = str(names[reference])
        for t, qv in zip(tests, q):
            if qv > self.alpha or t["effect"] < self.min_effect:
                continue
            findings.append(Finding(
                t["column"], "split_shift", t["effect"], t["rows"],
                f"split {t['split']!r} differs from {train!r}: {t['statistic']} = {t['effect']:.3f} (p = {t['p']:.2g}, "
                f"q = {qv:.2g}){t['note']}",
                {"split": t["split"], "reference": train, "test": t["test"], "effect": t["effect"], "p_value": t["p"],
                 "q_value": float(qv), "n_rows": int(len(t["rows"]))}))
        return findings, train


def _split_test(p: Profile, train: np.ndarray, evaluation: np.ndarray) -> dict | None:
    """The two-sample test of one column between the training rows and one split's rows."""
    usable = p.usable
    if p.kind in ("numeric", "datetime"):
        ok = usable & np.isfinite(p.numbers)
        a, b = p.numbers[ok & train], p.numbers[ok & evaluation]
        if len(a) < MIN_SPLIT_ROWS or len(b) < MIN_SPLIT_ROWS:
            return None
        d, pv = ks_test(a, b)
        lo, hi = a.min(), a.max()
        rows = np.flatnonzero(ok & evaluation & ((p.numbers < lo) | (p.numbers > hi)))
        span = f" {lo:g} .. {hi:g}" if p.kind == "numeric" else ""
        note = f"; {len(rows):,} of its rows ({100 * len(rows) / len(b):.1f} %) lie outside the training " \
               f"range{span}" if len(rows) else ""
        return {"test": "kolmogorov_smirnov", "statistic": "KS D", "effect": d, "p": pv, "rows": rows, "note": note}
    feature = feature_codes(p) if p.kind in ("category", "boolean") else None
    if feature is None:
        return None
    level, n_levels = feature
    ok = level < n_levels - 1
    a, b = level[ok & train], level[ok & evaluation]
    if len(a) < MIN_SPLIT_ROWS or len(b) < MIN_SPLIT_ROWS:
        return None
    v, pv = chi2_test(a, b, n_levels)
    seen = np.bincount(a, minlength=n_levels) > 0
    rows = np.flatnonzero(ok & evaluation & ~seen[level])
    note = f"; {len(rows):,} of its rows hold values the training split never has" if len(rows) else ""
    return {"test": "chi_square", "statistic": "Cramer's V", "effect": v, "p": pv, "rows": rows, "note": note}


# ---------------------------------------------------------------------------------------------- outputs
def _severity(f: Finding) -> tuple:
    return KINDS.index(f.kind), -(f.order if f.kind == "leaky_predictor" else f.rate), f.column


def _as_json(f: Finding, rows: np.ndarray) -> dict:
    listed = rows[f.rows]
    facts = {k: plain(v) if not isinstance(v, float) else (v if math.isfinite(v) else None) for k, v in f.facts.items()}
    return {"kind": f.kind, "rate": float(f.rate), "n_rows": int(len(listed)),
            "rows": [int(r) for r in listed[:SUMMARY_ROWS]], "detail": f.detail, **facts}


def _table(findings: list[Finding], rows: np.ndarray) -> pa.Table:
    """``metadata.parquet``: one row per finding, in severity order; ``rows`` are input rows."""
    lists = [np.sort(rows[f.rows]).astype(np.int64) for f in findings]
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in lists], dtype=np.int64)]).astype(np.int32)
    flat = np.concatenate(lists) if lists else np.empty(0, dtype=np.int64)
    return pa.table({
        "column": pa.array([f.column for f in findings], type=pa.string()),
        "kind": pa.array([f.kind for f in findings], type=pa.string()),
        "rate": pa.array([float(f.rate) for f in findings], type=pa.float64()),
        "rows": pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), pa.array(flat, type=pa.int64())),
        "detail": pa.array([f.detail for f in findings], type=pa.string()),
    })


def _notes(findings: list[Finding], profiles: dict[str, Profile], m: int) -> list:
    """Per analysed row, what is wrong with its values (``col=value (why)``, most severe first), or None."""
    notes: list = [None] * m
    for f in findings:
        if f.kind not in FLAGGED_KINDS + DOUBTFUL_KINDS:
            continue
        p = profiles[f.column]
        if f.kind == "missing" and p.kind == "empty":
            continue
        canonical = None
        if f.kind == "inconsistent_category":
            canonical = p.canonical
        for i in f.rows:
            current = notes[i]
            if current is not None and len(current) >= NOTES_PER_ROW:
                continue
            if f.kind == "missing":
                text = f"{p.name} missing"
            elif canonical is not None:
                text = f"{p.name}={_show(p, i)} (spelling of {p.values[canonical[p.codes[i]]]!r})"
            elif f.kind == "disguised_missing":
                text = f"{p.name}={_show(p, i)} (stands for unknown)"
            else:
                text = f"{p.name}={_show(p, i)} ({f.kind})"
            if current is None:
                notes[i] = [text]
            else:
                current.append(text)
    return ["; ".join(n) if n is not None else None for n in notes]


def _show(p: Profile, i: int) -> str:
    if p.codes is not None and p.codes[i] >= 0:
        return repr(p.values[p.codes[i]])
    if p.numbers is not None and p.kind == "numeric" and np.isfinite(p.numbers[i]) and p.array.type != pa.string():
        x = float(p.numbers[i])
        return f"{int(x)}" if x.is_integer() else f"{x:g}"
    return p.show(i)
