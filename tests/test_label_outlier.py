"""label_error, outlier, off_topic and split_shift on small planted stores."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tamis
from tamis.checks.shared import confident


def planted(n=3000, d=64, classes=10, flip=0.03, n_outliers=15, seed=0):
    rng = np.random.default_rng(seed)
    common = rng.normal(size=d)                      # real embeddings share a direction ("an image")
    centers = 0.6 * common / np.linalg.norm(common) + 0.8 * rng.normal(size=(classes, d)) / np.sqrt(d)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    true = rng.integers(0, classes, n)
    emb = centers[true] + 0.6 * rng.normal(size=(n, d)) / np.sqrt(d)     # cosine to its centre ~0.85
    outliers = rng.choice(n, n_outliers, replace=False)
    emb[outliers] = rng.normal(size=(n_outliers, d)) * 3  # random directions, far from every class
    labels = true.copy()
    pool = np.setdiff1d(np.arange(n), outliers)
    flips = rng.choice(pool, int(flip * n), replace=False)
    labels[flips] = (labels[flips] + rng.integers(1, classes, len(flips))) % classes
    split = np.where(rng.random(n) < 0.8, "train", "test")
    logits = rng.normal(size=(n, classes))           # a good model, out of sample: follows the true class
    logits[np.arange(n), true] += 5.0
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    cols = {"embeddings": emb.astype(np.float32), "labels": labels, "split": split, "pred_probs": probs}
    return cols, {"flips": set(flips.tolist()), "outliers": set(outliers.tolist()), "true": true}


def flagged(report, check):
    return set(np.flatnonzero(report.samples[f"is_{check}_issue"].to_numpy(zero_copy_only=False)).tolist())


def pr(found, truth):
    tp = len(found & truth)
    return tp / max(1, len(found)), tp / max(1, len(truth))


@pytest.mark.parametrize("source", ["embeddings", "pred_probs", "auto"])
def test_label_errors_are_found(source, device):
    cols, truth = planted()
    report = tamis.scan(cols, device=device, checks=["label_error"], params={"label_error": {"source": source}})
    # a model that follows the true class cannot call an outlier's label wrong: only flips count
    # where pred_probs speak (averaged with the neighbourhood, the model's view wins for outliers)
    expected = truth["flips"] | truth["outliers"] if source == "embeddings" else truth["flips"]
    p, r = pr(flagged(report, "label_error"), expected)
    assert p >= 0.85 and r >= 0.8, (source, p, r)
    assert report.summary["checks"]["label_error"]["sources"] == (
        ["embeddings", "pred_probs"] if source == "auto" else [source])
    suggested = report.samples["suggested_label"].to_numpy(zero_copy_only=False)
    flips = sorted(truth["flips"] & flagged(report, "label_error"))
    assert (suggested[flips] == truth["true"][flips]).mean() >= 0.9


def test_label_errors_table_is_ranked_by_confidence():
    cols, truth = planted()
    report = tamis.scan(cols, device="cpu", checks=["label_error"])
    table = report.tables["label_errors"].to_pandas()
    assert list(table.columns) == ["row", "id", "path", "given_label", "suggested_label", "confidence",
                                   "self_confidence"]
    assert table["confidence"].is_monotonic_decreasing
    assert set(table["row"]) == flagged(report, "label_error")
    confusion = report.tables["label_confusion"].to_pandas()
    assert confusion["count"].sum() == len(table)
    per_given = confusion.groupby("given_label", sort=False)["count"].sum()
    assert per_given.is_monotonic_decreasing, "labels with the most mistakes first"


def test_pred_probs_only_store():
    cols, truth = planted()
    store = {"labels": cols["labels"], "pred_probs": cols["pred_probs"]}
    report = tamis.scan(store, device="cpu")
    assert "label_error" in report.summary["checks_run"]
    p, r = pr(flagged(report, "label_error"), truth["flips"])
    assert p >= 0.85 and r >= 0.8, (p, r)
    assert report.summary["checks"]["label_error"]["method"] == "prune_by_noise_rate"
    assert {s["check"] for s in report.summary["checks_skipped"]} >= {"outlier", "near_duplicate"}


def test_label_error_bad_inputs():
    cols, _ = planted(n=200)
    with pytest.raises(tamis.InputError, match="pred_probs.*sum to 1"):
        tamis.scan({"labels": cols["labels"], "pred_probs": cols["pred_probs"] * 2}, device="cpu")
    with pytest.raises(tamis.InputError, match="label 12.*10 classes"):
        bad = cols["labels"].copy()
        bad[0] = 12
        tamis.scan({"labels": bad, "pred_probs": cols["pred_probs"]}, device="cpu")
    with pytest.raises(tamis.ConfigError, match="k=10 neighbours need at least 11 valid rows.*has 7"):
        tamis.scan({"embeddings": cols["embeddings"][:7], "labels": cols["labels"][:7]}, device="cpu",
                   checks=["label_error"], k=10)
    tiny = tamis.scan({"embeddings": cols["embeddings"][:7], "labels": cols["labels"][:7]}, device="cpu",
                      checks=["outlier"])
    assert tiny.summary["checks"]["outlier"]["k"] == 6, "the default k shrinks to fit a tiny store"
    string_labels = np.array([f"c{v}" for v in cols["labels"]])
    with pytest.raises(tamis.InputError, match="pred_probs has 3 columns but the labels hold 10 classes"):
        tamis.scan({"labels": string_labels, "pred_probs": np.full((200, 3), 1 / 3)}, device="cpu")


def test_outliers_are_found(device):
    cols, truth = planted()
    report = tamis.scan(cols, device=device, checks=["outlier"])
    p, r = pr(flagged(report, "outlier"), truth["outliers"])
    assert r >= 0.95 and p >= 0.8, (p, r)   # the fence also takes a few Gaussian-tail rows (3 of 3000 here)
    scores = report.samples["outlier_score"].to_numpy()
    out = sorted(truth["outliers"])
    assert scores[out].max() < np.median(scores)
    assert "outlier_class_score" in report.samples.column_names
    assert {"outlier"} == set(report.exclusions["reason"].to_pylist())


def test_outlier_score_is_monotone_in_isolation():
    cols, _ = planted(n=800)
    report = tamis.scan(cols, device="cpu", checks=["outlier"])
    flags = np.asarray(report.samples["is_outlier_issue"].to_pylist())
    scores = report.samples["outlier_score"].to_numpy()
    if flags.any():
        assert scores[flags].max() <= scores[~flags].min()


def test_off_topic_with_references(tmp_path):
    cols, truth = planted()
    rng = np.random.default_rng(9)
    clean = np.setdiff1d(np.arange(len(cols["labels"])), sorted(truth["flips"] | truth["outliers"]))
    refs = np.concatenate([rng.choice(clean[cols["labels"][clean] == c], 5, replace=False) for c in range(10)])
    np.savez(tmp_path / "refs.npz", embeddings=cols["embeddings"][refs], labels=cols["labels"][refs])
    report = tamis.scan(cols, device="cpu", checks=["off_topic"],
                        params={"off_topic": {"references": str(tmp_path / "refs.npz")}})
    found = flagged(report, "off_topic")
    p, _ = pr(found, truth["flips"] | truth["outliers"])
    _, r = pr(found, truth["outliers"])
    assert r >= 0.9 and p >= 0.9, (p, r)   # junk is found; flagged rows are junk or flipped
    assert report.summary["checks"]["off_topic"]["n_references"] == 50


def test_off_topic_is_skipped_without_references_and_errors_when_asked_for():
    cols, _ = planted(n=300)
    report = tamis.scan(cols, device="cpu")
    skipped = {s["check"]: s["reason"] for s in report.summary["checks_skipped"]}
    assert "--references" in skipped["off_topic"]
    with pytest.raises(tamis.ConfigError, match="off_topic.*--references"):
        tamis.scan(cols, device="cpu", checks=["off_topic"])


def test_off_topic_reference_errors(tmp_path):
    cols, _ = planted(n=300)
    np.savez(tmp_path / "r.npz", embeddings=np.ones((3, 5), dtype=np.float32), labels=np.array([0, 1, 2]))
    with pytest.raises(tamis.InputError, match="5 dimensions but the store's have 64"):
        tamis.scan(cols, device="cpu", params={"off_topic": {"references": str(tmp_path / "r.npz")}})


def test_split_shift_flags_evaluation_rows_with_no_training_neighbour():
    rng = np.random.default_rng(2)
    train = rng.normal(size=(400, 16)) + np.r_[5, np.zeros(15)]
    test_same = rng.normal(size=(60, 16)) + np.r_[5, np.zeros(15)]
    test_new = rng.normal(size=(40, 16)) * 0.3 + np.r_[np.zeros(15), 8]   # a region training never saw
    emb = np.vstack([train, test_same, test_new]).astype(np.float32)
    split = np.array(["train"] * 400 + ["test"] * 100)
    report = tamis.scan({"embeddings": emb, "split": split}, device="cpu", checks=["split_shift"])
    assert flagged(report, "split_shift") == set(range(460, 500))
    summary = report.summary["checks"]["split_shift"]
    assert summary["reference"] == "train"
    assert summary["splits"]["test"]["ratio"] > 1.5


def test_neighbour_graph_is_built_once_and_saved(tmp_path):
    cols, _ = planted(n=600)
    report = tamis.scan(cols, device="cpu", out=tmp_path)
    knn_stages = [k for k in report.summary["timings"] if k.startswith("artifact:knn")]
    assert knn_stages == ["artifact:knn/10"]
    from tamis.io.knn_file import load_knn_rows

    rows, idx, sims = load_knn_rows(tmp_path / "knn.npz")
    assert idx.shape == (600, 10) and (rows == np.arange(600)).all()
    assert (idx != rows[:, None]).all()
    loaded = tamis.read_report(tmp_path)
    np.testing.assert_array_equal(loaded.knn[1], idx)


# ----------------------------------------------------------------------------- confident learning
def _brute_force(P, y):
    """The paper's definitions, transcribed loop by loop."""
    n, c = P.shape
    t = np.array([P[y == j, j].mean() if (y == j).any() else np.inf for j in range(c)])
    joint = np.zeros((c, c))
    for i in range(n):
        above = [j for j in range(c) if P[i, j] >= t[j]]
        if above:
            joint[y[i], max(above, key=lambda j: (P[i, j], -j))] += 1
    return t, joint


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 5), st.integers(5, 60), st.integers(0, 10_000))
def test_confident_joint_matches_the_definition(c, n, seed):
    rng = np.random.default_rng(seed)
    P = rng.dirichlet(np.ones(c), n).astype(np.float32)
    y = rng.integers(0, c, n)
    t, joint = _brute_force(P, y)
    np.testing.assert_allclose(confident.per_class_thresholds(P, y), t, rtol=1e-6)
    np.testing.assert_array_equal(confident.confident_joint(P, y, confident.per_class_thresholds(P, y)), joint)
    cal = confident.calibrate(joint, np.bincount(y, minlength=c).astype(float))
    present = np.bincount(y, minlength=c) > 0
    rows_with_mass = joint.sum(axis=1) > 0
    if rows_with_mass.all():
        np.testing.assert_allclose(cal.sum(axis=1)[present], np.bincount(y, minlength=c)[present], rtol=1e-9)
    issues, _ = confident.find_label_issues(P, y)
    assert issues.sum() <= round(cal.sum() - np.trace(cal)) + c


@settings(max_examples=80, deadline=None)
@given(st.lists(st.lists(st.floats(0, 5), min_size=3, max_size=3), min_size=1, max_size=6))
def test_rounding_keeps_row_totals(rows):
    m = np.array(rows)
    out = confident.round_preserving_row_totals(m)
    np.testing.assert_array_equal(out.sum(axis=1), np.round(m.sum(axis=1)))
    assert (np.abs(out - m) < 1 + 1e-9).all() and (out >= 0).all()


def test_knn_probabilities_exclude_self_and_sum_to_one():
    labels = np.array([[1, 1, 0], [0, 0, 0]])
    sims = np.array([[0.9, 0.8, 0.1], [0.5, 0.5, -0.2]])
    P = confident.knn_probabilities(labels, sims, 2, prior=np.array([0.5, 0.5]), smoothing=1.0)
    np.testing.assert_allclose(P.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(P[0], [(0.1 + 0.5) / 2.8, (1.7 + 0.5) / 2.8], rtol=1e-6)
    np.testing.assert_allclose(P[1], [(1.0 + 0.5) / 2.0, 0.5 / 2.0], rtol=1e-6)  # negative similarity: no vote
