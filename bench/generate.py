"""Synthetic embedding stores with planted issues, and the truth to score detectors against.

The data imitate image embeddings: ``C`` class centroids on the unit sphere share a common
direction (mean centroid cosine ``centroid_similarity``), and a sample of class ``c`` is
``normalize(mu_c + s_c * z / sqrt(D))`` with ``z ~ N(0, I)``, so two samples of class ``c``
have cosine about ``1 / (1 + s_c**2)``; with the default ``s_c`` in [0.5, 1.0] that is
0.5-0.8 within a class and about 0.15-0.3 between classes. Class sizes vary by +-25 %, and
``rare_classes`` classes get ``rare_class_ratio`` of the average size (class imbalance).

Planted issues, on disjoint rows (each row carries at most one; a near duplicate with a
different label counts as both a near duplicate and a conflicting label):

``exact_duplicate``     a bit-identical copy of a source row, same label and split
``near_duplicate``      a copy with cosine in ``near_cosine_range`` (>= 0.97) to its
                        source, same label and split
``conflicting_labels``  like a near duplicate, but the copy has another label
``leakage``             a near copy of a train row placed in the test split
``label_error``         the label changed to another class (uniformly at random among
                        the classes that are not rare, so rare classes stay rare)
``outlier``             a random direction, far from every class
``invalid``             a NaN or an all-zero row (off by default)

``pred_probs`` (optional) imitate an imperfect model that predicts from the embedding:
``softmax(pred_sharpness * x @ mu.T + pred_noise * N(0, 1))``. It follows the TRUE class
(about 90 % top-1 accuracy by default), so a flipped label meets a confident prediction of
the original class, and an outlier gets a diffuse prediction.

Truth (``truth.json``) lists, per issue type, ``rows`` (every planted row: both rows of each
pair), ``ignore_rows`` (rows a detector of that type may flag either way, left out of
scoring: e.g. exact duplicates and leak pairs are also near duplicates by cosine), and for
pair types ``pairs`` ([source, copy]; for leakage [train row, test row]), their
``cosines`` and ``excluded_rows`` (what a keep-one policy drops: the later row of each
pair; the test row of each leak pair). The runner scores ``rows`` by default.

Output is deterministic for a seed: rows are generated in fixed blocks of 16,384 with one
random stream per block, so the result does not depend on memory settings. Peak memory
is the embedding matrix plus ``pred_probs`` plus one block of temporaries.

Realistic mode (``RealisticConfig``, ``--realistic``) keeps the planted pair types, outliers,
invalid rows and the truth format, and makes the clean data harder:

- a hierarchy: ``classes // 5`` superclasses of 5 sibling classes (the last takes the rest);
- a low-rank anisotropic latent (rank ``min(latent_rank, d // 2)``, variance of dimension
  ``i`` ~ ``i ** -spectrum_decay``) holding orthogonal superclass directions, class
  directions and 2-4 modes (sub-clusters) per class, plus a strong common direction outside
  it; a row is ``normalize(a g + (b s_S + c u_{class, mode} + noise) @ P + isotropic noise)``.
  The energy shares ``a**2, b**2, c**2`` are solved from the class sizes so that the mean
  cosine is ``target_cosine_random`` (0.44) between random rows, ``target_cosine_sibling``
  (0.68) between sibling classes and ``target_cosine_same_class`` (0.75) within a class;
  the means measured on 3,000 rows are in ``meta.realistic.measured_cosines``;
- ``lean_fraction`` (15 %) of the rows are mixtures of their class and a sibling (the
  sibling's weight in ``lean_weight_range``, 0.1-0.5), so siblings genuinely overlap;
- Zipf class sizes, largest / smallest = ``size_ratio`` (20);
- 5 % label noise with per-class rates ``base * lognormal(0, 0.6)``; 70 % of the flips go to a
  sibling, taking the rows that lean most towards a sibling first (labelled with that
  sibling), the rest to a random class of another superclass (``label_error.to_sibling``);
- ``off_topic`` (0.5 %): junk in ``off_topic_clusters`` (3) tight clusters (mean cosine 0.85
  within a cluster, below the near-duplicate threshold) with random labels; truth lists ``rows`` and
  ``clusters`` (one row list per cluster); label and outlier checks may flag junk rows
  (they are in those types' ``ignore_rows``);
- ``pred_probs`` as above with the class means as centroids (``pred_sharpness`` 60,
  ``pred_noise`` 1.0: about 90 % top-1 accuracy at 100 classes, nearly every error a sibling).

``meta.generator`` is ``"realistic"`` and ``meta.realistic`` records the hierarchy, modes,
energy shares, target and measured cosines, class-size ratio, label-noise rate, sibling share
and per-class rates, the mixed rows (``leaning``: rows, towards, weights) and the accuracy of
``pred_probs``. ``rare_classes`` defaults to 0 here (the Zipf tail is the imbalance). With
fewer than 10 classes there is one superclass and the random-pair target does not apply.

CLI::

    python -m bench.generate --n 100000 --d 512 --classes 100 --seed 0 --format npz --out DIR
    python -m bench.generate --realistic --n 100000 --d 512 --classes 100 --seed 0 --out DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from .store import FORMATS, TRUTH_FILE, atomic_write_json, write_store

SCHEMA_VERSION = 1
NEAR_THRESHOLD = 0.97
SPLITS = ("train", "val", "test")
PAIR_TYPES = ("exact_duplicate", "near_duplicate", "conflicting_labels", "leakage")
ROW_TYPES = ("label_error", "outlier", "invalid")
ISSUE_TYPES = PAIR_TYPES + ROW_TYPES + ("class_imbalance",)
_BLOCK = 16_384  # rows per generation block; fixed so the output depends on the seed only

# rate field -> issue type it plants (pair types: rate is pairs per row of n)
_RATE_FIELDS = {
    "exact_duplicate_rate": "exact_duplicate",
    "near_duplicate_rate": "near_duplicate",
    "conflicting_label_rate": "conflicting_labels",
    "leakage_rate": "leakage",
    "label_error_rate": "label_error",
    "outlier_rate": "outlier",
    "invalid_rate": "invalid",
}


@dataclass
class GenerateConfig:
    """What to generate. Rates are fractions of ``n`` (pairs for pair types, rows otherwise);
    ``counts`` overrides a rate with an absolute number, e.g. ``{"outlier": 10}``."""

    n: int = 100_000
    d: int = 512
    classes: int = 100
    seed: int = 0
    exact_duplicate_rate: float = 0.005
    near_duplicate_rate: float = 0.01
    conflicting_label_rate: float = 0.002
    leakage_rate: float = 0.005
    label_error_rate: float = 0.03
    outlier_rate: float = 0.005
    invalid_rate: float = 0.0
    counts: dict = field(default_factory=dict)
    split_fractions: tuple = (0.8, 0.1, 0.1)
    rare_classes: int = 1
    rare_class_ratio: float = 0.05
    centroid_similarity: float = 0.3
    spread_range: tuple = (0.5, 1.0)
    near_cosine_range: tuple = (0.975, 0.995)
    pred_probs: bool = True
    pred_sharpness: float = 20.0
    pred_noise: float = 2.7

    # rate field -> issue type, and the row (not pair) types, of this kind of config
    _rate_fields: ClassVar[dict] = _RATE_FIELDS
    _row_types: ClassVar[tuple] = ROW_TYPES

    def planted_counts(self) -> dict[str, int]:
        """Number of planted pairs (pair types) or rows (row types) per issue type."""
        out = {kind: int(round(getattr(self, f) * self.n)) for f, kind in self._rate_fields.items()}
        out.update({k: int(v) for k, v in self.counts.items()})
        return out

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad setting and how to fix it."""
        if self.d < 2 or self.classes < 2:
            raise ValueError(f"need d >= 2 and classes >= 2, got d={self.d}, classes={self.classes}")
        if self.n < 10 * self.classes:
            raise ValueError(f"n={self.n} is too small for {self.classes} classes; "
                             f"use n >= {10 * self.classes} or fewer classes")
        unknown = set(self.counts) - set(self._rate_fields.values())
        if unknown:
            raise ValueError(f"unknown issue types in counts: {sorted(unknown)}; "
                             f"known: {sorted(self._rate_fields.values())}")
        counts = self.planted_counts()
        if any(v < 0 for v in counts.values()):
            raise ValueError(f"planted counts must be >= 0, got {counts}")
        used = sum(2 * counts[k] for k in PAIR_TYPES) + sum(counts[k] for k in self._row_types)
        if used > self.n // 2:
            raise ValueError(f"the planted issues need {used} rows, more than half of n={self.n}; "
                             "lower the rates or raise n")
        fr = np.asarray(self.split_fractions, dtype=float)
        if fr.shape != (3,) or (fr < 0).any() or not np.isclose(fr.sum(), 1.0) or fr[0] == 0 or fr[2] == 0:
            raise ValueError(f"split_fractions={self.split_fractions} must be three non-negative "
                             "fractions (train, val, test) summing to 1 with train and test > 0")
        if not 0 <= self.rare_classes <= self.classes - 2 or not 0 < self.rare_class_ratio <= 1:
            raise ValueError(f"need 0 <= rare_classes <= classes - 2 and 0 < rare_class_ratio <= 1, got "
                             f"{self.rare_classes}, {self.rare_class_ratio}")
        if not 0 <= self.centroid_similarity < 1:
            raise ValueError(f"centroid_similarity={self.centroid_similarity} must be in [0, 1)")
        lo, hi = self.spread_range
        if not 0 < lo <= hi:
            raise ValueError(f"spread_range={self.spread_range} must satisfy 0 < low <= high")
        lo, hi = self.near_cosine_range
        if not NEAR_THRESHOLD <= lo <= hi < 1:
            raise ValueError(f"near_cosine_range={self.near_cosine_range} must lie in "
                             f"[{NEAR_THRESHOLD}, 1)")


_REALISTIC_RATE_FIELDS = {**_RATE_FIELDS, "off_topic_rate": "off_topic"}


@dataclass
class RealisticConfig(GenerateConfig):
    """The realistic mode (``--realistic``): every field of :class:`GenerateConfig` (some with
    other defaults) plus the ones below; see "Realistic mode" in the module docstring.

    The ``target_cosine_*`` fields are mean cosines between two rows drawn at random, of the
    same class, and of sibling classes (same superclass); the generator solves for the
    energy shares that give them and reports the measured means in ``truth["meta"]``.
    ``spread_range`` and ``centroid_similarity`` are not used here (``noise_scale_range``
    and the targets are their counterparts)."""

    label_error_rate: float = 0.05
    rare_classes: int = 0
    pred_sharpness: float = 60.0
    pred_noise: float = 1.0
    off_topic_rate: float = 0.005
    off_topic_clusters: int = 3
    off_topic_cosine: float = 0.85       # mean cosine between two junk rows of one cluster
    off_topic_common: float = 0.3        # junk centre . common direction = sqrt(this)
    classes_per_superclass: int = 5      # classes // this superclasses; the last takes the rest
    modes_range: tuple = (2, 4)          # sub-clusters per class, inclusive
    mode_share: float = 0.5              # share of a class's own energy that is its mode's
    latent_rank: int = 64                # latent rank: min(latent_rank, d // 2)
    spectrum_decay: float = 0.5          # latent variance of dimension i ~ i ** -decay
    isotropic_noise_share: float = 0.3   # share of the row noise that is isotropic in all d
    noise_scale_range: tuple = (0.75, 1.25)  # per-class factor on the row noise energy
    target_cosine_random: float = 0.44
    target_cosine_sibling: float = 0.68
    target_cosine_same_class: float = 0.75
    lean_fraction: float = 0.15          # rows that are mixtures of their class and a sibling
    lean_weight_range: tuple = (0.1, 0.5)  # the sibling's weight in such a mixture
    size_ratio: float = 20.0             # Zipf class sizes: largest / smallest
    flip_rate_spread: float = 0.6        # per-class flip rates: base * lognormal(0, this)
    sibling_flip_share: float = 0.7      # share of label flips that go to a sibling class

    _rate_fields: ClassVar[dict] = _REALISTIC_RATE_FIELDS
    _row_types: ClassVar[tuple] = ROW_TYPES + ("off_topic",)

    def validate(self) -> None:
        super().validate()
        checks = [
            (self.d >= 8,
             f"the realistic mode needs d >= 8 (a latent of rank d // 2), got d={self.d}"),
            (0 < self.target_cosine_random < self.target_cosine_sibling
             < self.target_cosine_same_class < 1,
             f"need 0 < target_cosine_random < target_cosine_sibling < target_cosine_same_class "
             f"< 1, got {self.target_cosine_random}, {self.target_cosine_sibling}, "
             f"{self.target_cosine_same_class}"),
            (self.classes_per_superclass >= 2,
             f"classes_per_superclass={self.classes_per_superclass} must be >= 2"),
            (1 <= self.modes_range[0] <= self.modes_range[1],
             f"modes_range={self.modes_range} must satisfy 1 <= low <= high"),
            (0 <= self.mode_share < 1, f"mode_share={self.mode_share} must be in [0, 1)"),
            (self.latent_rank >= 2, f"latent_rank={self.latent_rank} must be >= 2"),
            (self.spectrum_decay >= 0, f"spectrum_decay={self.spectrum_decay} must be >= 0"),
            (0 <= self.isotropic_noise_share <= 1,
             f"isotropic_noise_share={self.isotropic_noise_share} must be in [0, 1]"),
            (0 < self.noise_scale_range[0] <= self.noise_scale_range[1],
             f"noise_scale_range={self.noise_scale_range} must satisfy 0 < low <= high"),
            (0 <= self.lean_fraction <= 1, f"lean_fraction={self.lean_fraction} must be in [0, 1]"),
            (0 < self.lean_weight_range[0] <= self.lean_weight_range[1] <= 0.5,
             f"lean_weight_range={self.lean_weight_range} must satisfy 0 < low <= high <= 0.5"),
            (self.size_ratio >= 1, f"size_ratio={self.size_ratio} must be >= 1"),
            (self.flip_rate_spread >= 0, f"flip_rate_spread={self.flip_rate_spread} must be >= 0"),
            (0 <= self.sibling_flip_share <= 1,
             f"sibling_flip_share={self.sibling_flip_share} must be in [0, 1]"),
            (self.off_topic_clusters >= 1,
             f"off_topic_clusters={self.off_topic_clusters} must be >= 1"),
            (0 < self.off_topic_cosine <= 0.95,
             f"off_topic_cosine={self.off_topic_cosine} must be in (0, 0.95] (junk rows are "
             f"not near duplicates of each other)"),
            (0 <= self.off_topic_common < 1,
             f"off_topic_common={self.off_topic_common} must be in [0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass
class Synthetic:
    """A generated store: ``arrays`` keyed by npz array name, and its ``truth``."""

    arrays: dict
    truth: dict


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _apportion(n: int, weights: np.ndarray) -> np.ndarray:
    """Integer class sizes summing to ``n``, proportional to ``weights``, each >= 2."""
    raw = n * weights / weights.sum()
    counts = np.maximum(np.floor(raw).astype(np.int64), 2)
    order = np.argsort(-(raw - np.floor(raw)), kind="stable")
    diff = n - counts.sum()
    i = 0
    while diff != 0:  # give the remainder to the largest fractions, or take from the biggest classes
        c = order[i % len(order)] if diff > 0 else int(np.argmax(counts))
        counts[c] += 1 if diff > 0 else -1
        diff += -1 if diff > 0 else 1
        i += 1
    return counts


def _layout(cfg: GenerateConfig, rng: np.random.Generator):
    """Centroids, spreads, true classes and splits."""
    rho = cfg.centroid_similarity
    shared = _unit(rng.standard_normal(cfg.d))
    own = _unit(rng.standard_normal((cfg.classes, cfg.d)))
    centroids = _unit(np.sqrt(rho) * shared + np.sqrt(1 - rho) * own)
    spreads = rng.uniform(*cfg.spread_range, size=cfg.classes)
    weights = rng.uniform(0.75, 1.25, size=cfg.classes)
    rare = np.sort(rng.choice(cfg.classes, size=cfg.rare_classes, replace=False))
    weights[rare] *= cfg.rare_class_ratio
    true_class = np.repeat(np.arange(cfg.classes), _apportion(cfg.n, weights))
    rng.shuffle(true_class)
    split = rng.choice(3, size=cfg.n, p=np.asarray(cfg.split_fractions, float)).astype(np.int8)
    return centroids.astype(np.float32), spreads, true_class, split, rare


def _base_embeddings(cfg: GenerateConfig, centroids, spreads, true_class) -> np.ndarray:
    emb = np.empty((cfg.n, cfg.d), dtype=np.float32)
    scale = (spreads / np.sqrt(cfg.d)).astype(np.float32)
    for k, a in enumerate(range(0, cfg.n, _BLOCK)):
        b = min(a + _BLOCK, cfg.n)
        rng = np.random.default_rng([cfg.seed, 1, k])
        t = true_class[a:b]
        x = rng.standard_normal((b - a, cfg.d), dtype=np.float32)
        x *= scale[t, None]
        x += centroids[t]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        emb[a:b] = x
    return emb


def near_copy(x: np.ndarray, cosines: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit rows with exactly ``cosines`` (up to float32 rounding) to the unit rows ``x``."""
    x = _unit(x.astype(np.float64))
    w = rng.standard_normal(x.shape)
    w -= np.sum(w * x, axis=1, keepdims=True) * x
    w = _unit(w)
    c = np.asarray(cosines, dtype=np.float64)[:, None]
    return _unit(c * x + np.sqrt(1 - c * c) * w).astype(np.float32)


def _other_class(current: np.ndarray, targets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each entry of ``current``, a class drawn uniformly from ``targets`` minus itself."""
    pos = np.searchsorted(targets, current)
    inside = (pos < len(targets)) & (targets[np.minimum(pos, len(targets) - 1)] == current)
    j = rng.integers(0, len(targets) - inside.astype(np.int64))
    return targets[j + (inside & (j >= pos))]


class _Picker:
    """Draws disjoint rows in a random order, optionally restricted to a mask."""

    def __init__(self, n: int, rng: np.random.Generator):
        self.order = rng.permutation(n)
        self.used = np.zeros(n, dtype=bool)

    def take(self, k: int, allowed: np.ndarray | None = None, what: str = "rows") -> np.ndarray:
        cand = self.order[~self.used[self.order]]
        if allowed is not None:
            cand = cand[allowed[cand]]
        if len(cand) < k:
            raise ValueError(f"cannot plant {k} {what}: only {len(cand)} eligible rows left; "
                             "lower the rates or raise n")
        chosen = cand[:k]
        self.used[chosen] = True
        return chosen


def _pairs_entry(src, copy, cosines, excluded, ignore=()) -> dict:
    pairs = np.stack([src, copy], axis=1) if len(src) else np.zeros((0, 2), np.int64)
    return {
        "pairs": pairs.tolist(),
        "cosines": [round(float(c), 6) for c in cosines],
        "rows": np.sort(np.concatenate([src, copy])).tolist(),
        "excluded_rows": np.sort(np.asarray(excluded, dtype=np.int64)).tolist(),
        "ignore_rows": np.sort(np.asarray(list(ignore), dtype=np.int64)).tolist(),
    }


def _pred_probs(cfg: GenerateConfig, emb: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    probs = np.empty((cfg.n, cfg.classes), dtype=np.float32)
    for k, a in enumerate(range(0, cfg.n, _BLOCK)):
        b = min(a + _BLOCK, cfg.n)
        rng = np.random.default_rng([cfg.seed, 3, k])
        logits = emb[a:b] @ centroids.T
        logits *= cfg.pred_sharpness
        logits += cfg.pred_noise * rng.standard_normal(logits.shape, dtype=np.float32)
        bad = ~np.isfinite(logits).all(axis=1) | ~np.any(emb[a:b], axis=1)
        logits[bad] = 0.0  # invalid rows: a uniform prediction
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=1, keepdims=True)
        probs[a:b] = logits
    return probs


def _pick_pairs(counts: dict, pick: _Picker, split: np.ndarray):
    """Rows of the pair types: ``({kind: (sources, copies)}, (leak train, leak test rows))``."""
    leak_src = pick.take(counts["leakage"], split == 0, "leak sources (train rows)")
    leak_dst = pick.take(counts["leakage"], split == 2, "leak copies (test rows)")
    pairs = {}
    for kind in ("exact_duplicate", "near_duplicate", "conflicting_labels"):
        src = pick.take(counts[kind], what=f"{kind} sources")
        pairs[kind] = (src, pick.take(counts[kind], what=f"{kind} copies"))
    return pairs, (leak_src, leak_dst)


def _plant_pairs(cfg, pairs, leak, emb, labels, true_class, split, targets, prng) -> dict:
    """Write each copy (class, label, split, embedding) and give conflicting copies a label
    from ``targets``; return the cosines of the pairs per kind."""
    cos = {}
    for kind, (src, dst) in [*pairs.items(), ("leakage", leak)]:
        true_class[dst] = true_class[src]
        labels[dst] = labels[src]
        if kind != "leakage":
            split[dst] = split[src]
        if kind == "exact_duplicate":
            emb[dst] = emb[src]
            cos[kind] = np.ones(len(src))
        else:
            c = prng.uniform(*cfg.near_cosine_range, size=len(src))
            emb[dst] = near_copy(emb[src], c, prng)
            cos[kind] = np.sum(emb[src].astype(np.float64) * emb[dst], axis=1)
    csrc, cdst = pairs["conflicting_labels"]
    labels[cdst] = _other_class(labels[csrc], targets, prng)
    return cos


def _arrays(n: int, emb: np.ndarray, labels: np.ndarray, split: np.ndarray, probs: np.ndarray | None) -> dict:
    """The store's arrays, keyed by npz name (paths and ids made from the row number)."""
    width = max(6, len(str(n - 1)))
    arrays = {
        "embeddings": emb,
        "labels": labels.astype(np.int64),
        "image_paths": np.array([f"img/{i:0{width}d}.jpg" for i in range(n)]),
        "split": np.asarray(SPLITS)[split],
        "ids": np.arange(n, dtype=np.int64),
    }
    if probs is not None:
        arrays["pred_probs"] = probs
    return arrays


def generate(cfg: GenerateConfig) -> Synthetic:
    """Generate the arrays of a store and its truth for ``cfg`` (see the module docstring);
    a :class:`RealisticConfig` gives the realistic mode."""
    if isinstance(cfg, RealisticConfig):
        return _generate_realistic(cfg)
    cfg.validate()
    counts = cfg.planted_counts()
    rng = np.random.default_rng([cfg.seed, 0])
    centroids, spreads, true_class, split, rare = _layout(cfg, rng)
    emb = _base_embeddings(cfg, centroids, spreads, true_class)
    labels = true_class.copy()

    prng = np.random.default_rng([cfg.seed, 2])
    pick = _Picker(cfg.n, prng)
    pairs, (leak_src, leak_dst) = _pick_pairs(counts, pick, split)
    flips = pick.take(counts["label_error"], what="label errors")
    outliers = pick.take(counts["outlier"], what="outliers")
    invalid = pick.take(counts["invalid"], what="invalid rows")

    targets = np.setdiff1d(np.arange(cfg.classes), rare)  # keep rare classes rare
    cos = _plant_pairs(cfg, pairs, (leak_src, leak_dst), emb, labels, true_class, split, targets,
                       prng)
    labels[flips] = _other_class(true_class[flips], targets, prng)
    emb[outliers] = _unit(prng.standard_normal((len(outliers), cfg.d))).astype(np.float32)
    half = len(invalid) // 2
    emb[invalid[:half]] = np.nan
    emb[invalid[half:]] = 0.0

    probs = _pred_probs(cfg, emb, centroids) if cfg.pred_probs else None
    truth = _truth(cfg, counts, pairs, (leak_src, leak_dst), cos, flips, outliers, invalid,
                   labels, true_class, split, rare)
    return Synthetic(arrays=_arrays(cfg.n, emb, labels, split, probs), truth=truth)


def _truth(cfg, counts, pairs, leak, cos, flips, outliers, invalid, labels, true_class, split,
           rare) -> dict:
    (esrc, edst), (nsrc, ndst), (csrc, cdst) = (pairs[k] for k in
                                                ("exact_duplicate", "near_duplicate",
                                                 "conflicting_labels"))
    lsrc, ldst = leak
    inv = invalid.tolist()
    near_like_others = np.concatenate([esrc, edst, lsrc, ldst]).tolist()
    truth = {
        "exact_duplicate": _pairs_entry(esrc, edst, cos["exact_duplicate"],
                                        np.maximum(esrc, edst), inv),
        # conflicting pairs are near duplicates too
        "near_duplicate": _pairs_entry(np.concatenate([nsrc, csrc]), np.concatenate([ndst, cdst]),
                                       np.concatenate([cos["near_duplicate"],
                                                       cos["conflicting_labels"]]),
                                       np.maximum(np.concatenate([nsrc, csrc]),
                                                  np.concatenate([ndst, cdst])),
                                       near_like_others + inv),
        "conflicting_labels": _pairs_entry(csrc, cdst, cos["conflicting_labels"],
                                           np.maximum(csrc, cdst), inv),
        "leakage": _pairs_entry(lsrc, ldst, cos["leakage"], ldst, inv),
    }
    order = np.argsort(flips)
    truth["label_error"] = {
        "rows": flips[order].tolist(),
        "given_labels": labels[flips][order].tolist(),
        "true_labels": true_class[flips][order].tolist(),
        # a conflicting copy sits in its source's class with another label, and an outlier
        # gets a diffuse prediction: label checks may flag either
        "ignore_rows": np.sort(np.concatenate([cdst, outliers, invalid])).tolist(),
    }
    truth["outlier"] = {"rows": np.sort(outliers).tolist(), "ignore_rows": sorted(inv)}
    truth["invalid"] = {"rows": sorted(inv), "ignore_rows": []}
    class_counts = np.bincount(labels, minlength=cfg.classes)
    truth["class_imbalance"] = {
        "classes": rare.tolist(),
        "rows": np.flatnonzero(np.isin(labels, rare)).tolist(),
        "ignore_rows": [],
    }
    truth["meta"] = {
        "schema_version": SCHEMA_VERSION,
        "n": cfg.n, "d": cfg.d, "classes": cfg.classes, "seed": cfg.seed,
        "near_threshold": NEAR_THRESHOLD,
        "planted_counts": counts,
        "class_counts": class_counts.tolist(),
        "split_counts": {s: int(np.sum(split == i)) for i, s in enumerate(SPLITS)},
        "config": _jsonable(dataclasses.asdict(cfg)),
        "row_sets": {
            "rows": "every planted row (both rows of each pair); the runner's default scoring set",
            "excluded_rows": "rows a keep-one policy drops: the higher row of each pair; the test "
                             "row of each leak pair",
            "ignore_rows": "rows a detector of this type may flag either way; left out of scoring",
            "pairs": "[source, copy]; for leakage [train row, test row]",
        },
    }
    return truth


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


# ---- realistic mode -------------------------------------------------------------------------

@dataclass
class _Layout:
    """Everything the realistic rows are drawn from (latent vectors are rows of length r)."""

    superclass: np.ndarray   # (C,) superclass of each class
    common: np.ndarray       # (D,) the common direction
    proj: np.ndarray         # (r, D) orthonormal rows, orthogonal to ``common``
    latent_sd: np.ndarray    # (r,) latent standard deviations, sum of squares 1
    super_dir: np.ndarray    # (S, r) unit
    class_part: np.ndarray   # (C, M, r) unit: a class's own direction mixed with one mode's
    mode_weights: np.ndarray  # (C, M), zero past the class's mode count
    modes: np.ndarray        # (C,) mode count
    noise_scale: np.ndarray  # (C,) factor on the mean noise energy
    siblings: list           # per class: the classes a flip or a lean may go to
    rare: np.ndarray
    true_class: np.ndarray   # (N,)
    split: np.ndarray        # (N,)
    mode: np.ndarray         # (N,) mode of each row
    lean_weight: np.ndarray  # (N,) the sibling's weight in a mixed row, 0 for a pure row
    lean_to: np.ndarray      # (N,) the sibling a mixed row leans towards (-1: none)
    lean_mode: np.ndarray    # (N,) that sibling's mode


def _realistic_layout(cfg: RealisticConfig, rng: np.random.Generator) -> _Layout:
    C, D, n = cfg.classes, cfg.d, cfg.n
    n_super = max(1, C // cfg.classes_per_superclass)
    superclass = np.minimum(np.arange(C) // cfg.classes_per_superclass, n_super - 1)
    r = min(cfg.latent_rank, max(1, D // 2))
    basis = np.linalg.qr(rng.standard_normal((D, r + 1)))[0]
    common, proj = basis[:, 0], np.ascontiguousarray(basis[:, 1:].T)
    sd = np.arange(1, r + 1, dtype=np.float64) ** (-cfg.spectrum_decay / 2)
    sd /= np.sqrt(np.sum(sd ** 2))
    lo, hi = cfg.modes_range
    super_dir = _unit(rng.standard_normal((n_super, r)) * sd)
    if n_super <= r:  # orthogonal superclasses: chance overlaps would blur the hierarchy
        super_dir = np.linalg.qr(super_dir.T)[0].T
    class_dir = _unit(rng.standard_normal((C, r)) * sd)
    mode_dir = _unit(rng.standard_normal((C, hi, r)) * sd)
    class_part = _unit(np.sqrt(1 - cfg.mode_share) * class_dir[:, None]
                       + np.sqrt(cfg.mode_share) * mode_dir)
    modes = rng.integers(lo, hi + 1, size=C)
    mode_weights = np.zeros((C, hi))
    for c in range(C):
        mode_weights[c, :modes[c]] = rng.dirichlet(np.full(modes[c], 2.0))
    noise_scale = rng.uniform(*cfg.noise_scale_range, size=C)

    # Zipf sizes: rank ** -s with s chosen so that largest / smallest = size_ratio
    s = np.log(cfg.size_ratio) / np.log(C)
    weights = (1.0 + rng.permutation(C)) ** -s
    rare = np.sort(rng.choice(C, size=cfg.rare_classes, replace=False))
    weights[rare] = cfg.rare_class_ratio * weights.mean()
    true_class = np.repeat(np.arange(C), _apportion(n, weights))
    rng.shuffle(true_class)
    split = rng.choice(3, size=n, p=np.asarray(cfg.split_fractions, float)).astype(np.int8)

    cum = np.cumsum(mode_weights, axis=1)
    mode = np.minimum((rng.random(n)[:, None] > cum[true_class]).sum(axis=1),
                      modes[true_class] - 1)
    siblings = []
    for c in range(C):
        sib = np.flatnonzero((superclass == superclass[c]) & (np.arange(C) != c))
        common_sib = np.setdiff1d(sib, rare)  # keep rare classes rare where there is a choice
        siblings.append(common_sib if len(common_sib) else sib)
    sib_n = np.array([len(x) for x in siblings])
    sib_table = np.zeros((C, max(1, sib_n.max())), dtype=np.int64)
    for c, x in enumerate(siblings):
        sib_table[c, :len(x)] = x
    leaning = (rng.random(n) < cfg.lean_fraction) & (sib_n[true_class] > 0)
    lean_weight = np.where(leaning, rng.uniform(*cfg.lean_weight_range, size=n), 0.0)
    j = (rng.random(n) * sib_n[true_class]).astype(np.int64)
    lean_to = np.where(leaning, sib_table[true_class, np.minimum(j, sib_table.shape[1] - 1)], -1)
    to = np.maximum(lean_to, 0)
    lean_mode = np.minimum((rng.random(n)[:, None] > cum[to]).sum(axis=1), modes[to] - 1)
    return _Layout(superclass, common, proj, sd, super_dir, class_part, mode_weights, modes,
                   noise_scale, siblings, rare, true_class, split, mode, lean_weight, lean_to,
                   lean_mode)


def _predicted_cosines(shares, lay: _Layout, p: np.ndarray) -> np.ndarray:
    """Mean cosines (random, sibling, same class) of pure rows, predicted from the layout for
    energy shares ``(common, superclass, class)``; the noise takes the rest."""
    a2, b2, c2 = shares
    e2 = 1.0 - a2 - b2 - c2
    part = lay.class_part  # (C, M, r)
    own = np.sqrt(b2) * lay.super_dir[lay.superclass][:, None] + np.sqrt(c2) * part
    mean = np.einsum("cm,cmr->cr", lay.mode_weights, own)            # expected latent row
    norm2 = a2 + np.einsum("cm,cm->c", lay.mode_weights, np.sum(own ** 2, axis=2))
    norm2 = norm2 + e2 * lay.noise_scale
    cos = (a2 + mean @ mean.T) / np.sqrt(np.outer(norm2, norm2))
    same_s = lay.superclass[:, None] == lay.superclass[None, :]
    pp = np.outer(p, p)
    sib = same_s & ~np.eye(len(p), dtype=bool)
    return np.array([np.sum(pp * cos), np.sum(pp[sib] * cos[sib]) / np.sum(pp[sib]),
                     np.sum(np.diag(pp) * np.diag(cos)) / np.sum(np.diag(pp))])


def _solve_shares(cfg: RealisticConfig, lay: _Layout) -> np.ndarray:
    """Energy shares (common, superclass, class) whose predicted mean cosines meet the
    targets: a closed-form start, then damped Newton steps on :func:`_predicted_cosines`.
    With a single superclass every pair of classes is a sibling pair: the superclass share
    is 0 and the random-pair target is not used."""
    target = np.array([cfg.target_cosine_random, cfg.target_cosine_sibling,
                       cfg.target_cosine_same_class])
    p = np.bincount(lay.true_class, minlength=cfg.classes) / cfg.n
    p_class = np.sum(p ** 2)
    p_super = np.sum(np.bincount(lay.superclass, weights=p) ** 2)
    same_mode = np.sum(p ** 2 * np.sum(lay.mode_weights ** 2, axis=1)) / p_class
    f = 1 - cfg.mode_share * (1 - same_mode)
    if len(lay.super_dir) > 1:
        a2 = (target[0] - (p_super - p_class) * target[1] - p_class * target[2]) / (1 - p_super)
        x = np.array([a2, target[1] - a2, (target[2] - target[1]) / f])
        free, eqs = [0, 1, 2], [0, 1, 2]
    else:
        x, free, eqs = np.array([target[1], 0.0, (target[2] - target[1]) / f]), [0, 2], [1, 2]

    def valid(v):
        return np.isfinite(v).all() and (v[free] > 0).all() and v.sum() < 1

    def residual(v):
        return (_predicted_cosines(v, lay, p) - target)[eqs]

    for _ in range(30):
        if not valid(x):
            break
        y = residual(x)
        if np.max(np.abs(y)) < 1e-7:
            break
        jac = np.empty((len(eqs), len(free)))
        for j, i in enumerate(free):
            dx = np.zeros(3)
            dx[i] = 1e-6
            jac[:, j] = (residual(x + dx) - y) / 1e-6
        step = np.zeros(3)
        step[free] = np.linalg.lstsq(jac, y, rcond=None)[0]
        for _ in range(20):  # halve the step until the shares stay valid
            if valid(x - step):
                break
            step /= 2
        x = x - step
    if not valid(x):
        raise ValueError(
            f"the target cosines (random {target[0]}, sibling {target[1]}, same class "
            f"{target[2]}) cannot be met with {cfg.classes} classes in {len(lay.super_dir)} "
            "superclasses (an energy share comes out non-positive); move the targets apart, "
            "lower target_cosine_same_class or use more classes")
    return x


def _realistic_embeddings(cfg: RealisticConfig, lay: _Layout, shares: np.ndarray) -> np.ndarray:
    """Rows ``a g + (b s_S + c u + noise_latent) @ proj + noise_iso``, normalised, in blocks."""
    a, b, c = np.sqrt(shares)
    e2 = 1.0 - shares.sum()
    iso = cfg.isotropic_noise_share
    proj = lay.proj.astype(np.float32)
    common = (a * lay.common).astype(np.float32)
    super_dir = (b * lay.super_dir).astype(np.float32)
    part = lay.class_part.astype(np.float32)
    sd = lay.latent_sd.astype(np.float32)
    emb = np.empty((cfg.n, cfg.d), dtype=np.float32)
    for k, lo in enumerate(range(0, cfg.n, _BLOCK)):
        hi = min(lo + _BLOCK, cfg.n)
        rng = np.random.default_rng([cfg.seed, 11, k])
        t = lay.true_class[lo:hi]
        u = part[t, lay.mode[lo:hi]]
        lean = np.flatnonzero(lay.lean_weight[lo:hi] > 0)
        if len(lean):
            w = lay.lean_weight[lo:hi][lean, None].astype(np.float32)
            other = part[lay.lean_to[lo:hi][lean], lay.lean_mode[lo:hi][lean]]
            u[lean] = ((1 - w) * u[lean] + w * other) / np.sqrt((1 - w) ** 2 + w ** 2)
        e = np.sqrt(e2 * lay.noise_scale[t]).astype(np.float32)[:, None]
        z = rng.standard_normal(u.shape, dtype=np.float32)
        z *= sd
        z *= e * np.float32(np.sqrt(1 - iso))
        z += super_dir[lay.superclass[t]]
        z += np.float32(c) * u
        x = z @ proj
        x += common
        noise = rng.standard_normal(x.shape, dtype=np.float32)
        noise *= e * np.float32(np.sqrt(iso / cfg.d))
        x += noise
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        emb[lo:hi] = x
    return emb


def _prototypes(lay: _Layout, shares: np.ndarray) -> np.ndarray:
    """Unit class means: what the simulated model compares a row with."""
    a, b, c = np.sqrt(shares)
    mean = (b * lay.super_dir[lay.superclass]
            + c * np.einsum("cm,cmr->cr", lay.mode_weights, lay.class_part))
    return _unit(a * lay.common + mean @ lay.proj).astype(np.float32)


def _allocate(total: int, weights: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """Integers summing to ``total``, proportional to ``weights``, each between 0 and its cap."""
    weights = np.asarray(weights, dtype=np.float64)
    caps = np.asarray(caps, dtype=np.int64)
    if total > caps.sum():
        raise ValueError(f"cannot place {total} rows: room for {int(caps.sum())}; lower the rate")
    raw = np.zeros(len(caps))
    free = caps > 0
    while free.any():  # proportional shares; a share over its cap is fixed at the cap
        w = np.where(free, weights, 0.0)
        w = w if w.sum() > 0 else free.astype(np.float64)
        raw[free] = (total - raw[~free].sum()) * w[free] / w.sum()
        over = free & (raw > caps)
        if not over.any():
            break
        raw[over] = caps[over]
        free &= ~over
    out = np.minimum(np.floor(raw + 1e-9).astype(np.int64), caps)
    order = np.argsort(-(raw - out), kind="stable")
    while out.sum() < total:
        for i in order:
            if out.sum() < total and out[i] < caps[i]:
                out[i] += 1
    return out


def _realistic_flips(cfg: RealisticConfig, total: int, lay: _Layout, free: np.ndarray,
                     true_class: np.ndarray, targets: np.ndarray, rng: np.random.Generator):
    """Rows to flip, their given labels and whether each went to a sibling.

    Per-class flip counts follow ``free size * lognormal(0, flip_rate_spread)``;
    ``sibling_flip_share`` of them go to a sibling class, taking the free rows that lean most
    towards a sibling first (and labelling them with that sibling); the rest are rows in a random
    order of the class, labelled with a random class of another superclass."""
    C = cfg.classes
    avail = np.bincount(true_class[free], minlength=C)
    factor = rng.lognormal(0.0, cfg.flip_rate_spread, size=C)
    per_class = _allocate(total, avail * factor, avail // 2)
    can_sib = np.array([len(s) > 0 for s in lay.siblings])
    others = [np.setdiff1d(targets, np.flatnonzero(lay.superclass == lay.superclass[c]))
              for c in range(C)]
    can_other = np.array([len(o) > 0 for o in others])
    low = np.where(can_other, 0, per_class)           # no other superclass: all to siblings
    high = np.where(can_sib, per_class, low)
    n_sib = int(np.clip(round(cfg.sibling_flip_share * total), low.sum(), high.sum()))
    per_sib = low + _allocate(n_sib - low.sum(), per_class, high - low)

    rows = rng.permutation(np.flatnonzero(free))
    by_lean = rows[np.lexsort((-lay.lean_weight[rows], true_class[rows]))]
    rank = _rank_in_class(true_class[by_lean], C)
    sib_rows = by_lean[rank < per_sib[true_class[by_lean]]]
    rest = rows[~np.isin(rows, sib_rows)]  # in the random order
    rest = rest[np.argsort(true_class[rest], kind="stable")]
    rank = _rank_in_class(true_class[rest], C)
    other_rows = rest[rank < (per_class - per_sib)[true_class[rest]]]

    given_sib = lay.lean_to[sib_rows].copy()
    for i in np.flatnonzero(given_sib < 0):  # not leaning (the class ran out of leaning rows)
        sib = lay.siblings[true_class[sib_rows[i]]]
        given_sib[i] = sib[rng.integers(len(sib))]
    given_other = np.array([others[c][rng.integers(len(others[c]))]
                            for c in true_class[other_rows]], dtype=np.int64)
    flips = np.concatenate([sib_rows, other_rows])
    given = np.concatenate([given_sib, given_other]).astype(np.int64)
    to_sibling = np.concatenate([np.ones(len(sib_rows), bool), np.zeros(len(other_rows), bool)])
    return flips, given, to_sibling


def _rank_in_class(classes_sorted: np.ndarray, C: int) -> np.ndarray:
    """Position of each entry within its run of equal (sorted) classes."""
    start = np.concatenate([[0], np.cumsum(np.bincount(classes_sorted, minlength=C))[:-1]])
    return np.arange(len(classes_sorted)) - start[classes_sorted]


def _measure_cosines(emb, true_class, superclass, exclude, seed, sample=3000) -> dict:
    """Mean cosines between distinct rows of a random sample (outliers, off-topic and invalid
    rows left out), by pair kind (true classes)."""
    rng = np.random.default_rng([seed, 14])
    ok = np.flatnonzero(~exclude)
    rows = np.sort(rng.choice(ok, size=min(sample, len(ok)), replace=False))
    x = emb[rows].astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    t = true_class[rows]
    upper = np.triu(np.ones(sim.shape, dtype=bool), k=1)
    same = (t[:, None] == t[None, :]) & upper
    same_s = (superclass[t][:, None] == superclass[t][None, :]) & upper
    kinds = {"random": upper, "same_class": same, "sibling": same_s & ~same,
             "other_superclass": upper & ~same_s}
    out = {k: round(float(sim[m].mean()), 4) if m.any() else None for k, m in kinds.items()}
    return {**out, "sample_rows": int(len(rows))}


def _generate_realistic(cfg: RealisticConfig) -> Synthetic:
    cfg.validate()
    counts = cfg.planted_counts()
    lay = _realistic_layout(cfg, np.random.default_rng([cfg.seed, 10]))
    shares = _solve_shares(cfg, lay)
    emb = _realistic_embeddings(cfg, lay, shares)
    true_class, split, rare = lay.true_class.copy(), lay.split.copy(), lay.rare
    labels = true_class.copy()
    lean_weight, lean_to = lay.lean_weight.copy(), lay.lean_to.copy()

    prng = np.random.default_rng([cfg.seed, 12])
    pick = _Picker(cfg.n, prng)
    pairs, leak = _pick_pairs(counts, pick, split)
    outliers = pick.take(counts["outlier"], what="outliers")
    junk = pick.take(counts["off_topic"], what="off-topic rows")
    invalid = pick.take(counts["invalid"], what="invalid rows")
    targets = np.setdiff1d(np.arange(cfg.classes), rare)
    cos = _plant_pairs(cfg, pairs, leak, emb, labels, true_class, split, targets, prng)
    for src, dst in [*pairs.values(), leak]:  # a copy carries its source's mixture
        lean_weight[dst], lean_to[dst] = lean_weight[src], lean_to[src]
    for rows in (outliers, junk, invalid):
        lean_weight[rows], lean_to[rows] = 0.0, -1
    flips, given, to_sibling = _realistic_flips(cfg, counts["label_error"], lay, ~pick.used,
                                                true_class, targets, prng)
    labels[flips] = given

    emb[outliers] = _unit(prng.standard_normal((len(outliers), cfg.d))).astype(np.float32)
    k = min(cfg.off_topic_clusters, max(1, len(junk)))
    rho = cfg.off_topic_common
    centres = _unit(np.sqrt(rho) * lay.common
                    + np.sqrt(1 - rho) * _unit(prng.standard_normal((k, cfg.d))))
    clusters = np.array_split(junk, k)
    for centre, rows in zip(centres, clusters):
        emb[rows] = near_copy(np.repeat(centre[None], len(rows), axis=0),
                              np.full(len(rows), np.sqrt(cfg.off_topic_cosine)), prng)
    labels[junk] = targets[prng.integers(0, len(targets), size=len(junk))]
    half = len(invalid) // 2
    emb[invalid[:half]] = np.nan
    emb[invalid[half:]] = 0.0

    prototypes = _prototypes(lay, shares)
    probs = _pred_probs(cfg, emb, prototypes) if cfg.pred_probs else None
    truth = _truth(cfg, counts, pairs, leak, cos, flips, outliers, invalid, labels, true_class,
                   split, rare)
    truth["label_error"]["to_sibling"] = to_sibling[np.argsort(flips)].tolist()
    truth["label_error"]["ignore_rows"] = np.sort(np.concatenate(  # random labels on junk
        [np.asarray(truth["label_error"]["ignore_rows"], dtype=np.int64), junk])).tolist()
    truth["outlier"]["ignore_rows"] = np.sort(np.concatenate([invalid, junk])).tolist()
    meta = truth.pop("meta")
    truth["off_topic"] = {
        "rows": np.sort(junk).tolist(),
        "clusters": [np.sort(c).tolist() for c in clusters if len(c)],
        "ignore_rows": np.sort(np.concatenate([invalid, outliers])).tolist(),
    }
    exclude = np.zeros(cfg.n, dtype=bool)
    exclude[np.concatenate([outliers, junk, invalid])] = True
    measured = _measure_cosines(emb, true_class, lay.superclass, exclude, cfg.seed)
    sizes = np.bincount(true_class, minlength=cfg.classes)
    common_sizes = np.delete(sizes, rare)
    free_class = np.bincount(true_class[~pick.used], minlength=cfg.classes)
    flipped = np.bincount(true_class[flips], minlength=cfg.classes)
    meta["generator"] = "realistic"
    meta["realistic"] = {
        "superclass_of_class": lay.superclass.tolist(),
        "modes_per_class": lay.modes.tolist(),
        "latent_rank": int(lay.proj.shape[0]),
        "energy_shares": {"common": round(float(shares[0]), 4),
                          "superclass": round(float(shares[1]), 4),
                          "class": round(float(shares[2]), 4),
                          "noise": round(float(1 - shares.sum()), 4)},
        "target_cosines": {"random": cfg.target_cosine_random,
                           "sibling": cfg.target_cosine_sibling,
                           "same_class": cfg.target_cosine_same_class},
        "measured_cosines": measured,
        "class_size_ratio": round(float(common_sizes.max() / common_sizes.min()), 3),
        "label_noise": {
            "rate": round(len(flips) / cfg.n, 5),
            "sibling_share": round(float(to_sibling.mean()) if len(flips) else 0.0, 4),
            "per_class_rate": np.round(flipped / np.maximum(free_class, 1), 4).tolist(),
        },
        "leaning": {  # rows mixed with a sibling (their true class keeps the larger weight)
            "rows": np.flatnonzero(lean_weight > 0).tolist(),
            "towards": lean_to[lean_weight > 0].tolist(),
            "weights": np.round(lean_weight[lean_weight > 0], 4).tolist(),
        },
    }
    if probs is not None:
        clean = ~exclude
        pred = probs.argmax(axis=1)[clean]
        wrong = pred != true_class[clean]
        sib_wrong = lay.superclass[pred[wrong]] == lay.superclass[true_class[clean][wrong]]
        meta["realistic"]["pred_accuracy"] = round(float(1 - wrong.mean()), 4)
        meta["realistic"]["pred_sibling_error_share"] = round(
            float(sib_wrong.mean()) if wrong.any() else 0.0, 4)
    truth["meta"] = meta
    return Synthetic(arrays=_arrays(cfg.n, emb, labels, split, probs), truth=truth)


def write(synthetic: Synthetic, out_dir: str | Path, fmt: str = "npz") -> Path:
    """Write the store and ``truth.json`` into ``out_dir``; return the store path."""
    path = write_store(synthetic.arrays, out_dir, fmt)
    atomic_write_json(Path(out_dir) / TRUTH_FILE, synthetic.truth)
    return path


def _parse_counts(items: list[str]) -> dict[str, int]:
    out = {}
    for item in items:
        kind, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise SystemExit(f"--count expects TYPE=INTEGER (e.g. outlier=50), got {item!r}")
        out[kind.strip()] = int(value)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.generate", description=__doc__.split("\n")[0])
    default, real = GenerateConfig(), RealisticConfig()
    p.add_argument("--n", type=int, default=default.n)
    p.add_argument("--d", type=int, default=default.d)
    p.add_argument("--classes", type=int, default=default.classes)
    p.add_argument("--seed", type=int, default=default.seed)
    p.add_argument("--format", choices=FORMATS, default="npz")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--realistic", action="store_true",
                   help="realistic mode: superclasses of sibling classes, sub-clusters, mixed "
                        "rows, Zipf class sizes, sibling label noise, off-topic junk "
                        "(RealisticConfig)")
    for f in _REALISTIC_RATE_FIELDS:
        if f in _RATE_FIELDS:
            what = f"default {getattr(default, f)} ({getattr(real, f)} with --realistic)"
        else:
            what = f"default {getattr(real, f)}; --realistic only"
        p.add_argument("--" + f.replace("_", "-"), type=float, default=None, help=what)
    p.add_argument("--count", action="append", default=[], metavar="TYPE=N",
                   help="absolute planted count for one issue type (pairs for pair types); "
                        "overrides its rate; repeatable")
    p.add_argument("--rare-classes", type=int, default=None,
                   help=f"default {default.rare_classes} ({real.rare_classes} with --realistic)")
    p.add_argument("--rare-class-ratio", type=float, default=default.rare_class_ratio)
    p.add_argument("--no-pred-probs", action="store_true", help="leave pred_probs out")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    kind = RealisticConfig if args.realistic else GenerateConfig
    given = {f: getattr(args, f) for f in _REALISTIC_RATE_FIELDS if getattr(args, f) is not None}
    if args.rare_classes is not None:
        given["rare_classes"] = args.rare_classes
    if not args.realistic and "off_topic_rate" in given:
        print("error: --off-topic-rate needs --realistic", file=sys.stderr)
        return 2
    cfg = kind(n=args.n, d=args.d, classes=args.classes, seed=args.seed,
               counts=_parse_counts(args.count), rare_class_ratio=args.rare_class_ratio,
               pred_probs=not args.no_pred_probs, **given)
    t0 = time.perf_counter()
    try:
        synthetic = generate(cfg)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    t1 = time.perf_counter()
    path = write(synthetic, args.out, args.format)
    t2 = time.perf_counter()
    counts = {k: len(v["rows"]) for k, v in synthetic.truth.items() if k != "meta"}
    print(f"wrote {path} ({cfg.n} x {cfg.d}, {cfg.classes} classes) in {t1 - t0:.1f} s "
          f"+ {t2 - t1:.1f} s to write; truth rows: {counts}")
    real = synthetic.truth["meta"].get("realistic")
    if real is not None:
        noise = real["label_noise"]
        print(f"realistic: mean cosines {real['measured_cosines']} (targets "
              f"{real['target_cosines']}); largest / smallest class {real['class_size_ratio']}; "
              f"label noise {noise['rate']:.3f}, {noise['sibling_share']:.0%} to siblings; "
              f"pred_probs accuracy {real.get('pred_accuracy')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
