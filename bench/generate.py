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

CLI::

    python -m bench.generate --n 100000 --d 512 --classes 100 --seed 0 --format npz --out DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

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

    def planted_counts(self) -> dict[str, int]:
        """Number of planted pairs (pair types) or rows (row types) per issue type."""
        out = {kind: int(round(getattr(self, f) * self.n)) for f, kind in _RATE_FIELDS.items()}
        out.update({k: int(v) for k, v in self.counts.items()})
        return out

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad setting and how to fix it."""
        if self.d < 2 or self.classes < 2:
            raise ValueError(f"need d >= 2 and classes >= 2, got d={self.d}, classes={self.classes}")
        if self.n < 10 * self.classes:
            raise ValueError(f"n={self.n} is too small for {self.classes} classes; "
                             f"use n >= {10 * self.classes} or fewer classes")
        unknown = set(self.counts) - set(_RATE_FIELDS.values())
        if unknown:
            raise ValueError(f"unknown issue types in counts: {sorted(unknown)}; "
                             f"known: {sorted(_RATE_FIELDS.values())}")
        counts = self.planted_counts()
        if any(v < 0 for v in counts.values()):
            raise ValueError(f"planted counts must be >= 0, got {counts}")
        used = sum(2 * counts[k] for k in PAIR_TYPES) + sum(counts[k] for k in ROW_TYPES)
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


def generate(cfg: GenerateConfig) -> Synthetic:
    """Generate the arrays of a store and its truth for ``cfg`` (see the module docstring)."""
    cfg.validate()
    counts = cfg.planted_counts()
    rng = np.random.default_rng([cfg.seed, 0])
    centroids, spreads, true_class, split, rare = _layout(cfg, rng)
    emb = _base_embeddings(cfg, centroids, spreads, true_class)
    labels = true_class.copy()

    prng = np.random.default_rng([cfg.seed, 2])
    pick = _Picker(cfg.n, prng)
    leak_src = pick.take(counts["leakage"], split == 0, "leak sources (train rows)")
    leak_dst = pick.take(counts["leakage"], split == 2, "leak copies (test rows)")
    pairs = {}
    for kind in ("exact_duplicate", "near_duplicate", "conflicting_labels"):
        src = pick.take(counts[kind], what=f"{kind} sources")
        pairs[kind] = (src, pick.take(counts[kind], what=f"{kind} copies"))
    flips = pick.take(counts["label_error"], what="label errors")
    outliers = pick.take(counts["outlier"], what="outliers")
    invalid = pick.take(counts["invalid"], what="invalid rows")

    cos = {}
    for kind, (src, dst) in [*pairs.items(), ("leakage", (leak_src, leak_dst))]:
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
    targets = np.setdiff1d(np.arange(cfg.classes), rare)  # keep rare classes rare
    labels[cdst] = _other_class(labels[csrc], targets, prng)
    labels[flips] = _other_class(true_class[flips], targets, prng)
    emb[outliers] = _unit(prng.standard_normal((len(outliers), cfg.d))).astype(np.float32)
    half = len(invalid) // 2
    emb[invalid[:half]] = np.nan
    emb[invalid[half:]] = 0.0

    probs = _pred_probs(cfg, emb, centroids) if cfg.pred_probs else None
    truth = _truth(cfg, counts, pairs, (leak_src, leak_dst), cos, flips, outliers, invalid,
                   labels, true_class, split, rare)
    width = max(6, len(str(cfg.n - 1)))
    arrays = {
        "embeddings": emb,
        "labels": labels.astype(np.int64),
        "image_paths": np.array([f"img/{i:0{width}d}.jpg" for i in range(cfg.n)]),
        "split": np.asarray(SPLITS)[split],
        "ids": np.arange(cfg.n, dtype=np.int64),
    }
    if probs is not None:
        arrays["pred_probs"] = probs
    return Synthetic(arrays=arrays, truth=truth)


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
    default = GenerateConfig()
    p.add_argument("--n", type=int, default=default.n)
    p.add_argument("--d", type=int, default=default.d)
    p.add_argument("--classes", type=int, default=default.classes)
    p.add_argument("--seed", type=int, default=default.seed)
    p.add_argument("--format", choices=FORMATS, default="npz")
    p.add_argument("--out", required=True, help="output folder (created)")
    for f in _RATE_FIELDS:
        p.add_argument("--" + f.replace("_", "-"), type=float, default=getattr(default, f))
    p.add_argument("--count", action="append", default=[], metavar="TYPE=N",
                   help="absolute planted count for one issue type (pairs for pair types); "
                        "overrides its rate; repeatable")
    p.add_argument("--rare-classes", type=int, default=default.rare_classes)
    p.add_argument("--rare-class-ratio", type=float, default=default.rare_class_ratio)
    p.add_argument("--no-pred-probs", action="store_true", help="leave pred_probs out")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = GenerateConfig(n=args.n, d=args.d, classes=args.classes, seed=args.seed,
                         counts=_parse_counts(args.count), rare_classes=args.rare_classes,
                         rare_class_ratio=args.rare_class_ratio, pred_probs=not args.no_pred_probs,
                         **{f: getattr(args, f) for f in _RATE_FIELDS})
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
