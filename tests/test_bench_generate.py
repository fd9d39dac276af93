"""Tests of the benchmark generator (bench/generate.py) and the runner's scoring (bench/scoring.py).

Small data only; the runner's subprocess path is exercised by `python -m bench.run`, not here.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

# bench/ is a top-level folder of the repository, not part of the installed package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.generate import GenerateConfig, generate, write  # noqa: E402
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


def test_deterministic_for_a_seed(small):
    cfg, first = small
    again = generate(GenerateConfig(**{**cfg.__dict__}))
    for key, value in first.arrays.items():
        np.testing.assert_array_equal(value, again.arrays[key], err_msg=key)
    assert json.dumps(first.truth) == json.dumps(again.truth)
    other = generate(GenerateConfig(**{**cfg.__dict__, "seed": 8}))
    assert not np.array_equal(np.nan_to_num(first.arrays["embeddings"]),
                              np.nan_to_num(other.arrays["embeddings"]))


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


def test_truth_rows_in_range_and_disjoint(small):
    cfg, s = small
    t = s.truth
    rows = {k: set(t[k]["rows"]) for k in ("exact_duplicate", "near_duplicate", "leakage",
                                           "label_error", "outlier", "invalid")}
    for k, r in rows.items():
        assert all(0 <= i < cfg.n for i in r), k
        assert len(t[k]["rows"]) == len(r), f"{k} has repeated rows"
    names = list(rows)
    for i, x in enumerate(names):
        for y in names[i + 1:]:
            assert not rows[x] & rows[y], (x, y)
    assert set(t["conflicting_labels"]["rows"]) <= rows["near_duplicate"]
    for k in PAIR_TYPES:
        assert set(t[k]["excluded_rows"]) <= set(t[k]["rows"])
        assert not set(t[k]["ignore_rows"]) & set(t[k]["rows"])
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
