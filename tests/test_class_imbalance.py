from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tamis


def _scan(labels, split=None, device="cpu", **params):
    cols = {"labels": np.asarray(labels)}
    if split is not None:
        cols["split"] = np.asarray(split)
    return tamis.scan(cols, device=device, params={"class_imbalance": params} if params else None)


def test_rare_class_is_flagged_and_scored_lowest():
    labels = ["cat"] * 50 + ["dog"] * 45 + ["eel"] * 3
    report = _scan(labels)
    flags = report.samples["is_class_imbalance_issue"].to_pylist()
    assert [i for i, f in enumerate(flags) if f] == list(range(95, 98))
    summary = report.summary["checks"]["class_imbalance"]
    assert summary["rare_classes"] == ["eel"]
    assert summary["imbalance_ratio"] == pytest.approx(50 / 3)
    assert summary["counts"] == {"cat": 50, "dog": 45, "eel": 3}
    scores = report.samples["class_imbalance_score"].to_numpy()
    assert scores[97] == pytest.approx(3 / (98 / 3)) and scores[0] == 1.0
    assert report.summary["n_excluded"] == 0, "rare classes are never excluded"


def test_threshold_is_a_parameter():
    labels = [0] * 50 + [1] * 45 + [2] * 12
    assert report_flags(_scan(labels)) == 0
    assert report_flags(_scan(labels, min_fraction=0.5)) == 12


def report_flags(report):
    return sum(report.samples["is_class_imbalance_issue"].to_pylist())


def test_split_differences():
    train = ["a"] * 40 + ["b"] * 40 + ["c"] * 20
    test = ["a"] * 10 + ["b"] * 10            # lacks class c entirely
    report = _scan(train + test, ["train"] * 100 + ["test"] * 20)
    splits = report.summary["checks"]["class_imbalance"]["splits"]
    assert splits["reference"] == "train"
    diff = splits["differences"]["test"]
    assert diff["missing_classes"] == ["c"]
    assert diff["total_variation_distance"] == pytest.approx(0.2)
    assert splits["shifted_splits"] == ["test"]
    counts = report.tables["class_counts"]
    per_test = {r["label"]: r["count"] for r in counts.to_pylist() if r["split"] == "test"}
    assert per_test == {"a": 10, "b": 10}


def test_identical_split_mixes_are_not_shifted():
    labels = ["a", "b"] * 50
    report = _scan(labels, ["train"] * 50 + ["val"] * 50)
    diff = report.summary["checks"]["class_imbalance"]["splits"]["differences"]["val"]
    assert diff["total_variation_distance"] == pytest.approx(0.0)
    assert diff["chi2_p_value"] > 0.5


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=200), st.floats(0.01, 0.99))
def test_property_scores_in_range_and_flags_follow_counts(labels, fraction):
    report = _scan(labels, min_fraction=fraction)
    scores = report.samples["class_imbalance_score"].to_numpy()
    flags = np.asarray(report.samples["is_class_imbalance_issue"].to_pylist())
    assert ((scores > 0) & (scores <= 1)).all()
    counts = np.bincount(labels)
    mean = counts[counts > 0].mean()
    expected = counts[np.asarray(labels)] < fraction * mean
    np.testing.assert_array_equal(flags, expected)


def test_chi_square_matches_scipy():
    from scipy.stats import chi2_contingency

    from tamis.checks.class_imbalance import _chi2_independence_p

    rng = np.random.default_rng(3)
    for _ in range(20):
        table = rng.integers(1, 50, size=(2, int(rng.integers(3, 9))))
        assert _chi2_independence_p(table) == pytest.approx(chi2_contingency(table)[1], rel=1e-9)
