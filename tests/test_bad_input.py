"""Every bad input gives a TamisError that names the column or parameter, from the API and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tamis
from tamis import ColumnSpec, ConfigError, InputError, TamisError, load_store


def _npz(tmp_path, name="bad.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def _cases(tmp_path):
    emb = np.ones((4, 3), dtype=np.float32)
    probs_bad_sum = np.full((4, 2), 0.3, dtype=np.float32)
    ragged = pa.table({"embedding": pa.array([[1.0, 2.0], [1.0], [3.0, 4.0]])})
    pq.write_table(ragged, tmp_path / "ragged.parquet")
    pq.write_table(pa.table({"embedding": pa.array([["a", "b"], ["c", "d"]])}), tmp_path / "text.parquet")
    pq.write_table(pa.table({"embedding": pa.array([[1.0, 2.0]]), "label": pa.array([1])}), tmp_path / "ok.parquet")
    (tmp_path / "corrupt.parquet").write_bytes(b"PAR1 this is not parquet")
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 truncated")
    np.save(tmp_path / "vec.npy", np.ones(5, dtype=np.float32))
    return {
        "mismatched lengths": (_npz(tmp_path, "a.npz", embeddings=emb, labels=np.array([0, 1, 2])), None,
                               ["labels", "3 rows", "4"]),
        "1-D embeddings": (str(tmp_path / "vec.npy"), None, ["2-D", "(5,)"]),
        "ragged embeddings": (str(tmp_path / "ragged.parquet"), None, ["ragged", "embedding"]),
        "non-numeric embeddings": (_npz(tmp_path, "b.npz", embeddings=np.array([["a", "b"]])), None,
                                   ["non-numeric", "embeddings"]),
        "non-numeric list values": (str(tmp_path / "text.parquet"), None, ["embedding", "numbers"]),
        "missing named column": (str(tmp_path / "ok.parquet"), ColumnSpec(label="klass"),
                                 ["'klass'", "'embedding'", "'label'"]),
        "empty store": (_npz(tmp_path, "c.npz", embeddings=np.empty((0, 3), dtype=np.float32)), None, ["empty"]),
        "labels with nulls": (pa.table({"embedding": pa.array([[1.0, 0.0], [0.0, 1.0]]),
                                        "label": pa.array(["a", None])}), None, ["label", "null", "row 1"]),
        "pred_probs wrong shape": (_npz(tmp_path, "d.npz", labels=np.zeros(4, int), pred_probs=np.ones(4)), None,
                                   ["pred_probs", "(4,)"]),
        "pred_probs do not sum to 1": (_npz(tmp_path, "e.npz", labels=np.zeros(4, int), pred_probs=probs_bad_sum),
                                       None, ["pred_probs", "sum to 1", "softmax"]),
        "labels outside pred_probs classes": (_npz(tmp_path, "f.npz", labels=np.array([0, 1, 5, 0]),
                                                   pred_probs=np.full((4, 2), 0.5)), None, ["label 5", "2 classes"]),
        "object array in npz": (_write_object_npz(tmp_path), None, ["object array", "dtype"]),
        "corrupt parquet": (str(tmp_path / "corrupt.parquet"), None, ["cannot read", "Parquet"]),
        "corrupt npz": (str(tmp_path / "corrupt.npz"), None, ["cannot read", ".npz"]),
        "no such file": (str(tmp_path / "missing.npz"), None, ["no such file"]),
        "unknown format": (_touch(tmp_path / "store.csv"), None, ["unknown store format", ".csv"]),
    }


def _touch(path):
    path.write_text("a,b\n1,2\n")
    return str(path)


def _write_object_npz(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, embeddings=np.ones((2, 2), dtype=np.float32),
             image_paths=np.array(["a.jpg", None], dtype=object))
    return str(path)


CASE_NAMES = [
    "mismatched lengths", "1-D embeddings", "ragged embeddings", "non-numeric embeddings",
    "non-numeric list values", "missing named column", "empty store", "labels with nulls",
    "pred_probs wrong shape", "pred_probs do not sum to 1", "labels outside pred_probs classes",
    "object array in npz", "corrupt parquet", "corrupt npz", "no such file", "unknown format"]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_api_raises_a_named_error(tmp_path, case):
    source, spec, fragments = _cases(tmp_path)[case]
    with pytest.raises(InputError) as info:
        tamis.scan(source, columns=spec, device="cpu", out=tmp_path / "report")
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert not (tmp_path / "report").exists(), "a failed scan must leave no report behind"


@pytest.mark.parametrize("case", ["mismatched lengths", "ragged embeddings", "missing named column",
                                  "corrupt parquet", "object array in npz", "pred_probs do not sum to 1"])
def test_cli_exit_2_one_line_no_traceback(tmp_path, case):
    source, spec, fragments = _cases(tmp_path)[case]
    args = [sys.executable, "-m", "tamis", "scan", str(source), "--out", str(tmp_path / "r"), "--device", "cpu",
            "--no-projection"]
    if spec is not None and spec.label:
        args += ["--label-col", spec.label]
    proc = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tamis: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert fragments[0] in lines[0]
    assert not (tmp_path / "r" / "summary.json").exists()


def test_config_errors_name_the_parameter(small_columns):
    with pytest.raises(ConfigError, match="device='tpu'"):
        tamis.scan(small_columns, device="tpu")
    with pytest.raises(ConfigError, match="unknown check 'dupes'.*class_imbalance"):
        tamis.scan(small_columns, checks=["dupes"])
    with pytest.raises(ConfigError, match=r"min_fraction=1.5 is not a finite number in \(0, 1\)"):
        tamis.scan(small_columns, device="cpu", params={"class_imbalance": {"min_fraction": 1.5}})
    with pytest.raises(ConfigError, match="unknown parameter 'k'"):
        tamis.scan(small_columns, device="cpu", params={"class_imbalance": {"k": 3}})
    with pytest.raises(ConfigError, match="precision='float8'"):
        tamis.scan(small_columns, device="cpu", precision="float8")
    with pytest.raises(ConfigError, match="unknown column option 'labels'"):
        tamis.scan(small_columns, device="cpu", columns={"labels": "y"})


def test_requested_check_without_its_input_is_an_error(small_columns):
    with pytest.raises(ConfigError, match="class_imbalance.*needs labels.*--label-col"):
        tamis.scan(small_columns["embeddings"], device="cpu", checks=["class_imbalance"])


def test_one_exception_family():
    for cls in (InputError, ConfigError, tamis.DeviceError):
        assert issubclass(cls, TamisError)


def test_missing_column_lists_existing_columns(tmp_path):
    pq.write_table(pa.table({"vec": pa.array([[1.0, 2.0]]), "cls": pa.array([1])}), tmp_path / "s.parquet")
    with pytest.raises(InputError, match=r"'emb'.*--embedding-col.*'vec', 'cls'"):
        load_store(tmp_path / "s.parquet", ColumnSpec(embedding="emb"))
