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
    assert report.summary["checks"]["label_error"]["sources"] == {
        "auto": ["neighbours", "probe", "pred_probs"], "embeddings": ["neighbours", "probe"],
        "pred_probs": ["pred_probs"]}[source]
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


def test_junk_clusters_are_found_without_references():
    """Three tight clusters far from every class, their labels drawn at random: off_topic flags
    them and lists them as groups; a clean store has none."""
    cols, truth = planted(n=3000, n_outliers=15)
    rng = np.random.default_rng(3)
    d = cols["embeddings"].shape[1]
    junk = []
    for _ in range(3):
        centre = rng.normal(size=d)
        junk.append(centre + 0.25 * rng.normal(size=(40, d)))         # cosine ~0.94 within a cluster
    emb = np.vstack([cols["embeddings"], *junk]).astype(np.float32)
    labels = np.concatenate([cols["labels"], rng.integers(0, 10, 120)])
    report = tamis.scan({"embeddings": emb, "labels": labels}, device="cpu", checks=["off_topic"])
    found = flagged(report, "off_topic")
    planted_junk = set(range(3000, 3120))
    p, r = pr(found, planted_junk)
    assert p >= 0.95 and r >= 0.95, (p, r)
    groups = report.tables["off_topic_clusters"].to_pylist()
    assert sorted({g["group_id"] for g in groups}) == [3000, 3040, 3080]
    assert not any(g["keep"] for g in groups)
    summary = report.summary["checks"]["off_topic"]
    assert summary["n_junk_clusters"] == 3 and all(c["size"] == 40 for c in summary["junk_clusters"])
    assert not found & truth["outliers"]             # isolated rows are outlier's, not junk
    clean = tamis.scan({"embeddings": cols["embeddings"], "labels": cols["labels"]}, device="cpu",
                       checks=["off_topic"])
    assert flagged(clean, "off_topic") == set() and clean.tables["off_topic_clusters"].num_rows == 0


def test_a_tight_cluster_with_one_label_is_not_junk():
    cols, _ = planted(n=2000, n_outliers=0)
    rng = np.random.default_rng(4)
    mode = rng.normal(size=cols["embeddings"].shape[1]) + 0.2 * rng.normal(size=(40, cols["embeddings"].shape[1]))
    emb = np.vstack([cols["embeddings"], mode]).astype(np.float32)
    labels = np.concatenate([cols["labels"], np.full(40, 3)])              # a rare mode of class 3
    report = tamis.scan({"embeddings": emb, "labels": labels}, device="cpu", checks=["off_topic"])
    assert flagged(report, "off_topic") == set()


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


# ---------------------------------------------------------------------- the linear probe
def test_probe_matches_scikit_learns_lda_fold_by_fold():
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    from tamis.checks.shared.probe import fold_of, probe_probabilities

    rng = np.random.default_rng(4)
    x = (rng.normal(size=(5, 12))[rng.integers(0, 5, 600)] + rng.normal(size=(600, 12))).astype(np.float32)
    y = rng.integers(0, 5, 600)
    y[:400] = np.argmax(x[:400, :5], axis=1)          # labels the features partly explain
    P = probe_probabilities(x, y, 5, folds=4, shrinkage=0.1, seed=3)
    fold = fold_of(600, 4, 3)
    assert sorted(np.bincount(fold).tolist()) == [150, 150, 150, 150]
    for f in range(4):
        test = fold == f
        ref = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=0.1).fit(x[~test].astype(np.float64), y[~test])
        assert np.abs(P[test] - ref.predict_proba(x[test].astype(np.float64))).max() < 1e-4
    assert np.allclose(P.sum(axis=1), 1.0, atol=1e-4)


def test_probe_never_scores_a_row_with_a_model_that_saw_it():
    from tamis.checks.shared.probe import probe_probabilities

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8)).astype(np.float32)
    y = rng.integers(0, 2, 200)                       # labels unrelated to the features
    P = probe_probabilities(x, y, 2, folds=5)
    # an in-sample model would fit noise and favour the given label; out of sample it cannot
    own = P[np.arange(200), y]
    assert abs(float(own.mean()) - 0.5) < 0.05


def test_product_of_sources_ranks_flips_better_than_neighbour_votes_alone():
    """On the realistic generator's store (sibling classes that overlap, flips mostly to a
    sibling), the probe and the product of both rank the flips better than the votes."""
    from sklearn.metrics import average_precision_score

    from bench.generate import RealisticConfig, generate

    synthetic = generate(RealisticConfig(n=6000, d=64, classes=20, seed=2, pred_probs=False))
    a, truth = synthetic.arrays, synthetic.truth["label_error"]
    cols = {"embeddings": a["embeddings"], "labels": a["labels"]}
    positive = np.zeros(len(a["labels"]), dtype=bool)
    positive[truth["rows"]] = True
    keep = np.ones(len(positive), dtype=bool)
    keep[truth["ignore_rows"]] = False
    keep |= positive
    aps = {}
    for evidence in ("neighbours", "probe", "neighbours+probe"):
        report = tamis.scan(cols, checks=["label_error"], params={"label_error": {"evidence": evidence}})
        score = report.samples["label_error_score"].to_numpy(zero_copy_only=False)
        aps[evidence] = average_precision_score(positive[keep], -score[keep])
    assert aps["probe"] > aps["neighbours"] + 0.02, aps
    assert aps["neighbours+probe"] > aps["neighbours"] + 0.02, aps


def test_probe_with_a_fold_that_trains_on_nothing_gives_the_uniform_distribution():
    from tamis.checks.shared.probe import probe_probabilities

    P = probe_probabilities(np.ones((1, 4), dtype=np.float32), np.array([0]), 3, folds=5)
    assert np.isfinite(P).all() and np.allclose(P, 1 / 3, atol=1e-5)


def test_combine_and_strongest_other_in_blocks_equal_the_whole_computation(monkeypatch):
    rng = np.random.default_rng(0)
    a, b = rng.dirichlet(np.ones(7), 500).astype(np.float32), rng.dirichlet(np.ones(7), 500).astype(np.float32)
    y = rng.integers(0, 7, 500)
    whole = confident.combine([a, b])
    other = confident.strongest_other(a, y)
    monkeypatch.setattr(confident, "_VOTE_BLOCK_CELLS", 7 * 13)     # 13 rows a block
    assert np.allclose(confident.combine([a, b]), whole, atol=1e-7)
    geo = np.sqrt(a.astype(np.float64) * b)
    assert np.allclose(whole, geo / geo.sum(axis=1, keepdims=True), atol=1e-6)
    masked = a.astype(np.float64).copy()
    masked[np.arange(500), y] = -np.inf
    assert np.array_equal(confident.strongest_other(a, y), other) and np.array_equal(other, masked.max(axis=1))


def test_class_centroids_are_row_order_sums_whatever_the_slices(monkeypatch):
    """Each class's centroid is the normalised sum of its unit rows, every row once, however the sum
    is cut into slices (float64 sums of these float32 rows are exact, so the bits agree with the
    row-by-row definition); a class with no row is zero."""
    from tamis.checks.shared import centroids
    from tamis.engine import context
    from tamis.engine.backend import resolve_backend
    rng = np.random.default_rng(4)
    emb = rng.normal(size=(300, 24)).astype(np.float32)
    labels = rng.integers(0, 5, 300)
    labels[labels == 3] = 4                                       # class 3: named by pred_probs, no row
    store = tamis.load_store({"embeddings": emb, "labels": labels,
                              "pred_probs": np.full((300, 5), 0.2, dtype=np.float32)})
    unit = context.RunContext(store, resolve_backend("cpu")).embeddings
    expected = np.zeros((5, 24))
    for row, code in zip(unit.astype(np.float64), labels):      # the definition: row after row
        expected[code] += row
    norms = np.linalg.norm(expected, axis=1)
    expected /= np.where(norms > 0, norms, 1.0)[:, None]
    for rows in (1024, 7, 1):
        monkeypatch.setattr(centroids, "SUM_ROWS", rows)
        got = centroids.class_centroids(context.RunContext(store, resolve_backend("cpu")))
        np.testing.assert_array_equal(got, expected)
    assert not got[3].any()

