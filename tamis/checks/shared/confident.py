"""Confident learning (Northcutt, Jiang and Chuang, 2021) on out-of-sample class probabilities.

``P`` is an (M, C) matrix of out-of-sample probabilities (a model's ``pred_probs``, votes of
each row's neighbours, never of the row itself, a cross-validated linear probe on the
embeddings, or the product of several: :func:`class_probabilities`) and ``y`` the given labels:

1. per-class thresholds ``t_c``: the mean of ``P[i, c]`` over the rows labelled ``c``;
2. the confident joint ``J[y, j]``: rows labelled ``y`` whose most probable class among
   those above their threshold is ``j``;
3. calibration: each row of ``J`` rescaled to the number of rows with that label, the
   whole to M, an estimate of the joint distribution of given and true labels (x M);
4. pruning by noise rate: ``J_cal`` is rounded to integers keeping each row's total; for
   every off-diagonal ``(y, j)``, that many rows labelled ``y`` with the largest margin
   ``P[i, j] - P[i, y]`` are label errors, except rows whose most probable class is their
   given label.

The functions hold O(M C) memory (P itself) and are pure, so tests compare them with a
brute-force transcription of the paper's definitions.
"""

from __future__ import annotations

import numpy as np

from ...engine.search.tiles import run_blocks

#: rows per block when turning neighbour votes into probabilities: bounds a block to ~2 MiB (cache-sized
#: blocks measured 2x faster than 64 MiB ones, which page-fault in)
_VOTE_BLOCK_CELLS = 1 << 18
#: probabilities this close count as equal (float32 rounding of a mean and its members)
_TIE_TOLERANCE = 1e-6


def knn_probabilities(neighbor_labels: np.ndarray, similarities: np.ndarray, n_classes: int,
                      prior: np.ndarray, smoothing: float) -> np.ndarray:
    """(M, C) float32 class probabilities from each row's neighbours (self excluded).

    Votes are weighted by similarity (clipped at 0); ``smoothing`` pseudo-votes are spread
    by the class prior: ``p = (votes + smoothing * prior) / (sum(votes) + smoothing)``.
    """
    m, k = neighbor_labels.shape
    out = np.empty((m, n_classes), dtype=np.float32)
    weights = np.clip(similarities.astype(np.float64), 0.0, None)
    block = max(1, _VOTE_BLOCK_CELLS // max(n_classes, 1))

    def one(start: int) -> None:
        lab = neighbor_labels[start:start + block]
        w = weights[start:start + block]
        rows = np.repeat(np.arange(len(lab)), k)
        votes = np.bincount(rows * n_classes + lab.reshape(-1), weights=w.reshape(-1),
                            minlength=len(lab) * n_classes).reshape(len(lab), n_classes)
        total = votes.sum(axis=1, keepdims=True)
        out[start:start + block] = (votes + smoothing * prior[None, :]) / (total + smoothing)

    run_blocks(one, m, block)
    return out


def per_class_thresholds(P: np.ndarray, y: np.ndarray) -> np.ndarray:
    """t_c = mean P[i, c] over rows labelled c (inf for a class no row carries)."""
    n_classes = P.shape[1]
    counts = np.bincount(y, minlength=n_classes)
    sums = np.bincount(y, weights=P[np.arange(len(y)), y].astype(np.float64), minlength=n_classes)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.inf)


def confident_joint(P: np.ndarray, y: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(C, C) counts: J[y, j] = rows labelled y whose best class above threshold is j."""
    m, n_classes = P.shape
    cut = (thresholds - _TIE_TOLERANCE).astype(P.dtype)
    confident, best = np.empty(m, dtype=bool), np.empty(m, dtype=np.int64)
    block = max(1, _VOTE_BLOCK_CELLS // max(n_classes, 1))

    def one(start: int) -> None:            # row blocks: no (M, C) temporaries
        part = P[start:start + block]
        above = part >= cut[None, :]
        confident[start:start + block] = above.any(axis=1)
        best[start:start + block] = np.argmax(np.where(above, part, -np.inf), axis=1)

    run_blocks(one, m, block)
    joint = np.bincount(y[confident] * n_classes + best[confident], minlength=n_classes * n_classes)
    return joint.reshape(n_classes, n_classes).astype(np.float64)


def calibrate(joint: np.ndarray, class_counts: np.ndarray) -> np.ndarray:
    """Rows rescaled to the class counts, the whole to their sum (rows with no count stay 0)."""
    row_sums = joint.sum(axis=1, keepdims=True)
    cal = np.where(row_sums > 0, joint / np.where(row_sums > 0, row_sums, 1) * class_counts[:, None], 0.0)
    total = cal.sum()
    return cal * (class_counts.sum() / total) if total > 0 else cal


def round_preserving_row_totals(matrix: np.ndarray) -> np.ndarray:
    """Integers per cell whose row sums are the rounded row sums (largest remainder first).

    Rounding each cell alone loses a spread-out row: 15 errors over 90 cells of 0.17 round
    to none. Here every row keeps ``round(row total)``, given to the largest fractions.
    """
    floors = np.floor(matrix)
    short = (np.round(matrix.sum(axis=1)) - floors.sum(axis=1)).astype(np.int64)
    out = floors.astype(np.int64)
    for r in np.flatnonzero(short > 0):
        frac = matrix[r] - floors[r]
        order = np.lexsort((np.arange(len(frac)), -frac))  # largest fraction, then lowest column
        out[r, order[:short[r]]] += 1
    return out


def prune_by_noise_rate(P: np.ndarray, y: np.ndarray, calibrated: np.ndarray) -> np.ndarray:
    """(M,) bool: the label errors that pruning by noise rate selects."""
    n_classes = P.shape[1]
    counts_to_prune = round_preserving_row_totals(calibrated)
    issues = np.zeros(len(y), dtype=bool)
    order_y = np.argsort(y, kind="stable")
    starts = np.searchsorted(y[order_y], np.arange(n_classes + 1))
    for given in range(n_classes):
        rows = order_y[starts[given]:starts[given + 1]]
        if not len(rows):
            continue
        for other in np.flatnonzero(counts_to_prune[given] > 0):
            if other == given:
                continue
            count = int(counts_to_prune[given, other])
            if count <= 0:
                continue
            margin = P[rows, other].astype(np.float64) - P[rows, given]
            pick = np.lexsort((rows, -margin))[:min(count, len(rows))]  # largest margin, then row
            issues[rows[pick]] = True
    return issues


def find_label_issues(P: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, dict]:
    """Label issues of rows with probabilities ``P`` and given labels ``y``, and what was estimated."""
    n_classes = P.shape[1]
    counts = np.bincount(y, minlength=n_classes)
    thresholds = per_class_thresholds(P, y)
    joint = confident_joint(P, y, thresholds)
    cal = calibrate(joint, counts.astype(np.float64))
    issues = prune_by_noise_rate(P, y, cal)
    # a row whose most probable class is its given label is never an issue
    given = P[np.arange(len(y)), y].astype(np.float64)
    issues &= P.max(axis=1) > given + _TIE_TOLERANCE
    off = cal.sum(axis=1) - np.diag(cal)
    noise_rate = np.where(counts > 0, off / np.maximum(counts, 1), 0.0)
    return issues, {"thresholds": thresholds, "confident_joint": joint, "calibrated_joint": cal,
                    "noise_rate": noise_rate}


def disagreements(P: np.ndarray, y: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(M,) bool: rows outvoted with confidence.

    The given label is below its class threshold, and another class is the most probable
    and near its own typical confidence: at least its threshold minus the standard deviation
    of ``P[i, c]`` over the rows labelled ``c``. The second condition keeps rows whose
    evidence is split between classes (ambiguous, not mislabelled) out.
    """
    n_classes = P.shape[1]
    counts = np.bincount(y, minlength=n_classes)
    own = P[np.arange(len(y)), y].astype(np.float64)
    mean = np.bincount(y, weights=own, minlength=n_classes) / np.maximum(counts, 1)
    spread = np.sqrt(np.maximum(np.bincount(y, weights=own ** 2, minlength=n_classes) / np.maximum(counts, 1)
                                - mean ** 2, 0.0))
    best = np.argmax(P, axis=1)
    top = P[np.arange(len(y)), best].astype(np.float64)
    return ((own < thresholds[y] - _TIE_TOLERANCE) & (top > own + _TIE_TOLERANCE)
            & (top >= thresholds[best] - spread[best] - _TIE_TOLERANCE))


#: the evidence the embeddings give (``probe``): neighbour votes, the linear probe, or both
EMBEDDING_EVIDENCE = ("neighbours+probe", "neighbours", "probe")
#: a probability counts as at least this in the product of sources (one source's 0 is not a veto)
_PRODUCT_FLOOR = 1e-6


def strongest_other(P: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(M,) float64: each row's largest probability among the classes other than its label
    (-inf with one class), in row blocks (no copy of P)."""
    m, n_classes = P.shape
    out = np.empty(m)
    block = max(1, _VOTE_BLOCK_CELLS // max(n_classes, 1))

    def one(start: int) -> None:
        part = P[start:start + block].astype(np.float64)
        part[np.arange(len(part)), y[start:start + block]] = -np.inf
        out[start:start + block] = part.max(axis=1)

    run_blocks(one, m, block)
    return out


def combine(probs: list[np.ndarray]) -> np.ndarray:
    """The normalised geometric mean of several (M, C) probability estimates (a product of
    experts): a class keeps probability only where every source gives it some, so one
    source's confident mistake is vetoed by another's doubt. One estimate is returned as is.
    Row blocks bound the float64 temporaries; the result is one (M, C) float32 matrix."""
    if len(probs) == 1:
        return probs[0]
    m, n_classes = probs[0].shape
    out = np.empty((m, n_classes), dtype=np.float32)
    block = max(1, _VOTE_BLOCK_CELLS // max(n_classes, 1))     # float64 temporaries of ~2 MiB

    def one(start: int) -> None:
        logp = sum(np.log(np.maximum(p[start:start + block].astype(np.float64), _PRODUCT_FLOOR))
                   for p in probs) / len(probs)
        logp -= logp.max(axis=1, keepdims=True)
        part = np.exp(logp)
        out[start:start + block] = part / part.sum(axis=1, keepdims=True)

    run_blocks(one, m, block)
    return out


def class_probabilities(ctx, owner: str, source: str = "auto", k: int | None = None,
                        smoothing: float = 0.1, evidence: str = "neighbours+probe") -> tuple[np.ndarray, list[str]]:
    """``(P, sources)``: out-of-sample class probabilities of the valid rows, (M, C), from the
    embeddings (``source`` "embeddings": neighbour votes and/or a cross-validated linear probe,
    as ``evidence`` says), a model's ``pred_probs`` ("pred_probs"), or every one the store
    allows ("auto"), combined by :func:`combine`; built once per run and setting, shared by
    label_error, ambiguous, class_overlap and metadata. ``owner`` names the check in errors.

    Measured on the realistic bench store (100k x 512, 100 classes, 5 % noise, 70 % of it to a
    sibling class), average precision of the self-confidence ranking: neighbour votes 0.814,
    the probe 0.877, their product 0.892 (their arithmetic mean 0.884)."""
    from ...engine.artifacts import neighbour_codes, neighbours, resolve_k
    from ...errors import InputError
    from .probe import probe_probabilities

    embeddings = source in ("auto", "embeddings") and ctx.store.embeddings is not None
    chosen_k = resolve_k(ctx, k) if embeddings and "neighbours" in evidence else None
    use_probe = embeddings and "probe" in evidence

    def build() -> tuple[np.ndarray, list[str]]:
        store = ctx.store
        n_classes = len(ctx.label_names)
        y = ctx.label_codes[ctx.valid_rows]
        used, probs = [], []
        if chosen_k is not None:   # each source is its own artefact: checks asking for other mixes share it

            def votes() -> np.ndarray:
                idx, sims = neighbours(ctx, chosen_k)
                prior = np.bincount(y, minlength=n_classes) / max(1, len(y))
                return knn_probabilities(neighbour_codes(ctx, idx), sims, n_classes, prior, smoothing)

            probs.append(ctx.artifact(("neighbour_votes", chosen_k, float(smoothing)), votes))
            used.append("neighbours")
        if use_probe:
            probs.append(ctx.artifact("probe", lambda: probe_probabilities(ctx.embeddings, y, n_classes, seed=0,
                                                                           xp=ctx.xp)))
            used.append("probe")
        if source in ("auto", "pred_probs") and store.pred_probs is not None:
            model = np.asarray(ctx.backend.to_host(store.pred_probs), dtype=np.float32)
            if model.shape[1] != n_classes:
                raise InputError(f"{store.source}: pred_probs has {model.shape[1]} columns but the labels hold "
                                 f"{n_classes} classes; give one column per class, in sorted label order")
            probs.append(model if len(ctx.valid_rows) == len(model) else model[ctx.valid_rows])   # no copy when all are
            used.append("pred_probs")
        if not probs:
            raise InputError(f"{store.source}: {owner} with source={source!r} needs {source}, and the store has "
                             "none; use source='auto'")
        return combine(probs), used

    return ctx.artifact(("class_probabilities", source, chosen_k, float(smoothing), use_probe), build)
