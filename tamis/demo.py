"""The bundled demo: scikit-learn's handwritten digits with planted problems.

The 1,797 8x8 digit images ship inside scikit-learn (no download). A centred RBF kernel
feature map of their pixels (scikit-learn's Nystroem, 256 features, fixed seed) stands in for
an embedding model: raw pixel vectors are all alike under cosine similarity (every image is
non-negative), while in the kernel space a copy with pixel noise stays above 0.999, junk
images (noise, bars, checkerboards) sit far from every digit, and a 10-nearest-neighbour vote
recovers the label of 98 % of the digits. Some distinct 8x8 digits are genuine look-alikes
above 0.95: the scan shows them too. :func:`make_demo_store` plants, deterministically, every kind of
problem tamis looks for, so the first scan shows each check at work, and returns the
truth beside the store so tests can hold the checks to it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: the class made rare on purpose (kept rows)
RARE_CLASS, RARE_KEEP = 7, 12
EMBED_DIM = 256
#: half of this class's rows carry the label TWIN_CLASS: two classes the data cannot tell apart
SPLIT_CLASS, TWIN_CLASS = 1, 10
#: this class's images are drawn white on black: a class whose images are dark (a shortcut)
DARK_CLASS = 4
#: the truth entries that list rows (or pairs of rows); the others name classes or columns
ROW_TRUTH = ("exact_duplicate", "near_duplicate", "conflicting_labels", "leakage", "label_error", "outlier", "invalid")


def make_demo_store(seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, list]]:
    """Columns (``embeddings``, ``labels``, ``image_paths``, ``split``, ``ids``, and the metadata
    columns ``scanner``, ``ink_ml``, ``writer_age``, ``checked_label``) and the planted truth."""
    columns, truth, _ = _build(seed)
    return columns, truth


def _build(seed: int) -> tuple[dict[str, np.ndarray], dict[str, list], np.ndarray]:
    """The demo store, its truth, and the 8x8 pixels (0..1) behind every row."""
    from sklearn.datasets import load_digits
    from sklearn.kernel_approximation import Nystroem

    rng = np.random.default_rng(seed)
    digits = load_digits()
    emb = digits.data.astype(np.float32) / 16.0
    kernel = Nystroem(kernel="rbf", gamma=0.05, n_components=EMBED_DIM, random_state=0).fit(emb)
    centre = kernel.transform(emb).mean(axis=0)
    labels = digits.target.astype(np.int64)

    # a rare class: keep only a few sevens
    sevens = np.flatnonzero(labels == RARE_CLASS)
    keep = np.ones(len(labels), dtype=bool)
    keep[sevens[RARE_KEEP:]] = False
    emb, labels = emb[keep], labels[keep]
    n = len(labels)
    split = np.where(rng.random(n) < 0.8, "train", "test").astype("<U5")

    truth: dict[str, list] = {k: [] for k in ("exact_duplicate", "near_duplicate", "conflicting_labels",
                                              "leakage", "label_error", "outlier", "invalid")}
    rows_e, rows_l, rows_s = [emb], [labels], [split]
    used = set()

    def pick(count: int, where: np.ndarray) -> np.ndarray:
        pool = np.setdiff1d(np.flatnonzero(where), np.fromiter(used, dtype=np.int64, count=len(used)))
        chosen = rng.choice(pool, size=count, replace=False)
        used.update(chosen.tolist())
        return np.sort(chosen)

    next_row = n

    def add(e: np.ndarray, lab: np.ndarray, spl: np.ndarray) -> np.ndarray:
        nonlocal next_row
        rows_e.append(e.astype(np.float32))
        rows_l.append(lab.astype(np.int64))
        rows_s.append(spl.astype("<U5"))
        new = np.arange(next_row, next_row + len(e))
        next_row += len(e)
        return new

    train = split == "train"
    src = pick(6, train)                                   # exact copies
    for a, b in zip(src, add(emb[src], labels[src], split[src])):
        truth["exact_duplicate"].append([int(a), int(b)])
    src = pick(6, train)                                   # near copies: a little pixel noise
    noisy = emb[src] + rng.normal(0, 0.01, emb[src].shape)
    for a, b in zip(src, add(np.clip(noisy, 0, 1), labels[src], split[src])):
        truth["near_duplicate"].append([int(a), int(b)])
    src = pick(4, train)                                   # near copies that carry another label
    other = (labels[src] + 1 + rng.integers(0, 8, len(src))) % 10
    noisy = emb[src] + rng.normal(0, 0.01, emb[src].shape)
    for a, b in zip(src, add(np.clip(noisy, 0, 1), other, split[src])):
        truth["conflicting_labels"].append([int(a), int(b)])
    src = pick(5, train)                                   # train images copied into the test split
    noisy = emb[src] + rng.normal(0, 0.01, emb[src].shape)
    for a, b in zip(src, add(np.clip(noisy, 0, 1), labels[src], np.full(len(src), "test"))):
        truth["leakage"].append([int(a), int(b)])
    junk = np.stack([(rng.random(64) > 0.5).astype(np.float32),   # scraped junk: noise, bars, checkerboard
                     (rng.random(64) > 0.5).astype(np.float32),
                     np.tile(np.repeat([1.0, 0.0], 8), 4).astype(np.float32),
                     (np.indices((8, 8)).sum(axis=0).ravel() % 2).astype(np.float32)])
    truth["outlier"] = add(junk, rng.integers(0, 10, 4), np.full(4, "train")).tolist()
    broken = np.zeros((3, emb.shape[1]), dtype=np.float32)    # failed embedding jobs
    truth["invalid"] = add(broken, np.array([1, 2, 3]), np.full(3, "train")).tolist()

    pixels = np.concatenate(rows_e)
    emb = (kernel.transform(pixels) - centre).astype(np.float32)
    # an exact copy is the same embedding bits: copy the rows after the transform, since one
    # batched matmul may round the same input row differently at two positions (BLAS kernels)
    pairs = np.asarray(truth["exact_duplicate"], dtype=np.int64)
    emb[pairs[:, 1]] = emb[pairs[:, 0]]
    emb[truth["invalid"]] = 0.0
    emb[truth["invalid"][0], 5] = np.nan
    emb[truth["invalid"][1], :] = np.inf
    labels = np.concatenate(rows_l)
    split = np.concatenate(rows_s)
    flips = pick(15, (np.arange(len(labels)) < n) & (labels != RARE_CLASS))  # label noise
    labels = labels.copy()
    labels[flips] = (labels[flips] + 1 + rng.integers(0, 9, len(flips))) % 10
    labels[flips] = np.where(labels[flips] == RARE_CLASS, (RARE_CLASS + 1) % 10, labels[flips])
    truth["label_error"] = flips.tolist()
    truth["rare_class"] = [RARE_CLASS]
    # two names for one class: half the ones (never a planted row) are labelled TWIN_CLASS at random
    ones = np.setdiff1d(np.flatnonzero(labels == SPLIT_CLASS), np.fromiter(used, dtype=np.int64, count=len(used)))
    twins = np.sort(rng.choice(ones, size=len(ones) // 2, replace=False))
    labels[twins] = TWIN_CLASS
    truth["class_overlap"] = [SPLIT_CLASS, TWIN_CLASS]
    truth["dark_class"] = [DARK_CLASS]

    paths = np.array([f"digits/{i:05d}.png" for i in range(len(labels))])
    ids = np.array([f"digit-{i:05d}" for i in range(len(labels))])
    columns = {"embeddings": emb, "labels": labels, "image_paths": paths, "split": split, "ids": ids}
    columns.update(_metadata(rng, pixels, labels, truth))
    return columns, truth, pixels


def _metadata(rng: np.random.Generator, pixels: np.ndarray, labels: np.ndarray, truth: dict) -> dict[str, np.ndarray]:
    """The store's other columns, each with one planted problem for the ``metadata`` check:
    ``scanner`` (three scanners; some rows spell theirs differently), ``ink_ml`` (strictly
    positive; some rows hold 0 for "not measured"), ``writer_age`` (-1 and 999 stand for
    "unknown"), ``checked_label`` (a reviewer's label, recorded after the label: a leak)."""
    m = len(labels)
    scanners = np.array(["Scanner A", "Scanner B", "Scanner C"])
    scanner = scanners[rng.integers(0, 3, m)].astype("<U12")
    variants = {"Scanner A": ["scanner a", "SCANNER A", "Scanner-A "], "Scanner B": ["scanner b", "Scanner  B"],
                "Scanner C": ["SCANNER C", "scanner-c"]}
    odd = np.sort(rng.choice(m, size=24, replace=False))
    for r in odd:
        scanner[r] = rng.choice(variants[str(scanner[r])])
    ink = np.nan_to_num(pixels).clip(0, 1).sum(axis=1)
    ink_ml = (0.05 + 0.004 * ink + rng.gamma(4.0, 0.01, m)).round(3)
    zeros = np.sort(rng.choice(m, size=30, replace=False))
    ink_ml[zeros] = 0.0
    age = rng.integers(18, 80, m)
    unknown = np.sort(rng.choice(m, size=20, replace=False))
    age[unknown[:12]] = -1
    age[unknown[12:]] = 999
    checked = labels.copy()
    wrong = rng.random(m) < 0.03
    checked[wrong] = rng.integers(0, labels.max() + 1, int(wrong.sum()))
    truth["metadata"] = {"inconsistent_category": odd.tolist(), "disguised_missing": sorted(zeros.tolist() +
                         unknown.tolist()), "leaky_predictor": ["checked_label"]}
    return {"scanner": scanner, "ink_ml": ink_ml, "writer_age": age, "checked_label": checked}


def make_demo_references(columns: dict[str, np.ndarray], truth: dict[str, list], per_class: int = 5,
                         seed: int = 1) -> dict[str, np.ndarray]:
    """A few trusted examples per class (clean rows of the store), for the off_topic check."""
    rng = np.random.default_rng(seed)
    planted = {int(r) for key, value in truth.items() if key in ROW_TRUTH
               for item in value for r in (item if isinstance(item, list) else [item])}
    labels = columns["labels"]
    clean = np.array([r for r in range(len(labels)) if r not in planted and np.isfinite(columns["embeddings"][r]).all()])
    rows = np.concatenate([rng.choice(clean[labels[clean] == c], size=min(per_class, int((labels[clean] == c).sum())),
                                      replace=False) for c in np.unique(labels[clean])])
    return {"embeddings": columns["embeddings"][rows], "labels": labels[rows]}


def write_demo_store(folder) -> tuple[Path, Path, dict[str, list]]:
    """Write ``demo-store.npz``, ``demo-references.npz`` and the images (``digits/*.png``)
    into ``folder`` (atomically); the store's paths are relative to ``folder``.

    Returns the two paths and the planted truth.
    """
    from .io.atomic import atomic_path

    folder = Path(folder)
    columns, truth, pixels = _build(0)
    _write_images(folder, columns["image_paths"], pixels, dark=columns["labels"] == DARK_CLASS)
    written = []
    for name, arrays in (("demo-store.npz", columns), ("demo-references.npz", make_demo_references(columns, truth))):
        with atomic_path(folder / name) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **arrays)
        written.append(folder / name)
    return written[0], written[1], truth


def _write_images(folder: Path, paths: np.ndarray, pixels: np.ndarray, dark: np.ndarray, scale: int = 8) -> None:
    """Each row's 8x8 digit as a (8 * scale)-pixel grey PNG, dark ink on white (``dark`` rows: grey
    ink on black, a dark image)."""
    from PIL import Image

    from .io.atomic import atomic_path

    ink = np.clip(np.nan_to_num(pixels), 0.0, 1.0)
    grey = np.where(dark[:, None], 160 * ink, 255 * (1.0 - ink)).astype(np.uint8).reshape(-1, 8, 8)
    for path, image in zip(paths, grey):
        target = folder / str(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        big = np.kron(image, np.ones((scale, scale), dtype=np.uint8))
        with atomic_path(target) as tmp:
            Image.fromarray(big, mode="L").save(tmp, format="PNG")
