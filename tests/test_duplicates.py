"""The duplicate family (exact, near, conflicting labels, leakage) on small planted stores."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

import tamis


def planted(n=1500, d=48, classes=12, seed=0):
    """Clustered unit vectors plus planted copies; returns columns and the truth."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, d))
    labels = rng.integers(0, classes, n)
    emb = centers[labels] + 1.2 * rng.normal(size=(n, d))
    split = np.where(rng.random(n) < 0.8, "train", "test").astype("<U5")
    train = np.flatnonzero(split == "train")
    src = rng.choice(train, 60, replace=False)
    exact, near, conflict, leak = src[:15], src[15:30], src[30:45], src[45:60]

    def noisy(rows):
        x = emb[rows] / np.linalg.norm(emb[rows], axis=1, keepdims=True)
        return x + 0.02 * rng.normal(size=x.shape) / np.sqrt(d)

    extra_e = [emb[exact], noisy(near), noisy(conflict), noisy(leak)]
    extra_l = [labels[exact], labels[near], (labels[conflict] + 1) % classes, labels[leak]]
    extra_s = [split[exact], split[near], split[conflict], np.full(15, "test")]
    emb = np.concatenate([emb, *extra_e]).astype(np.float32)
    labels = np.concatenate([labels, *extra_l])
    split = np.concatenate([split, *extra_s])
    copies = n + np.arange(60)
    truth = {
        "exact": set(exact) | set(copies[:15]),
        "near": set(src) | set(copies),
        "conflict": set(conflict) | set(copies[30:45]),
        "leak_eval": set(copies[45:60]),
        "copies": copies, "sources": src,
    }
    cols = {"embeddings": emb, "labels": labels, "split": split,
            "ids": np.array([f"id{i:05d}" for i in range(len(labels))])}
    return cols, truth


def flagged(report, check):
    return set(np.flatnonzero(report.samples[f"is_{check}_issue"].to_numpy(zero_copy_only=False)).tolist())


def precision_recall(found, truth):
    tp = len(found & truth)
    return tp / max(1, len(found)), tp / max(1, len(truth))


@pytest.mark.parametrize("engine", ["exact", "ivf"])
def test_planted_duplicates_are_found(engine, device):
    cols, truth = planted()
    report = tamis.scan(cols, device=device, engine=engine)
    for check, expected in (("exact_duplicate", truth["exact"]), ("near_duplicate", truth["near"]),
                            ("conflicting_labels", truth["conflict"]), ("leakage", truth["leak_eval"])):
        p, r = precision_recall(flagged(report, check), expected)
        assert r >= 0.99 and p >= 0.95, (check, p, r)


def test_engines_and_backends_give_the_same_pairs(device):
    cols, _ = planted(seed=3)
    exact = tamis.scan(cols, device="cpu", engine="exact")
    for engine in ("exact", "ivf"):
        other = tamis.scan(cols, device=device, engine=engine)
        assert other.tables["pairs"].equals(exact.tables["pairs"]), engine
        assert other.tables["groups"].equals(exact.tables["groups"]), engine
        for check in ("near_duplicate", "conflicting_labels", "leakage", "exact_duplicate"):
            assert flagged(other, check) == flagged(exact, check)


def test_output_tables_schema_and_keep_one_per_group(tmp_path):
    cols, truth = planted()
    tamis.scan(cols, device="cpu", out=tmp_path)
    pairs = pq.read_table(tmp_path / "pairs.parquet")
    groups = pq.read_table(tmp_path / "groups.parquet")
    assert pairs.column_names == ["row_a", "row_b", "similarity", "cross_split"]
    assert groups.column_names == ["group_id", "row", "kind", "keep", "conflicting"]
    a, b = pairs["row_a"].to_numpy(), pairs["row_b"].to_numpy()
    assert (a < b).all() and (pairs["similarity"].to_numpy() >= 0.95).all()
    g = groups.to_pandas()
    assert (g.groupby("group_id")["keep"].sum() == 1).all()
    assert (g.groupby("group_id")["row"].min() == g.groupby("group_id")["row"].min().index).all(), \
        "a group's id is its smallest row"
    assert set(g.loc[g.kind == "exact", "row"]) == truth["exact"]
    assert set(g.loc[g.conflicting, "row"]) == truth["conflict"]
    excluded = pq.read_table(tmp_path / "exclude.parquet").to_pandas()
    near = excluded[excluded.reason.str.contains("near_duplicate")]
    assert len(near) == len(g) - g.group_id.nunique()


def test_keep_policies(tmp_path):
    rng = np.random.default_rng(5)
    base = rng.normal(size=16)
    base /= np.linalg.norm(base)
    group = [base + s * rng.normal(size=16) / 4 * 0.05 for s in (3, 1, 2)]   # row 1 is the most central
    emb = np.vstack([group, rng.normal(size=(5, 16))]).astype(np.float32)
    ids = np.array(["c", "b", "a", "x", "y", "z", "w", "v"])
    quality = np.array([0.1, 0.2, 0.9, 0, 0, 0, 0, 0])
    cols = {"embeddings": emb, "ids": ids, "quality": quality}

    def kept(keep):
        r = tamis.scan(cols, device="cpu", threshold=0.9, checks=["near_duplicate"],
                       params={"near_duplicate": {"keep": keep}})
        g = r.tables["groups"].to_pandas()
        assert g.row.tolist() == [0, 1, 2]
        return int(g.loc[g.keep, "row"].iloc[0])

    assert kept("first") == 2        # smallest id "a"
    assert kept("central") == 1
    assert kept("quality") == 2
    with pytest.raises(tamis.InputError, match="quality column"):
        tamis.scan(emb, device="cpu", threshold=0.9, params={"near_duplicate": {"keep": "quality"}})


def test_conflicting_labels_policies():
    cols, truth = planted()
    default = tamis.scan(cols, device="cpu", checks=["conflicting_labels"])
    assert set(default.exclusions["row"].to_pylist()) == truth["conflict"]
    majority = tamis.scan(cols, device="cpu", checks=["conflicting_labels"],
                          params={"conflicting_labels": {"policy": "keep_majority"}})
    # two-member groups with two labels have no strict majority: both are dropped
    assert set(majority.exclusions["row"].to_pylist()) == truth["conflict"]
    table = default.tables["conflicts"].to_pandas()
    assert (table["n_labels"] == 2).all() and np.allclose(table["entropy_bits"], 1.0)
    assert table["majority_label"].isna().all()


def test_conflicting_keep_majority_keeps_the_majority():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 8))
    emb = np.vstack([x, x * 1.0001, x * 0.9999, rng.normal(size=(4, 8))]).astype(np.float32)
    labels = np.array(["cat", "cat", "dog", "a", "b", "c", "d"])
    r = tamis.scan({"embeddings": emb, "labels": labels}, device="cpu", checks=["conflicting_labels"],
                   params={"conflicting_labels": {"policy": "keep_majority"}})
    assert r.exclusions["row"].to_pylist() == [2]
    scores = r.samples["conflicting_labels_score"].to_numpy()
    assert scores[2] == pytest.approx(1 / 3) and scores[0] == pytest.approx(2 / 3)
    row = r.tables["conflicts"].to_pylist()[0]
    assert row["majority_label"] == "cat" and json.loads(row["label_counts"]) == {"cat": 2, "dog": 1}


def test_leakage_flags_the_evaluation_member_and_reports_rates():
    cols, truth = planted()
    r = tamis.scan(cols, device="cpu", checks=["leakage"])
    assert flagged(r, "leakage") >= truth["leak_eval"]
    rates = r.summary["checks"]["leakage"]["split_pairs"]
    assert set(rates) == {"train->test"}
    n_test = int((cols["split"] == "test").sum())
    assert rates["train->test"]["leak_rate"] == pytest.approx(rates["train->test"]["n_leaked_rows"] / n_test)
    flipped = tamis.scan(cols, device="cpu", checks=["leakage"], params={"leakage": {"exclude": "train"}})
    excluded = set(flipped.exclusions["row"].to_pylist())
    assert all(cols["split"][i] == "train" for i in excluded)


def test_exact_duplicates_by_bits_and_by_path():
    emb = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0]], dtype=np.float32)
    emb[4] = [2, 0, 0]  # same direction as rows 0/1 but other bits: a near, not an exact, duplicate
    paths = np.array(["a.jpg", "b.jpg", "c.jpg", "c.jpg", "e.jpg"])
    r = tamis.scan({"embeddings": emb, "image_paths": paths}, device="cpu", checks=["exact_duplicate"])
    assert flagged(r, "exact_duplicate") == {0, 1, 2, 3}
    assert r.exclusions["row"].to_pylist() == [1, 3]
    assert r.summary["checks"]["exact_duplicate"]["n_groups"] == 2


def test_threshold_sweep_is_monotone_and_includes_the_threshold():
    cols, _ = planted()
    r = tamis.scan(cols, device="cpu", threshold=0.96, checks=["near_duplicate"])
    sweep = r.summary["checks"]["near_duplicate"]["sweep"]
    thresholds = [s["threshold"] for s in sweep]
    assert thresholds == sorted(thresholds) and 0.96 in thresholds and thresholds[0] == 0.90
    counts = [s["n_pairs"] for s in sweep]
    assert counts == sorted(counts, reverse=True)
    assert sweep[thresholds.index(0.96)]["n_pairs"] == r.summary["checks"]["near_duplicate"]["n_pairs"]


def test_scan_threshold_and_check_threshold():
    cols, _ = planted()
    low = tamis.scan(cols, device="cpu", threshold=0.9, checks=["near_duplicate"])
    high = tamis.scan(cols, device="cpu", checks=["near_duplicate"], params={"near_duplicate": {"threshold": 0.99995}})
    assert low.summary["checks"]["near_duplicate"]["threshold"] == 0.9
    assert high.summary["checks"]["near_duplicate"]["n_pairs"] == 15  # the bit-identical copies only
    assert low.summary["checks"]["near_duplicate"]["n_pairs"] == 60
    with pytest.raises(tamis.ConfigError, match="threshold=1.5"):
        tamis.scan(cols, device="cpu", threshold=1.5)


def test_invalid_rows_never_join_a_group():
    emb = np.array([[1, 0], [1, 0], [np.nan, 0], [0, 1]], dtype=np.float32)
    paths = np.array(["a", "b", "a", "d"])
    r = tamis.scan({"embeddings": emb, "image_paths": paths}, device="cpu")
    assert 2 not in flagged(r, "near_duplicate") | flagged(r, "exact_duplicate")
    assert r.exclusions.to_pandas().set_index("row").loc[2, "reason"] == "invalid"


def test_runs_pair_each_first_position_with_the_rest_of_its_run():
    from tamis.checks.exact_duplicate import _runs

    rng = np.random.default_rng(4)
    for n in (0, 1, 7, 50):
        keys = rng.integers(0, 5, n).astype(np.uint64)
        first, other = _runs(keys)
        expected = sorted((int(np.flatnonzero(keys == keys[j])[0]), j) for j in range(n)
                          if np.flatnonzero(keys == keys[j])[0] != j)
        assert sorted(zip(first.tolist(), other.tolist())) == expected


def test_near_duplicate_fraction_chooses_the_threshold():
    """120 rows: 0-19 have partners at similarity 0.991, 20-39 at 0.94, row 50 an exact copy: a share
    of 40 % picks 0.95 (34 % of the rows in a pair), 70 % picks 0.90 (68 %), 1 % picks 0.995 (2 %: no
    threshold qualifies, the highest is taken)."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(80, 64))
    base /= np.linalg.norm(base, axis=1, keepdims=True)

    def partner(x, cos):
        noise = rng.normal(size=x.shape)
        noise -= (noise * x).sum(axis=1, keepdims=True) * x
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        return cos * x + np.sqrt(1 - cos**2) * noise

    emb = np.concatenate([base, partner(base[:20], 0.991), partner(base[20:40], 0.94), base[50:51]]).astype(np.float32)
    tight = tamis.scan(emb, device="cpu", checks=["near_duplicate"], near_duplicate_fraction=0.4)
    choice = tight.summary["threshold_choice"]
    assert choice["threshold"] == 0.95 and tight.summary["checks"]["near_duplicate"]["threshold"] == 0.95
    assert choice["shares"]["0.9"] == pytest.approx(82 / 121) and choice["shares"]["0.95"] == pytest.approx(42 / 121)
    assert tight.counts()["near_duplicate"] == 42
    loose = tamis.scan(emb, device="cpu", checks=["near_duplicate"], near_duplicate_fraction=0.7)
    assert loose.summary["threshold_choice"]["threshold"] == 0.90 and loose.counts()["near_duplicate"] == 82
    none = tamis.scan(emb, device="cpu", checks=["near_duplicate"], near_duplicate_fraction=0.01)
    assert none.summary["threshold_choice"]["threshold"] == 0.995 and "no threshold" in \
        none.summary["threshold_choice"]["reason"]
    with pytest.raises(tamis.ConfigError, match="near_duplicate_fraction"):
        tamis.scan(emb, device="cpu", near_duplicate_fraction=1.5)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("d", [3, 4, 7, 64])
def test_exact_duplicates_are_bit_identical_rows_for_every_word_size(dtype, d):
    """Rows hashed as 64-, 32- or 16-bit words (by row size): the bit-identical rows are found,
    and a row one ulp away in one entry is not among them."""
    rng = np.random.default_rng(d)
    emb = rng.normal(size=(40, d)).astype(dtype)
    emb[[5, 17, 33]] = emb[2]
    emb[9] = emb[2]
    emb[9, d - 1] = np.nextafter(emb[2, d - 1], np.inf, dtype=emb.dtype)     # one ulp off
    r = tamis.scan({"embeddings": emb}, device="cpu", checks=["exact_duplicate"])
    assert flagged(r, "exact_duplicate") == {2, 5, 17, 33}
