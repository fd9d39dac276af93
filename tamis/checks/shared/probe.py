"""A cross-validated linear probe on the embeddings: out-of-sample class probabilities.

The probe is linear discriminant analysis (a Gaussian per class with one shared covariance):
``p(c | x) = softmax_c(x . a_c + b_c)`` with ``a_c = S^-1 mu_c`` and
``b_c = -mu_c . a_c / 2 + log prior_c``, fitted in closed form from sufficient statistics
(class sums and the scatter matrix). Cross-validation costs one pass over the rows: each
fold's statistics are gathered once, and the model that scores fold ``f`` is fitted on the
totals minus fold ``f``'s, so no row is ever scored by a model that saw it (the out-of-sample
probabilities confident learning needs). The shared covariance is shrunk towards a multiple
of the identity, ``(1 - s) S + s tr(S) / d I`` with ``s = shrinkage``, which keeps it invertible
when d is large against the rows per class: the model is scikit-learn's
``LinearDiscriminantAnalysis(solver="lsqr", shrinkage=s)`` (a test compares them).

Why LDA and not a logistic regression: both are linear probes; LDA needs no iterations (a
logistic regression on 100k x 512 with 100 classes takes minutes per fold on a CPU), and on
embeddings whose classes are roughly Gaussian clusters it ranks label errors as well
(measured on the realistic bench store, see README "Label errors").

Written once against ``xp`` (NumPy or CuPy). Cost: O(M d^2 + M d C) time in row blocks, O(d^2
+ C d + block x max(d, C)) memory beyond the (M, C) result. The probabilities are rounded to
a grid of 2^-20 so that BLAS rounding (which differs by CPU and thread count) almost never
reaches a decision made on them.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from ...engine.backend import to_host
from ...engine.search.tiles import run_blocks

#: rows per block of the statistics and scoring passes
BLOCK_ROWS = 16_384
#: probabilities are multiples of this
GRID = 2.0 ** -20


def fold_of(m: int, folds: int, seed: int) -> np.ndarray:
    """(M,) fold of each row: a seeded permutation dealt round-robin (fold sizes differ by <= 1)."""
    order = np.random.default_rng([seed, 31]).permutation(m)
    out = np.empty(m, dtype=np.int64)
    out[order] = np.arange(m) % folds
    return out


def probe_probabilities(X: Any, y: np.ndarray, n_classes: int, *, folds: int = 5, shrinkage: float = 0.05,
                        seed: int = 0, xp: ModuleType = np) -> np.ndarray:
    """(M, C) float32 out-of-fold class probabilities of the rows of ``X`` (M, d) from labels ``y``.

    Classes absent from a fold's training rows get probability 0 for that fold's rows.
    """
    m, d = int(X.shape[0]), int(X.shape[1])
    fold = fold_of(m, folds, seed)
    scatter = np.zeros((folds, d, d))
    sums = np.zeros((folds, n_classes, d))
    counts = np.zeros((folds, n_classes))
    for start in range(0, m, BLOCK_ROWS):
        f_block, y_block = fold[start:start + BLOCK_ROWS], y[start:start + BLOCK_ROWS]
        order = np.argsort(f_block, kind="stable")               # the block's rows, fold by fold
        bounds = np.searchsorted(f_block[order], np.arange(folds + 1))
        for f in range(folds):
            lo, hi = int(bounds[f]), int(bounds[f + 1])
            if hi == lo:
                continue
            # one fold's rows of the block, gathered on their own (a reordered copy of the whole
            # block was 32 MB of fresh memory a block, page-faulted in)
            rows = xp.asarray(X[xp.asarray(start + order[lo:hi])], dtype=xp.float32)
            labels = y_block[order[lo:hi]]
            onehot_t = xp.zeros((n_classes, hi - lo), dtype=xp.float32)   # (C, rows): row-major for BLAS
            onehot_t[xp.asarray(labels), xp.arange(hi - lo)] = 1.0
            scatter[f] += to_host(rows.T @ rows)              # A.T @ A of one buffer: a symmetric rank-k update
            sums[f] += to_host(onehot_t @ rows)
            counts[f] += np.bincount(labels, minlength=n_classes)
    models = [_fit(scatter.sum(0) - scatter[f], sums.sum(0) - sums[f], counts.sum(0) - counts[f], shrinkage)
              for f in range(folds)]
    out = np.empty((m, n_classes), dtype=np.float32)

    def score(start: int) -> None:          # the row blocks on the CPU's threads: disjoint rows of out
        block = xp.asarray(X[start:start + BLOCK_ROWS], dtype=xp.float32)
        f_block = fold[start:start + len(block)]
        for f in np.unique(f_block):
            sel = np.flatnonzero(f_block == f)
            weights, bias, present = models[f]
            if not present.any():                 # the other folds hold no row: nothing to learn from
                out[start + sel] = np.float32(1.0 / n_classes)
                continue
            logits = to_host(block[xp.asarray(sel)] @ xp.asarray(weights)).astype(np.float64) + bias
            logits[:, ~present] = -np.inf
            logits -= logits.max(axis=1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(axis=1, keepdims=True)
            out[start + sel] = np.rint(p / GRID) * GRID

    run_blocks(score, m, BLOCK_ROWS, xp)
    return out


def _fit(scatter: np.ndarray, sums: np.ndarray, counts: np.ndarray, shrinkage: float
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weights (d, C) float32, bias (C,), present (C,) bool) of LDA from sufficient statistics."""
    n_classes, d = sums.shape
    present = counts > 0
    total = float(counts.sum())
    means = np.where(present[:, None], sums / np.maximum(counts, 1)[:, None], 0.0)
    within = (scatter - (means * counts[:, None]).T @ means) / max(total, 1.0)   # as scikit-learn's LDA
    within = (within + within.T) / 2
    ridge = shrinkage * max(float(np.trace(within)) / d, 1e-12)
    within = (1 - shrinkage) * within + ridge * np.eye(d)
    weights = np.linalg.solve(within, means.T)                     # (d, C)
    bias = -0.5 * np.einsum("cd,dc->c", means, weights) + np.log(np.maximum(counts, 1) / max(total, 1.0))
    return weights.astype(np.float32), bias, present


__all__ = ["probe_probabilities", "fold_of"]
