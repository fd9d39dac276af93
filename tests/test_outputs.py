"""The report files are a public contract: names, columns, types and atomic writing."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tamis

CONTRACT_COLUMNS = ["row", "id", "path", "label", "split"]


@pytest.fixture
def saved(tmp_path, small_columns):
    emb = small_columns["embeddings"].copy()
    emb[5] = np.nan
    emb[9] = 0
    cols = dict(small_columns, embeddings=emb)
    report = tamis.scan(cols, device="cpu", out=tmp_path / "out")
    return report, tmp_path / "out"


def test_files_and_samples_schema(saved):
    report, out = saved
    assert {"samples.parquet", "summary.json", "exclude.txt", "exclude.parquet", "class_counts.parquet"} <= \
        set(os.listdir(out))
    samples = pq.read_table(out / "samples.parquet")
    assert samples.column_names[:5] == CONTRACT_COLUMNS
    assert samples["row"].to_pylist() == list(range(60))
    for check in ("invalid", "class_imbalance"):
        assert samples.schema.field(f"is_{check}_issue").type == pa.bool_()
        assert samples.schema.field(f"{check}_score").type == pa.float64()
        scores = samples[f"{check}_score"].drop_null().to_numpy()
        assert ((scores >= 0) & (scores <= 1)).all()
    assert samples["id"].to_pylist()[:2] == ["s0", "s1"]
    assert samples["path"].to_pylist()[5] == "img/005.jpg"


def test_invalid_rows_excluded_everywhere(saved):
    report, out = saved
    samples = report.samples
    assert np.flatnonzero(samples["is_invalid_issue"].to_numpy(zero_copy_only=False)).tolist() == [5, 9]
    # invalid rows are not scored by the other checks
    assert samples["class_imbalance_score"].is_null().to_pylist()[5]
    lines = (out / "exclude.txt").read_text().splitlines()
    ex = pq.read_table(out / "exclude.parquet")
    assert ex.column_names == ["row", "id", "path", "reason", "score"]
    assert lines == ex["path"].to_pylist(), "exclude.txt lists exclude.parquet's paths, in row order"
    reasons = dict(zip(ex["row"].to_pylist(), ex["reason"].to_pylist()))
    assert reasons[5] == "invalid" and reasons[9] == "invalid"
    for check in report.summary["checks_run"]:
        if check != "invalid":
            flags = samples[f"is_{check}_issue"].to_pylist()
            assert not flags[5] and not flags[9], f"{check} looked at an invalid row"


METADATA_SKIPPED = {"check": "metadata", "reason": "needs columns besides the inputs (embedding, label, path, split, id, "
                    "pred_probs, quality, group), holding one number, string, bool or date per row, and the store has "
                    "none (a .npy store holds embeddings only; list and nested columns are not read)"}


def test_summary_json(saved):
    _, out = saved
    summary = json.loads((out / "summary.json").read_text())
    for key in ("issues", "checks_run", "checks_skipped", "config", "versions", "device", "timings", "store"):
        assert key in summary
    assert summary["issues"]["invalid"] == 2
    assert summary["checks_run"] == ["invalid", "exact_duplicate", "near_duplicate", "conflicting_labels",
                                     "leakage", "label_error", "ambiguous", "class_overlap", "outlier",
                                     "off_topic", "split_shift", "class_imbalance"]
    assert summary["checks_skipped"] == [METADATA_SKIPPED,
                                         {"check": "image_properties", "reason":
                                          "needs a folder to read the images from, and the store is in memory: "
                                          "pass image_root=DIR (--image-root DIR)"}]
    assert summary["device"]["backend"] == "cpu"
    assert summary["store"]["n_valid"] == 58
    assert "check:class_imbalance" in summary["timings"] and "total" in summary["timings"]


def test_skipped_checks_are_reported_with_reason(small_columns):
    report = tamis.scan(small_columns["embeddings"], device="cpu")
    assert report.summary["checks_skipped"] == [
        {"check": "conflicting_labels", "reason": "needs labels, which the store does not have"},
        {"check": "leakage", "reason": "needs split, which the store does not have"},
        {"check": "label_error", "reason": "needs labels, which the store does not have"},
        {"check": "ambiguous", "reason": "needs labels, which the store does not have"},
        {"check": "class_overlap", "reason": "needs labels, which the store does not have"},
        {"check": "off_topic", "reason": "needs labels, which the store does not have"},
        {"check": "split_shift", "reason": "needs split, which the store does not have"},
        {"check": "class_imbalance", "reason": "needs labels, which the store does not have"},
        {"check": "image_properties", "reason": "needs paths, which the store does not have"},
        METADATA_SKIPPED]
    assert "is_class_imbalance_issue" not in report.samples.column_names


def test_labels_and_pred_probs_only_store():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5], [0.7, 0.3]])
    report = tamis.scan({"labels": np.array([0, 1, 1, 0]), "pred_probs": probs}, device="cpu")
    assert report.summary["checks_run"] == ["label_error", "ambiguous", "class_overlap", "class_imbalance"]
    assert {s["check"] for s in report.summary["checks_skipped"]} == {
        "invalid", "exact_duplicate", "near_duplicate", "conflicting_labels", "leakage", "outlier", "off_topic",
        "split_shift", "image_properties", "metadata"}


def test_exclude_txt_falls_back_to_ids_then_rows(tmp_path):
    emb = np.eye(4, dtype=np.float32)
    emb[1] = np.inf
    tamis.scan({"embeddings": emb, "ids": np.array(["a", "b", "c", "d"])}, device="cpu", out=tmp_path / "a",
               checks=["invalid"])
    assert (tmp_path / "a" / "exclude.txt").read_text() == "b\n"
    tamis.scan(emb, device="cpu", out=tmp_path / "b", checks=["invalid"])
    assert (tmp_path / "b" / "exclude.txt").read_text() == "1\n"


def test_report_round_trip(saved):
    report, out = saved
    loaded = tamis.read_report(out)
    assert loaded.samples.equals(report.samples)
    assert loaded.exclusions.equals(report.exclusions)
    assert loaded.tables["class_counts"].equals(report.tables["class_counts"])
    assert loaded.counts() == report.counts()
    worst = loaded.issues("class_imbalance")
    assert set(worst["label"].to_pylist()) == {2}


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path, small_columns, monkeypatch):
    report = tamis.scan(small_columns, device="cpu")
    out = tmp_path / "out"
    tamis.write_report(report, out)
    first = (out / "summary.json").read_text()

    import tamis.report.folder as report_module

    def fail(path, data):
        raise OSError("disk full")

    monkeypatch.setattr(report_module, "write_json", fail)
    with pytest.raises(OSError, match="disk full"):
        tamis.write_report(report, out)
    assert (out / "summary.json").read_text() == first, "the old report must survive a failed save"
    assert [p for p in os.listdir(out) if p.startswith(".")] == [".tamis.lock"], "temporary files were left behind"


def test_save_into_a_file_path_is_an_error(tmp_path, small_columns):
    (tmp_path / "f").write_text("x")
    with pytest.raises(tamis.InputError, match="output path is a file"):
        tamis.scan(small_columns, device="cpu", out=tmp_path / "f")


def test_report_files_get_the_usual_permissions(tmp_path, small_columns):
    old = os.umask(0o022)
    try:
        tamis.scan(small_columns, device="cpu", out=tmp_path / "out")
    finally:
        os.umask(old)
    for name in os.listdir(tmp_path / "out"):
        mode = (tmp_path / "out" / name).stat().st_mode & 0o777
        assert mode in (0o644, 0o755), f"{name} has mode {oct(mode)}: temporary files are private until renamed"


def test_a_row_excluded_by_several_checks_lists_them_in_check_order_with_the_lowest_score():
    emb = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [np.nan, 0, 0]], dtype=np.float32)
    paths = np.array(["a", "b", "c", "d"])
    split = np.array(["train", "test", "train", "train"])
    r = tamis.scan({"embeddings": emb, "image_paths": paths, "split": split}, device="cpu",
                   checks=["invalid", "exact_duplicate", "near_duplicate", "leakage"])
    ex = r.exclusions.to_pylist()
    assert [e["row"] for e in ex] == [1, 3]
    assert ex[0]["reason"] == "exact_duplicate,near_duplicate,leakage"
    assert ex[0]["score"] == 0.0                 # exact_duplicate scores a copy 0
    assert ex[1]["reason"] == "invalid" and ex[1]["score"] == 0.0
    assert r.summary["n_excluded"] == 2


def test_summary_records_in_memory_parameters_without_their_data(tmp_path, small_columns):
    refs = {"embeddings": small_columns["embeddings"][::3], "labels": small_columns["labels"][::3]}
    tamis.scan(small_columns, device="cpu", params={"off_topic": {"references": refs}}, out=tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    described = summary["checks"]["off_topic"]["params"]["references"]
    assert described.startswith("<in-memory data") and "(20, 16)" in described
    assert summary["config"]["params"]["off_topic"]["references"] == described
    assert (tmp_path / "summary.json").stat().st_size < 20_000


def test_keep_mask_and_keep_parquet_agree_with_exclude(tmp_path, small_columns):
    emb = small_columns["embeddings"].copy()
    emb[4] = np.nan
    emb[11] = emb[10]
    report = tamis.scan(dict(small_columns, embeddings=emb), device="cpu", out=tmp_path / "r")
    mask = report.keep_mask()
    excluded = set(report.exclusions["row"].to_pylist())
    assert mask.shape == (60,) and {4, 11} <= excluded and set(np.flatnonzero(~mask)) == excluded
    keep = pq.read_table(tmp_path / "r" / "keep.parquet")
    assert keep.column_names == ["row", "id", "keep"]
    assert keep["keep"].to_pylist() == mask.tolist() and keep["row"].to_pylist() == list(range(60))
    assert tamis.read_report(tmp_path / "r").keep_mask().tolist() == mask.tolist()
