"""The metadata check on generated data with planted truth: disguised zeros, sentinels, spelling
variants, a leaky column, an identifier, a shifted column and clean columns (some of them traps:
counts with real zeros, categories one edit apart that are different things); and every input
format handing its other columns to the store."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

import tamis
from tamis.checks.metadata import KINDS
from tamis.checks.shared.tabular import (
    benjamini_hochberg,
    cv_accuracy,
    fold_of,
    ks_test,
    spelling_groups,
    spelling_key,
)
from tamis.io.readers import ParquetReader, load_store, open_partitioned

pd = pytest.importorskip("pandas")

BRANDS = {"Sony": ["SONY", "sony ", " Sony"], "Samsung": ["samsung", "Samsnug", "SAMSUNG "],
          "Panasonic": ["panasonic", "Panasonik"], "Philips": ["Phillips", "PHILIPS"],
          "Information Technology": ["information-technology", "Information  Technology", "INFORMATION_TECHNOLOGY"]}
#: columns that must yield no finding at all
CLEAN = ("clean", "visits", "lang", "model")
METADATA = ["glucose", "age", "brand", "leak", "sample_code", "temperature", "clean", "visits", "lang", "model"]


def planted(n: int = 2000, seed: int = 0) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """A labelled store (3 classes, embeddings a neighbour vote gets ~60 % right, 80 % train / 20 % test)
    and its metadata, with the rows each planted problem sits in."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    emb = (rng.normal(size=(3, 32))[y] * 0.22 + rng.normal(size=(n, 32))).astype(np.float32)
    split = np.where(rng.random(n) < 0.8, "train", "test")
    truth = {}
    glucose = np.clip(rng.normal(120, 25, n), 45, 250).round(1)    # strictly positive, 10 % disguised zeros
    truth["glucose"] = rng.random(n) < 0.10
    glucose[truth["glucose"]] = 0.0
    age = rng.integers(18, 91, n).astype(object)                  # -1 / 999 sentinels, "N/A" / "?" strings
    u = rng.random(n)
    truth["age"] = u < 0.10
    for lo, hi, value in ((0, .03, -1), (.03, .06, 999), (.06, .08, "N/A"), (.08, .10, "?")):
        age[(u >= lo) & (u < hi)] = value
    brand = rng.choice(list(BRANDS), n).astype(object)            # 8 % spelled another way
    truth["brand"] = rng.random(n) < 0.08
    for i in np.flatnonzero(truth["brand"]):
        brand[i] = rng.choice(BRANDS[brand[i]])
    df = pd.DataFrame({
        "embedding": list(emb), "label": y, "split": split, "glucose": glucose, "age": age, "brand": brand,
        "leak": y * 10 + rng.normal(0, 4, n),                      # the label, with noise: ~86 % accurate
        "sample_code": [f"ID-{i:06d}" for i in rng.permutation(n)],
        "temperature": rng.normal(20, 5, n) + np.where(split == "test", 6.0, 0.0),
        "clean": rng.normal(0, 1, n),
        "visits": rng.poisson(2.0, n),                             # a count: its zeros are real
        "lang": rng.choice(["C", "C++", "C#", "Python", "Java"], n),
        "model": rng.choice(["Model A", "Model B", "Alpha 1", "Alpha 2"], n),
    })
    return df, truth


@pytest.fixture(scope="module")
def data():
    return planted()


@pytest.fixture(scope="module")
def scanned(data):
    df, _ = data
    return tamis.scan(df, device="cpu", checks=["label_error", "metadata"])


def _finding(report, column: str, kind: str) -> dict:
    rows = [f for f in report.tables["metadata"].to_pylist() if f["column"] == column and f["kind"] == kind]
    assert len(rows) == 1, f"no single {kind} finding for {column}: {rows}"
    return rows[0]


def _recall_precision(found, truth: np.ndarray) -> tuple[float, float]:
    found, planted_rows = set(found), set(np.flatnonzero(truth).tolist())
    hit = len(found & planted_rows)
    return hit / max(1, len(planted_rows)), hit / max(1, len(found))


def test_planted_values_are_found_with_recall_and_precision(data, scanned):
    _, truth = data
    measured = {}
    for column, kind in (("glucose", "disguised_missing"), ("age", "disguised_missing"),
                         ("brand", "inconsistent_category")):
        measured[column] = _recall_precision(_finding(scanned, column, kind)["rows"], truth[column])
    for column, (recall, precision) in measured.items():
        assert recall >= 0.95 and precision >= 0.9, (column, recall, precision)
    flagged = np.flatnonzero(scanned.flags("metadata"))   # missing or disguised missing: the flagged rows
    recall, precision = _recall_precision(flagged, truth["glucose"] | truth["age"])
    assert recall >= 0.95 and precision >= 0.9


def test_disguised_values_are_named_with_why(scanned):
    age = {v["value"]: v for v in _finding_summary(scanned, "age", "disguised_missing")["values"]}
    assert set(age) == {-1, 999, "N/A", "?"}
    assert "negative" in age[-1]["why"] and "far above" in age[999]["why"]
    glucose = _finding_summary(scanned, "glucose", "disguised_missing")["values"]
    assert [v["value"] for v in glucose] == [0] and "strictly positive" in glucose[0]["why"]


def _finding_summary(report, column: str, kind: str) -> dict:
    found = report.summary["checks"]["metadata"]["columns"][column]["findings"]
    (finding,) = [f for f in found if f["kind"] == kind]
    return finding


def test_spelling_variants_are_grouped_under_the_canonical_spelling(scanned):
    found = _finding_summary(scanned, "brand", "inconsistent_category")["groups"]
    groups = {g["canonical"]: set(g["spellings"]) for g in found}
    assert groups == {name: set(variants) for name, variants in BRANDS.items()}


def test_the_leaky_column_is_ranked_first(scanned):
    table = scanned.tables["metadata"].to_pylist()
    assert (table[0]["column"], table[0]["kind"]) == ("leak", "leaky_predictor")
    predictors = scanned.summary["checks"]["metadata"]["predictors"]["label"]
    assert predictors["embedding"]["sources"] == ["neighbours", "probe"]   # label_error's probabilities, reused
    assert predictors["columns"][0]["column"] == "leak" and predictors["columns"][0]["rank"] == 1
    leak = _finding_summary(scanned, "leak", "leaky_predictor")
    assert leak["accuracy"] > predictors["embedding"]["accuracy"] + 0.1 and leak["target"] == "label"
    assert [f["column"] for f in table if f["kind"] == "leaky_predictor"] == ["leak"]


def test_the_identifier_is_reported_as_such_never_as_a_leak(scanned):
    assert _finding(scanned, "sample_code", "identifier")["rate"] == 1.0
    summary = scanned.summary["checks"]["metadata"]
    assert summary["columns"]["sample_code"]["type"] == "identifier"
    assert "sample_code" not in [c["column"] for c in summary["predictors"]["label"]["columns"]]


def test_the_shifted_column_and_only_it_shifts(scanned):
    shift = _finding_summary(scanned, "temperature", "split_shift")
    assert shift["split"] == "test" and shift["reference"] == "train" and shift["effect"] >= 0.3
    assert shift["q_value"] <= 0.01
    shifted = [f["column"] for f in scanned.tables["metadata"].to_pylist() if f["kind"] == "split_shift"]
    assert shifted == ["temperature"]


def test_clean_columns_have_no_finding(scanned):
    columns = scanned.summary["checks"]["metadata"]["columns"]
    for name in CLEAN:
        assert columns[name]["findings"] == [], name
    assert columns["visits"]["type"] == "numeric" and columns["lang"]["type"] == "category"


def test_type_findings(scanned):
    age = _finding_summary(scanned, "age", "type")
    assert "numbers stored as strings" in age["detail"] and "int, str" in age["detail"]
    assert scanned.summary["checks"]["metadata"]["columns"]["age"]["type"] == "numeric"


def test_the_table_schema_and_order(scanned, tmp_path):
    tamis.write_report(scanned, tmp_path / "r")
    table = pq.read_table(tmp_path / "r" / "metadata.parquet")
    assert table.column_names == ["column", "kind", "rate", "rows", "detail"]
    assert table.schema.field("rows").type == pa.list_(pa.int64())
    assert table.schema.field("rate").type == pa.float64()
    kinds = table["kind"].to_pylist()
    assert [KINDS.index(k) for k in kinds] == sorted(KINDS.index(k) for k in kinds)
    rates = {}
    for kind, rate in zip(kinds, table["rate"].to_pylist()):
        rates.setdefault(kind, []).append(rate)
    for kind, values in rates.items():
        if kind != "leaky_predictor":
            assert values == sorted(values, reverse=True), kind
    for rows in table["rows"].to_pylist():
        assert rows == sorted(rows) and all(0 <= r < 2000 for r in rows)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["checks"]["metadata"]["columns"]["glucose"]["type"] == "numeric"
    assert "metadata" in summary["report"]["galleries"]


def test_scores_and_the_finding_column(data, scanned):
    _, truth = data
    scores = scanned.samples["metadata_score"].to_numpy(zero_copy_only=False)
    flags = scanned.flags("metadata")
    assert (scores[flags] == 0).all() and (scores[~flags] > 0).all()
    odd_spelling = truth["brand"] & ~(truth["glucose"] | truth["age"])
    assert (scores[odd_spelling] == 0.5).all()
    notes = scanned.samples["metadata_finding"].to_pylist()
    row = int(np.flatnonzero(truth["glucose"] & ~truth["age"] & ~truth["brand"])[0])
    assert notes[row] == "glucose=0 (stands for unknown)"
    clean_row = int(np.flatnonzero(~(truth["glucose"] | truth["age"] | truth["brand"]))[0])
    assert notes[clean_row] is None and scores[clean_row] == 1.0


def test_rows_with_an_unusable_embedding_are_left_out():
    df, _ = planted(n=300)
    df.at[0, "embedding"] = np.full(32, np.nan, dtype=np.float32)
    df.at[0, "glucose"] = 0.0
    report = tamis.scan(df, device="cpu", checks=["metadata"])
    assert not report.flags("metadata")[0] and report.samples["metadata_score"][0].as_py() is None
    assert report.flags("metadata").sum() > 0


# ---------------------------------------------------------------------------------------------- leaks, baselines
def test_the_embedding_baseline_is_reused_computed_or_left_out(data):
    df, _ = data
    alone = tamis.scan(df, device="cpu", checks=["metadata"]).summary["checks"]["metadata"]["predictors"]["label"]
    assert alone["embedding"] is None                        # nothing built it: chance only
    computed = tamis.scan(df, device="cpu", checks=["metadata"],
                          params={"metadata": {"embedding_baseline": "compute"}})
    assert computed.summary["checks"]["metadata"]["predictors"]["label"]["embedding"]["accuracy"] > 0.4
    none = tamis.scan(df, device="cpu", checks=["label_error", "metadata"],
                      params={"metadata": {"embedding_baseline": "none"}})
    assert none.summary["checks"]["metadata"]["predictors"]["label"]["embedding"] is None


def test_a_column_that_tells_the_splits_apart():
    rng = np.random.default_rng(3)
    n = 1000
    split = np.where(rng.random(n) < 0.7, "train", "test")
    batch = np.where(split == "train", "b1", np.where(rng.random(n) < 0.9, "b2", "b1"))
    report = tamis.scan({"labels": rng.integers(0, 2, n), "split": split, "batch": batch,
                         "noise": rng.normal(size=n)}, device="cpu", checks=["metadata"])
    leak = _finding_summary(report, "batch", "leaky_predictor")
    assert leak["target"] == "split" and leak["accuracy"] > 0.9
    assert report.summary["checks"]["metadata"]["columns"]["noise"]["findings"] == []


def test_pima_like_zeros_are_told_from_real_zeros():
    rng = np.random.default_rng(4)
    n = 800
    insulin = np.round(np.exp(rng.normal(np.log(120), 0.6, n)))
    insulin[rng.random(n) < 0.45] = 0                             # Pima's Insulin: ~half disguised zeros
    report = tamis.scan({"labels": rng.integers(0, 2, n), "insulin": insulin,
                         "pregnancies": rng.poisson(3.8, n),        # zero is a real count
                         "rain_mm": np.where(rng.random(n) < 0.6, 0, np.round(rng.exponential(3, n), 1)),
                         "capital_gain": np.where(rng.random(n) < 0.9, 0, np.round(np.exp(rng.normal(8, 1.2, n))))},
                        device="cpu", checks=["metadata"])
    columns = report.summary["checks"]["metadata"]["columns"]
    assert [f["kind"] for f in columns["insulin"]["findings"]] == ["disguised_missing"]
    for name in ("pregnancies", "rain_mm", "capital_gain"):
        assert columns[name]["findings"] == [], name


# ---------------------------------------------------------------------------------------------- the analyses
def test_spelling_keys_and_groups():
    assert spelling_key(" Hewlett-Packard ") == spelling_key("hewlett_packard") == "hewlettpackard"
    assert spelling_key("Café") == spelling_key("CAFE")
    assert len({spelling_key(v) for v in ("C", "C++", "C#")}) == 3
    keys = ["samsung", "samsnug", "panasonic", "panasonik", "modela", "modelb", "alpha1", "alpha2", "sony", "sonya"]
    counts = np.array([100, 5, 100, 3, 100, 90, 50, 2, 100, 2])
    parent = spelling_groups(keys, counts, 0.2)
    joined = {keys[i]: keys[p] for i, p in enumerate(parent) if p != i}
    # a swap and a substitution join their word; frequent look-alikes, other digits and short words do not
    assert joined == {"samsnug": "samsung", "panasonik": "panasonic"}


def test_spelling_groups_are_a_star_not_a_chain():
    keys = ["abcdef", "abcdeg", "abcdgg"]
    parent = spelling_groups(keys, np.array([1000, 100, 10]), 0.2)
    assert parent.tolist() == [0, 0, 2]   # abcdgg is one edit from abcdeg only, which is no root


def test_cv_accuracy_matches_a_loop_over_the_folds():
    rng = np.random.default_rng(1)
    m, levels, classes, folds = 503, 7, 4, 5
    codes, y = rng.integers(0, levels - 1, m), rng.integers(0, classes, m)
    fold = fold_of(m, folds)
    codes[np.flatnonzero(fold == 0)[:5]] = levels - 1   # a level only fold 0 holds: unseen in its training
    hit = base = 0
    for j in range(folds):
        train, test = fold != j, fold == j
        majority = np.argmax(np.bincount(y[train], minlength=classes))
        for i in np.flatnonzero(test):
            seen = y[train & (codes == codes[i])]
            guess = np.argmax(np.bincount(seen, minlength=classes)) if len(seen) else majority
            hit += guess == y[i]
            base += majority == y[i]
    assert cv_accuracy(codes, levels, y, classes, fold, folds) == (hit / m, base / m)


def test_ks_and_benjamini_hochberg():
    rng = np.random.default_rng(0)
    same = ks_test(rng.normal(size=500), rng.normal(size=500))
    moved = ks_test(rng.normal(size=500), rng.normal(1.0, 1.0, size=500))
    assert same[0] < 0.1 < moved[0] and moved[1] < 1e-10 < same[1]
    q = benjamini_hochberg(np.array([0.01, 0.04, 0.03, 0.5]))
    np.testing.assert_allclose(q, [0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.5])


# ---------------------------------------------------------------------------------------------- formats and options
def _arrow(df: pd.DataFrame) -> pa.Table:
    """The planted frame as Arrow: ``age`` as strings (Arrow holds one type), plus a list column."""
    frame = df.assign(age=df["age"].astype(str))
    table = pa.Table.from_pandas(frame.drop(columns=["embedding"]), preserve_index=False)
    emb = np.stack(df["embedding"].to_numpy()).astype(np.float32)
    table = table.append_column("embedding", pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1]))
    return table.append_column("tags", pa.array([["a", "b"]] * len(df)))


@pytest.fixture(scope="module")
def small():
    df, truth = planted(n=400, seed=1)
    return df, truth


def _check_store(store, skipped: str | None = "tags"):
    assert sorted(store.metadata.column_names) == sorted(METADATA)
    if skipped:
        assert "nested" in store.metadata_skipped[skipped] or "shape" in store.metadata_skipped[skipped]
    assert "metadata" in store.available


@pytest.mark.parametrize("fmt", ["npz", "parquet", "parquet_shards", "feather", "arrow_stream", "pandas", "dict",
                                 "table"])
def test_every_format_provides_the_other_columns(fmt, small, tmp_path):
    df, truth = small
    table = _arrow(df)
    if fmt == "npz":
        arrays = {name: np.asarray(table[name].to_pylist()) for name in table.column_names
                  if name not in ("embedding", "tags")}
        arrays["embeddings"] = np.stack(df["embedding"].to_numpy())
        arrays["tags"] = np.ones((len(df), 3))                        # a matrix: no metadata
        np.savez(tmp_path / "s.npz", **arrays)
        source = tmp_path / "s.npz"
    elif fmt == "parquet":
        pq.write_table(table, tmp_path / "s.parquet")
        source = tmp_path / "s.parquet"
    elif fmt == "parquet_shards":
        (tmp_path / "shards").mkdir()
        for i, start in enumerate(range(0, len(df), 150)):
            pq.write_table(table.slice(start, 150), tmp_path / "shards" / f"part-{i}.parquet")
        source = tmp_path / "shards"
    elif fmt == "feather":
        feather.write_feather(table, tmp_path / "s.feather")
        source = tmp_path / "s.feather"
    elif fmt == "arrow_stream":
        with pa.OSFile(str(tmp_path / "s.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        source = tmp_path / "s.arrow"
    elif fmt == "pandas":
        source = df.assign(tags=[["a"]] * len(df))
    elif fmt == "dict":
        source = {**{c: df[c].to_numpy() for c in df.columns if c != "embedding"},
                  "embedding": np.stack(df["embedding"].to_numpy()), "tags": np.ones((len(df), 2))}
    else:
        source = table
    _check_store(load_store(source))
    report = tamis.scan(source, device="cpu", checks=["metadata"])
    found = _finding(report, "glucose", "disguised_missing")["rows"]
    assert _recall_precision(found, truth["glucose"]) == (1.0, 1.0)
    found = _finding(report, "age", "disguised_missing")["rows"]
    assert _recall_precision(found, truth["age"]) == (1.0, 1.0)


def test_a_huggingface_folder_provides_the_other_columns(small, tmp_path):
    datasets = pytest.importorskip("datasets")
    df, _ = small
    datasets.Dataset(_arrow(df)).save_to_disk(str(tmp_path / "ds"))
    _check_store(load_store(tmp_path / "ds"))


def test_the_dask_client_store_reads_them_too(small, tmp_path):
    df, _ = small
    pq.write_table(_arrow(df), tmp_path / "s.parquet")
    store, _ = open_partitioned(tmp_path / "s.parquet", metadata=None)
    _check_store(store)
    store, _ = open_partitioned(tmp_path / "s.parquet")                # by default: not read
    assert store.metadata is None


def test_metadata_cols_chooses_the_columns(small, tmp_path):
    df, _ = small
    pq.write_table(_arrow(df), tmp_path / "s.parquet")
    report = tamis.scan(tmp_path / "s.parquet", device="cpu", checks=["metadata"], metadata_cols="glucose, brand")
    assert list(report.summary["checks"]["metadata"]["columns"]) == ["glucose", "brand"]
    assert report.summary["config"]["metadata_cols"] == ["glucose", "brand"]
    with pytest.raises(tamis.ConfigError,
                       match=r"'nope', which is not in the store; its other columns are: .*'glucose'"):
        tamis.scan(tmp_path / "s.parquet", device="cpu", metadata_cols=["nope"])
    with pytest.raises(tamis.ConfigError, match="'label', which holds the store's labels"):
        tamis.scan(tmp_path / "s.parquet", device="cpu", metadata_cols=["label"])
    with pytest.raises(tamis.InputError, match="'tags' .*lists or nested values"):
        tamis.scan(tmp_path / "s.parquet", device="cpu", metadata_cols=["tags"])
    with pytest.raises(tamis.ConfigError, match="no check of this scan reads metadata columns"):
        tamis.scan(tmp_path / "s.parquet", device="cpu", checks=["invalid"], metadata_cols=["glucose"])
    with pytest.raises(tamis.ConfigError, match="is not a list of column names"):
        tamis.scan(tmp_path / "s.parquet", device="cpu", metadata_cols=[3])


def test_other_columns_are_not_read_when_no_check_reads_them(small, tmp_path, monkeypatch):
    df, _ = small
    pq.write_table(_arrow(df), tmp_path / "s.parquet")
    asked = []
    original = ParquetReader.read_columns

    def spy(self, names=None, start=0, stop=None):
        asked.append(names)
        return original(self, names, start, stop)

    monkeypatch.setattr(ParquetReader, "read_columns", spy)
    tamis.scan(tmp_path / "s.parquet", device="cpu", checks=["class_imbalance"])
    assert asked and all(names is not None and "glucose" not in names for names in asked)
    asked.clear()
    tamis.scan(tmp_path / "s.parquet", device="cpu", checks=["metadata"])
    assert any("glucose" in names for names in asked) and not any("tags" in names for names in asked)


def test_a_store_without_other_columns_skips_the_check(small_columns):
    report = tamis.scan(small_columns, device="cpu")
    (reason,) = [s["reason"] for s in report.summary["checks_skipped"] if s["check"] == "metadata"]
    assert "needs columns besides the inputs" in reason
    with pytest.raises(tamis.ConfigError, match="check 'metadata' needs columns besides the inputs.*--metadata-cols"):
        tamis.scan(small_columns, device="cpu", checks=["metadata"])


def test_cli_metadata_cols(small, tmp_path):
    df, _ = small
    pq.write_table(_arrow(df), tmp_path / "s.parquet")
    run = [sys.executable, "-m", "tamis", "scan", str(tmp_path / "s.parquet"), "--device", "cpu", "--no-projection",
           "--checks", "metadata", "--out"]
    proc = subprocess.run(run + [str(tmp_path / "bad"), "--metadata-cols", "glucose,nope"], capture_output=True,
                          text=True)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "'nope'" in proc.stderr and "'glucose'" in proc.stderr
    assert not (tmp_path / "bad" / "summary.json").exists()
    proc = subprocess.run(run + [str(tmp_path / "ok"), "--metadata-cols", "glucose", "-q"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "ok" / "summary.json").read_text())
    assert list(summary["checks"]["metadata"]["columns"]) == ["glucose"]
    assert pq.read_table(tmp_path / "ok" / "metadata.parquet")["column"].to_pylist() == ["glucose"]
