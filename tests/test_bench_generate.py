"""Tests of the benchmark generator (bench/generate.py) and the runner's scoring (bench/scoring.py).

Small data only; the runner's subprocess path is exercised by `python -m bench.run`, not here.
"""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

# bench/ is a top-level folder of the repository, not part of the installed package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.generate import GenerateConfig, RealisticConfig, generate, write  # noqa: E402
from bench.generate import _realistic_layout  # noqa: E402
from bench.generate import main as generate_main
from bench.run import markdown, result_rows  # noqa: E402
from bench.scoring import (  # noqa: E402
    classify_pairs,
    score_found_pairs,
    score_pairs,
    score_rows,
    score_samples,
)
from bench.store import load_store, load_truth  # noqa: E402

PAIR_TYPES = ("exact_duplicate", "near_duplicate", "conflicting_labels", "leakage")


@pytest.fixture(scope="module")
def small():
    cfg = GenerateConfig(n=3000, d=128, classes=10, seed=7, counts={"invalid": 4})
    return cfg, generate(cfg)


def _cos(emb, pairs):
    a, b = emb[pairs[:, 0]].astype(np.float64), emb[pairs[:, 1]].astype(np.float64)
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _same_for_a_seed_only(cfg, first, other_seed: int) -> None:
    """The config again gives the same arrays and truth; another seed other embeddings."""
    again = generate(type(cfg)(**{**cfg.__dict__}))
    for key, value in first.arrays.items():
        np.testing.assert_array_equal(value, again.arrays[key], err_msg=key)
    assert json.dumps(first.truth) == json.dumps(again.truth)
    other = generate(type(cfg)(**{**cfg.__dict__, "seed": other_seed}))
    assert not np.array_equal(np.nan_to_num(first.arrays["embeddings"]),
                              np.nan_to_num(other.arrays["embeddings"]))


def test_deterministic_for_a_seed(small):
    cfg, first = small
    _same_for_a_seed_only(cfg, first, 8)


def test_arrays_have_plain_dtypes_and_shapes(small):
    cfg, s = small
    a = s.arrays
    assert a["embeddings"].shape == (cfg.n, cfg.d) and a["embeddings"].dtype == np.float32
    assert a["pred_probs"].shape == (cfg.n, cfg.classes) and a["pred_probs"].dtype == np.float32
    assert a["labels"].dtype == np.int64 and a["ids"].dtype == np.int64
    assert a["image_paths"].dtype.kind == "U" and a["split"].dtype.kind == "U"
    assert a["image_paths"][123] == "img/000123.jpg"
    assert set(np.unique(a["split"])) == {"train", "val", "test"}
    assert len(np.unique(a["ids"])) == cfg.n


def test_planted_pairs_have_the_stated_similarity_labels_and_splits(small):
    _, s = small
    emb, labels, split, t = s.arrays["embeddings"], s.arrays["labels"], s.arrays["split"], s.truth
    ex = np.array(t["exact_duplicate"]["pairs"])
    assert len(ex) and (emb[ex[:, 0]] == emb[ex[:, 1]]).all()
    assert (labels[ex[:, 0]] == labels[ex[:, 1]]).all() and (split[ex[:, 0]] == split[ex[:, 1]]).all()

    conf = np.array(t["conflicting_labels"]["pairs"])
    near = np.array(t["near_duplicate"]["pairs"])
    assert {tuple(p) for p in conf} <= {tuple(p) for p in near}
    for pairs in (near, conf):
        cos = _cos(emb, pairs)
        assert (cos >= 0.97).all() and (cos < 0.9999).all()
        np.testing.assert_allclose(cos, t["near_duplicate" if pairs is near else
                                           "conflicting_labels"]["cosines"], atol=1e-5)
        assert (split[pairs[:, 0]] == split[pairs[:, 1]]).all()
        assert not (emb[pairs[:, 0]] == emb[pairs[:, 1]]).all(axis=1).any()
    assert (labels[conf[:, 0]] != labels[conf[:, 1]]).all()
    same_label_near = near[~np.isin(near[:, 1], conf[:, 1])]
    assert (labels[same_label_near[:, 0]] == labels[same_label_near[:, 1]]).all()

    leak = np.array(t["leakage"]["pairs"])
    assert (_cos(emb, leak) >= 0.97).all()
    assert (split[leak[:, 0]] == "train").all() and (split[leak[:, 1]] == "test").all()
    assert (labels[leak[:, 0]] == labels[leak[:, 1]]).all()
    assert sorted(t["leakage"]["excluded_rows"]) == sorted(leak[:, 1].tolist())


def test_only_planted_pairs_are_near_duplicates(small):
    _, s = small
    emb = np.nan_to_num(s.arrays["embeddings"]).astype(np.float64)
    norms = np.linalg.norm(emb, axis=1)
    unit = emb / np.where(norms > 0, norms, 1)[:, None]
    sim = unit @ unit.T
    a, b = np.nonzero(np.triu(sim >= 0.97, k=1))
    found = set(zip(a.tolist(), b.tolist()))
    planted = {tuple(sorted(p)) for k in PAIR_TYPES for p in s.truth[k]["pairs"]}
    assert found == planted


def _rows_in_range_and_disjoint(n: int, t: dict, kinds) -> dict:
    """Every planted row in range, listed once, in one issue type only; pair truth consistent."""
    rows = {k: set(t[k]["rows"]) for k in kinds}
    for k, r in rows.items():
        assert all(0 <= i < n for i in r), k
        assert len(t[k]["rows"]) == len(r), f"{k} has repeated rows"
    names = list(rows)
    for i, x in enumerate(names):
        for y in names[i + 1:]:
            assert not rows[x] & rows[y], (x, y)
    assert set(t["conflicting_labels"]["rows"]) <= rows["near_duplicate"]
    for k in PAIR_TYPES:
        assert set(t[k]["excluded_rows"]) <= set(t[k]["rows"])
        assert not set(t[k]["ignore_rows"]) & set(t[k]["rows"])
    return rows


def test_truth_rows_in_range_and_disjoint(small):
    cfg, s = small
    t = s.truth
    _rows_in_range_and_disjoint(cfg.n, t, ("exact_duplicate", "near_duplicate", "leakage", "label_error",
                                           "outlier", "invalid"))
    counts = t["meta"]["planted_counts"]
    assert len(t["exact_duplicate"]["pairs"]) == counts["exact_duplicate"]
    assert len(t["label_error"]["rows"]) == counts["label_error"] == round(0.03 * cfg.n)
    assert len(t["invalid"]["rows"]) == 4


def test_label_errors_outliers_and_imbalance(small):
    cfg, s = small
    t, labels, emb = s.truth, s.arrays["labels"], s.arrays["embeddings"]
    le = np.array(t["label_error"]["rows"])
    given, true = np.array(t["label_error"]["given_labels"]), np.array(t["label_error"]["true_labels"])
    assert (labels[le] == given).all() and (given != true).all()
    probs = s.arrays["pred_probs"]
    assert np.mean(probs[le].argmax(axis=1) == true) > 0.8  # confident in the true class
    assert np.median(probs[le, given]) < 0.05

    clean = np.setdiff1d(np.arange(cfg.n), np.concatenate([le, t["outlier"]["rows"],
                                                           t["invalid"]["rows"]]))
    unit = emb[clean] / np.linalg.norm(emb[clean], axis=1, keepdims=True)
    out = np.array(t["outlier"]["rows"])
    nn_out = (emb[out] @ unit.T).max(axis=1)
    sim = unit[:500] @ unit.T
    np.fill_diagonal(sim, -1)
    assert np.max(nn_out) < np.median(sim.max(axis=1)) - 0.2
    same = labels[clean[:500]][:, None] == labels[clean][None, :]
    assert 0.45 < np.median(sim[same & (sim > -1)]) < 0.85
    assert np.median(sim[~same]) < 0.4

    rare = t["class_imbalance"]["classes"]
    counts = np.bincount(labels, minlength=cfg.classes)
    assert counts[rare].max() < 0.1 * cfg.n / cfg.classes
    assert sorted(t["class_imbalance"]["rows"]) == np.flatnonzero(np.isin(labels, rare)).tolist()


def test_pred_probs_and_invalid_rows(small):
    _, s = small
    probs = s.arrays["pred_probs"]
    assert (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    inv = np.array(s.truth["invalid"]["rows"])
    emb = s.arrays["embeddings"][inv]
    assert (np.isnan(emb).all(axis=1) | (emb == 0).all(axis=1)).all()
    np.testing.assert_allclose(probs[inv], 1.0 / probs.shape[1], atol=1e-6)


@pytest.mark.parametrize("fmt", ["npz", "parquet"])
def test_both_formats_round_trip(small, tmp_path, fmt):
    _, s = small
    path = write(s, tmp_path, fmt)
    assert path.name == f"store.{fmt}"
    loaded = load_store(tmp_path)
    for key, value in s.arrays.items():
        np.testing.assert_array_equal(loaded[key], value, err_msg=key)
    assert load_truth(tmp_path)["meta"]["n"] == s.truth["meta"]["n"]
    if fmt == "npz":
        with np.load(path) as z:  # no pickle needed
            assert z["image_paths"].dtype.kind == "U"
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pq.read_schema(path)
        assert schema.field("embedding").type == pa.list_(pa.float32(), s.arrays["embeddings"].shape[1])
        assert schema.field("pred_probs").type == pa.list_(pa.float32(), s.arrays["pred_probs"].shape[1])
        assert schema.names == ["embedding", "label", "image_path", "split", "id", "pred_probs"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_cli_writes_store_and_truth(tmp_path, capsys):
    code = generate_main(["--n", "500", "--d", "16", "--classes", "5", "--out", str(tmp_path),
                          "--count", "outlier=3", "--no-pred-probs"])
    assert code == 0
    assert "pred_probs" not in load_store(tmp_path)
    assert len(load_truth(tmp_path)["outlier"]["rows"]) == 3
    assert generate_main(["--n", "20", "--classes", "5", "--out", str(tmp_path)]) == 2
    assert "too small" in capsys.readouterr().err


def test_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="unknown issue types"):
        generate(GenerateConfig(n=1000, classes=5, counts={"dupes": 1}))
    with pytest.raises(ValueError, match="more than half"):
        generate(GenerateConfig(n=1000, classes=5, label_error_rate=0.6))


def _fingerprint(s):
    """sha256 of the integer and string arrays and of truth.json without its float cosines
    (floats are compared with a tolerance below, so a BLAS change does not break the pin)."""
    def strip(obj):
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if k != "cosines"}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    h = hashlib.sha256()
    for key in ("labels", "split", "ids", "image_paths"):
        h.update(np.ascontiguousarray(s.arrays[key]).tobytes())
    h.update(json.dumps(strip(s.truth), sort_keys=True).encode())
    return h.hexdigest()


def test_easy_mode_output_is_pinned(small):
    # values computed with bench/generate.py before the realistic mode was added: the default
    # (easy) output of a seed must not change
    _, s = small
    assert _fingerprint(s) == "d2988874f76b3ae2d31ce564e96553ddfd0b00101943b6358afa87747d1311bc"
    emb, probs = s.arrays["embeddings"], s.arrays["pred_probs"]
    np.testing.assert_allclose(emb[[0, 1500, 2999], [0, 64, 127]],
                               [0.17309652268886566, -0.1807851791381836, 0.04436623305082321],
                               rtol=1e-5)
    assert np.nansum(emb, dtype=np.float64) == pytest.approx(-4306.97449457524, rel=1e-6)
    np.testing.assert_allclose(probs[[0, 1500, 2999], [0, 5, 9]],
                               [1.6766517063615538e-08, 0.0012592736165970564,
                                1.5469330492123845e-06], rtol=1e-3)
    assert s.truth["near_duplicate"]["cosines"][:3] == pytest.approx([0.982787, 0.984567, 0.976941],
                                                                     abs=2e-6)
    assert "generator" not in s.truth["meta"] and "off_topic" not in s.truth


# ---- realistic mode ------------------------------------------------------------------------

ROW_ISSUES = ("exact_duplicate", "near_duplicate", "leakage", "label_error", "outlier", "invalid",
              "off_topic")


@pytest.fixture(scope="module")
def real():
    cfg = RealisticConfig(n=5000, d=64, classes=20, seed=3, counts={"invalid": 4, "off_topic": 150})
    return cfg, generate(cfg)


def _true_classes(s):
    """Each row's generating class, from the truth alone (junk rows have none: -1)."""
    t = s.truth
    true = s.arrays["labels"].copy()
    true[t["label_error"]["rows"]] = t["label_error"]["true_labels"]
    for src, copy in t["conflicting_labels"]["pairs"]:
        true[copy] = true[src]
    true[t["off_topic"]["rows"]] = -1
    return true


def _clean_rows(s):
    """Rows in no planted issue (label errors aside)."""
    t = s.truth
    used = set().union(*(t[k]["rows"] for k in ROW_ISSUES if k != "label_error"))
    return np.setdiff1d(np.arange(len(s.arrays["labels"])), sorted(used))


def test_realistic_deterministic_for_a_seed(real):
    cfg, first = real
    assert type(cfg) is RealisticConfig
    _same_for_a_seed_only(cfg, first, 4)
    # not the easy mode under another name
    easy = generate(GenerateConfig(n=cfg.n, d=cfg.d, classes=cfg.classes, seed=cfg.seed))
    assert not np.array_equal(easy.arrays["labels"], first.arrays["labels"])


def test_realistic_cosine_structure(real):
    cfg, s = real
    t = s.truth
    true = _true_classes(s)
    sup = np.array(t["meta"]["realistic"]["superclass_of_class"])
    assert sup.tolist() == (np.arange(20) // 5).tolist()  # 4 superclasses of 5 siblings
    keep = np.setdiff1d(np.arange(cfg.n), t["outlier"]["rows"] + t["off_topic"]["rows"]
                        + t["invalid"]["rows"])
    rows = np.random.default_rng(0).choice(keep, 2500, replace=False)
    x = s.arrays["embeddings"][rows].astype(np.float64)
    sim = x @ x.T
    c = true[rows]
    upper = np.triu(np.ones_like(sim, dtype=bool), k=1)
    same = (c[:, None] == c[None, :]) & upper
    sibling = (sup[c][:, None] == sup[c][None, :]) & upper & ~same
    measured = {"random": sim[upper].mean(), "sibling": sim[sibling].mean(),
                "same_class": sim[same].mean()}
    print("mean cosines (test sample):", measured)
    assert measured["random"] < measured["sibling"] - 0.15 < measured["same_class"] - 0.2
    assert measured["random"] == pytest.approx(0.44, abs=0.05)
    assert measured["sibling"] == pytest.approx(0.68, abs=0.05)
    assert measured["same_class"] == pytest.approx(0.75, abs=0.05)
    reported = t["meta"]["realistic"]["measured_cosines"]
    for kind, value in measured.items():
        assert reported[kind] == pytest.approx(value, abs=0.02), kind
    # one strong common direction: the mean row is long, and the spectrum is anisotropic
    assert np.linalg.norm(x.mean(axis=0)) > 0.6
    ev = np.linalg.eigvalsh(np.cov((x - x.mean(axis=0)).T))[::-1]
    assert ev[:10].sum() > 0.5 * ev.sum() and ev[cfg.d // 2:].sum() < 0.1 * ev.sum()


def test_realistic_modes_are_sub_clusters(real):
    cfg, s = real
    lay = _realistic_layout(cfg, np.random.default_rng([cfg.seed, 10]))  # the generator's layout
    modes = np.array(s.truth["meta"]["realistic"]["modes_per_class"])
    assert ((modes >= 2) & (modes <= 4)).all() and len(set(modes.tolist())) > 1
    assert modes.tolist() == lay.modes.tolist()
    clean = _clean_rows(s)
    clean = clean[lay.lean_weight[clean] == 0]  # pure rows
    emb = s.arrays["embeddings"]
    accs, gaps = [], []
    for c in np.flatnonzero(np.bincount(lay.true_class[clean], minlength=cfg.classes) >= 60):
        r = clean[lay.true_class[clean] == c]
        m = lay.mode[r]
        if len(np.unique(m)) < 2:
            continue
        x = emb[r]
        centres = np.stack([x[m == j].mean(axis=0) for j in np.unique(m)])
        accs.append(np.mean(np.unique(m)[(x @ centres.T).argmax(axis=1)] == m))
        sim = x @ x.T
        same = m[:, None] == m[None, :]
        np.fill_diagonal(same, False)
        gaps.append(sim[same].mean() - sim[m[:, None] != m[None, :]].mean())
    assert len(accs) >= 5
    assert np.mean(accs) > 0.85 and np.mean(gaps) > 0.02


def test_realistic_class_sizes_are_zipf(real):
    cfg, s = real
    sizes = np.bincount(_true_classes(s)[_true_classes(s) >= 0], minlength=cfg.classes)
    assert 15 < sizes.max() / sizes.min() < 26
    assert sizes.max() > 5 * np.median(sizes)  # a long tail, not a few rare classes
    assert s.truth["meta"]["realistic"]["class_size_ratio"] == pytest.approx(20, rel=0.1)
    assert s.truth["class_imbalance"]["classes"] == []  # no planted rare class by default


def test_realistic_label_noise(real):
    cfg, s = real
    t = s.truth
    le = t["label_error"]
    rows, given, true = (np.array(le[k]) for k in ("rows", "given_labels", "true_labels"))
    assert len(rows) == round(0.05 * cfg.n)
    assert (s.arrays["labels"][rows] == given).all() and (given != true).all()
    sup = np.array(t["meta"]["realistic"]["superclass_of_class"])
    to_sibling = sup[given] == sup[true]
    assert to_sibling.tolist() == le["to_sibling"]
    assert to_sibling.mean() == pytest.approx(0.7, abs=0.02)
    # flip rates vary by class
    classes = _true_classes(s)
    rate = np.bincount(true, minlength=cfg.classes) / np.bincount(classes[classes >= 0],
                                                                  minlength=cfg.classes)
    assert rate.max() > 3 * rate.min() and rate.max() < 0.5
    rates = t["meta"]["realistic"]["label_noise"]
    assert rates["rate"] == pytest.approx(0.05)
    assert rates["sibling_share"] == pytest.approx(0.7, abs=0.02)


def test_realistic_flips_take_the_most_ambiguous_rows_first(real):
    cfg, s = real
    t = s.truth
    lean = t["meta"]["realistic"]["leaning"]
    weight = np.zeros(cfg.n)
    towards = np.full(cfg.n, -1)
    weight[lean["rows"]], towards[lean["rows"]] = lean["weights"], lean["towards"]
    assert 0.1 < len(lean["rows"]) / cfg.n < 0.2
    sup = np.array(t["meta"]["realistic"]["superclass_of_class"])
    assert (sup[towards[lean["rows"]]] == sup[s.arrays["labels"][lean["rows"]]]).mean() > 0.9
    le = t["label_error"]
    rows, given, true = (np.array(le[k]) for k in ("rows", "given_labels", "true_labels"))
    sib = np.array(le["to_sibling"])
    leaning_flips = sib & (weight[rows] > 0)
    assert leaning_flips.sum() > 0.9 * sib.sum()
    # labelled with the sibling they lean towards
    assert (given[leaning_flips] == towards[rows[leaning_flips]]).all()
    unflipped = np.setdiff1d(_clean_rows(s), rows)
    # the most mixed rows (weights 0.1-0.5): well above the mixed rows left alone
    assert np.median(weight[rows[sib]]) > np.median(weight[unflipped][weight[unflipped] > 0]) + 0.1
    checked = 0
    for c in range(cfg.classes):
        flipped_w = weight[rows[leaning_flips & (true == c)]]
        other_w = weight[unflipped[_true_classes(s)[unflipped] == c]]
        if len(flipped_w) and len(other_w):
            assert flipped_w.min() >= other_w.max(), c
            checked += 1
    assert checked >= 15


def test_realistic_off_topic_junk(real):
    cfg, s = real
    t = s.truth
    junk = t["off_topic"]
    assert len(junk["rows"]) == 150 and len(junk["clusters"]) == 3
    assert sorted(sum(junk["clusters"], [])) == junk["rows"]
    emb, labels = s.arrays["embeddings"], s.arrays["labels"]
    centres = []
    for cluster in junk["clusters"]:
        x = emb[cluster]
        sim = x @ x.T
        off = ~np.eye(len(cluster), dtype=bool)
        assert 0.8 < sim[off].mean() < 0.9 and sim[off].min() > 0.7 and sim[off].max() < 0.97
        counts = np.bincount(labels[cluster], minlength=cfg.classes)
        assert counts.max() < 0.25 * len(cluster) and (counts > 0).sum() >= 10  # random labels
        centres.append(x.mean(axis=0))
    c = np.array(centres) / np.linalg.norm(centres, axis=1, keepdims=True)
    assert (c @ c.T)[~np.eye(3, dtype=bool)].max() < 0.6  # three separate clusters
    clean = emb[_clean_rows(s)]
    assert (emb[junk["rows"]] @ clean.T).mean() < 0.45  # not of the data's topic
    # defaults: 0.5 % junk and 0.5 % outliers
    assert RealisticConfig(n=100_000).planted_counts()["off_topic"] == 500
    assert RealisticConfig(n=100_000).planted_counts()["outlier"] == 500


def test_realistic_outliers_are_random_directions(real):
    cfg, s = real
    emb = s.arrays["embeddings"]
    out = np.array(s.truth["outlier"]["rows"])
    assert len(out) == round(0.005 * cfg.n)
    clean = emb[_clean_rows(s)]
    to_data = emb[out] @ clean.T
    assert np.abs(to_data.mean()) < 0.1 and to_data.max() < 0.6
    nn = clean[:500] @ clean.T
    np.fill_diagonal(nn, -1)
    assert to_data.max(axis=1).max() < np.median(nn.max(axis=1)) - 0.3


def test_realistic_truth_is_consistent(real):
    cfg, s = real
    t = s.truth
    rows = _rows_in_range_and_disjoint(cfg.n, t, ROW_ISSUES)
    for k in (*PAIR_TYPES, *ROW_ISSUES):
        assert not set(t[k]["ignore_rows"]) & set(t[k]["rows"]), k
    assert rows["off_topic"] <= set(t["label_error"]["ignore_rows"])
    assert rows["off_topic"] <= set(t["outlier"]["ignore_rows"])
    counts = t["meta"]["planted_counts"]
    for k in PAIR_TYPES:  # conflicting pairs are near-duplicate pairs too
        extra = counts["conflicting_labels"] if k == "near_duplicate" else 0
        assert len(t[k]["pairs"]) == counts[k] + extra > 0, k
    assert counts["off_topic"] == 150 and len(t["invalid"]["rows"]) == 4
    assert t["meta"]["generator"] == "realistic" and t["meta"]["config"]["off_topic_rate"] == 0.005
    # only the planted pairs are near duplicates: junk clusters and mixed rows stay below 0.97
    emb = np.nan_to_num(s.arrays["embeddings"]).astype(np.float64)
    sim = emb @ emb.T
    a, b = np.nonzero(np.triu(sim >= 0.97, k=1))
    planted = {tuple(sorted(p)) for k in PAIR_TYPES for p in t[k]["pairs"]}
    assert set(zip(a.tolist(), b.tolist())) == planted
    json.dumps(t, allow_nan=False)  # strict JSON


def test_realistic_pred_probs(real):
    cfg, s = real
    t = s.truth
    probs = s.arrays["pred_probs"]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    true = _true_classes(s)
    keep = np.setdiff1d(np.arange(cfg.n), t["outlier"]["rows"] + t["off_topic"]["rows"]
                        + t["invalid"]["rows"])
    pred = probs[keep].argmax(axis=1)
    wrong = pred != true[keep]
    assert 0.03 < wrong.mean() < 0.25  # imperfect
    sup = np.array(t["meta"]["realistic"]["superclass_of_class"])
    assert (sup[pred[wrong]] == sup[true[keep][wrong]]).mean() > 0.6  # siblings (chance: 4/19)
    assert t["meta"]["realistic"]["pred_accuracy"] == pytest.approx(1 - wrong.mean(), abs=1e-3)
    le = t["label_error"]
    rows, given, tl = (np.array(le[k]) for k in ("rows", "given_labels", "true_labels"))
    far = ~np.array(le["to_sibling"])
    assert np.mean(probs[rows[far]].argmax(axis=1) == tl[far]) > 0.7  # follows the TRUE class
    assert np.median(probs[rows[far], given[far]]) < 0.05
    near = ~far  # ambiguous rows flipped to the sibling they lean to: harder, still leaning true
    assert np.mean(probs[rows[near], tl[near]] > probs[rows[near], given[near]]) > 0.55
    inv = t["invalid"]["rows"]
    np.testing.assert_allclose(probs[inv], 1.0 / cfg.classes, atol=1e-6)


def test_realistic_hierarchy_generalises():
    s = generate(RealisticConfig(n=3000, d=32, classes=22, seed=1))
    sup = s.truth["meta"]["realistic"]["superclass_of_class"]
    assert sup == [0] * 5 + [1] * 5 + [2] * 5 + [3] * 7  # classes // 5, the last takes the rest
    m = s.truth["meta"]["realistic"]["measured_cosines"]
    assert m["random"] < m["sibling"] < m["same_class"]


def test_realistic_cli(tmp_path, capsys):
    code = generate_main(["--realistic", "--n", "2000", "--d", "32", "--classes", "10", "--out",
                          str(tmp_path), "--count", "off_topic=30"])
    assert code == 0
    out = capsys.readouterr().out
    assert "realistic: mean cosines" in out
    truth = load_truth(tmp_path)
    assert truth["meta"]["generator"] == "realistic" and len(truth["off_topic"]["rows"]) == 30
    assert len(truth["label_error"]["rows"]) == 100  # the realistic default rate, 5 %
    assert generate_main(["--n", "500", "--classes", "5", "--off-topic-rate", "0.01", "--out",
                          str(tmp_path / "x")]) == 2
    assert "--realistic" in capsys.readouterr().err


def test_realistic_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="d >= 8"):
        generate(RealisticConfig(n=1000, d=4, classes=10))
    with pytest.raises(ValueError, match="target_cosine"):
        generate(RealisticConfig(n=1000, d=16, classes=10, target_cosine_sibling=0.8))
    with pytest.raises(ValueError, match="unknown issue types"):
        generate(GenerateConfig(n=1000, classes=5, counts={"off_topic": 3}))


# ---- scoring -------------------------------------------------------------------------------

def test_score_rows_by_hand():
    flagged = np.array([1, 1, 0, 0, 1, 0], dtype=bool)
    scores = np.array([0.1, 0.2, 0.3, 0.9, 0.4, 0.8])
    res = score_rows(6, [0, 2], flagged, scores)
    assert res["precision"] == pytest.approx(1 / 3) and res["recall"] == pytest.approx(1 / 2)
    # ranking by 1 - score: rows 0 (pos), 1, 2 (pos), 4, ... -> AP = (1/1 + 2/3) / 2
    assert res["average_precision"] == pytest.approx((1 + 2 / 3) / 2)
    ignored = score_rows(6, [0, 2], flagged, scores, ignore_rows=[1, 4])
    assert ignored["precision"] == 1.0 and ignored["average_precision"] == 1.0
    none = score_rows(6, [], np.zeros(6, bool), scores)
    assert none["precision"] is None and none["recall"] is None and none["average_precision"] is None


def test_score_samples_on_a_hand_made_table():
    truth = {
        "outlier": {"rows": [3], "ignore_rows": []},
        "near_duplicate": {"pairs": [[0, 1]], "rows": [0, 1], "excluded_rows": [1],
                           "ignore_rows": [4, 5]},
        "label_error": {"rows": [2], "ignore_rows": []},
    }
    table = {  # rows out of order and row 5 missing, as a check might leave rows out
        "row": np.array([4, 3, 2, 1, 0]),
        "is_outlier_issue": np.array([False, True, False, False, True]),
        "outlier_score": np.array([0.9, 0.05, 0.8, 0.7, 0.3]),
        "is_near_duplicate_issue": np.array([True, False, False, True, True]),
        "near_duplicate_score": np.array([0.1, np.nan, 0.9, 0.1, 0.1]),
    }
    res = {r["issue_type"]: r for r in score_samples(table, truth, n=6)}
    assert set(res) == {"outlier", "near_duplicate"}  # label_error: no column, not scored
    assert res["outlier"]["precision"] == 0.5 and res["outlier"]["recall"] == 1.0
    assert res["outlier"]["average_precision"] == 1.0
    nd = res["near_duplicate"]
    assert nd["precision"] == 1.0 and nd["recall"] == 1.0 and nd["flagged"] == 2  # row 4 ignored
    keep_one = {r["issue_type"]: r for r in score_samples(table, truth, 6, policy="excluded_rows")}
    assert keep_one["near_duplicate"]["precision"] == 0.5
    only = score_samples(table, truth, 6, issue_types=["outlier"])
    assert [r["issue_type"] for r in only] == ["outlier"]


def test_pair_scoring():
    truth_pairs = [[0, 1], [5, 2]]
    found = np.array([[1, 0], [2, 5], [3, 4], [7, 8]])
    res = score_pairs(found, truth_pairs, ignore_rows=[3])
    assert res["recall"] == 1.0 and res["precision"] == pytest.approx(2 / 3)
    labels = np.array([0, 0, 1, 1, 0, 1, 0, 0, 0])
    split = np.array(["train"] * 5 + ["test"] * 4)
    kinds = classify_pairs(found, np.array([True, False, False, False]), labels, split)
    assert kinds["exact_duplicate"].tolist() == [[1, 0]]
    assert kinds["near_duplicate"].tolist() == [[2, 5], [3, 4], [7, 8]]
    assert kinds["conflicting_labels"].tolist() == [[3, 4]]
    assert kinds["leakage"].tolist() == [[2, 5]]
    truth = {"leakage": {"pairs": [[2, 5]], "ignore_rows": []},
             "exact_duplicate": {"pairs": [[0, 1]], "ignore_rows": []}}
    res = {r["issue_type"]: r for r in score_found_pairs(found, np.array([1, 0, 0, 0], bool),
                                                         labels, split, truth)}
    assert res["leakage"]["precision"] == 1.0 and res["exact_duplicate"]["recall"] == 1.0


def test_result_rows_and_markdown():
    result = {"device": "cpu", "device_name": "x86", "command": "python -m tamis scan s",
              "versions": {"numpy": "2"}, "stages": {"load": 1.0, "outlier": 2.0},
              "peak_gpu_mb": None}
    quality = [{"issue_type": "outlier", "unit": "rows", "precision": 1.0, "recall": 0.5,
                "average_precision": 0.75}]
    rows = result_rows("tamis", result, quality, 3.5, 100.0, {"n": 10, "d": 4, "date": "today"})
    assert [(r["stage"], r["issue_type"]) for r in rows] == [("process", None), ("load", None),
                                                             ("outlier", "outlier")]
    assert rows[2]["seconds"] == 2.0 and rows[0]["peak_rss_mb"] == 100.0
    table = markdown(rows, "t")
    assert table.count("\n| tamis |") == 3 and "| 0.750 |" in table
