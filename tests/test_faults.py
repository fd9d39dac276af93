"""Nothing lost, nothing mixed, nothing unbounded: report folders, parameters and paths under
faults and bad input (each test reproduces a defect found by probing the tool)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import tamis
from tamis import ConfigError


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tamis", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def _strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


# ---------------------------------------------------------------------- non-finite parameters
@pytest.mark.parametrize("check, name, value", [
    ("outlier", "iqr_factor", float("nan")), ("outlier", "iqr_factor", float("inf")),
    ("class_imbalance", "min_fraction", float("nan")), ("near_duplicate", "threshold", float("nan")),
])
def test_non_finite_parameters_are_refused(small_columns, check, name, value):
    with pytest.raises(ConfigError, match=rf"{name}={value!r} is not a finite number"):
        tamis.scan(small_columns, device="cpu", checks=[check], params={check: {name: value}})


def test_non_finite_scan_settings_are_refused(small_columns):
    with pytest.raises(ConfigError, match="threshold=nan"):
        tamis.scan(small_columns, device="cpu", threshold=float("nan"))


@pytest.mark.parametrize("text", ["nan", "inf", "1e400", "-inf"])
def test_cli_non_finite_parameter_is_exit_2(tmp_path, small_columns, text):
    np.savez(tmp_path / "s.npz", **small_columns)
    proc = _cli("scan", str(tmp_path / "s.npz"), "--out", str(tmp_path / "r"), "--device", "cpu",
                "--no-projection", "--param", f"outlier.iqr_factor={text}")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "iqr_factor" in proc.stderr, proc.stderr


def test_summary_json_is_strict_json(tmp_path, small_columns, monkeypatch):
    from tamis.checks.class_imbalance import ClassImbalance

    run = ClassImbalance._run

    def with_nan(self, ctx):   # a check whose summary holds NaN and inf (a ratio over nothing)
        result = run(self, ctx)
        result.summary.update(ratio=float("nan"), worst=np.float64(np.inf), nested={"x": [1.0, float("nan")]})
        return result

    monkeypatch.setattr(ClassImbalance, "_run", with_nan)
    tamis.scan(small_columns, device="cpu", checks=["class_imbalance"], out=tmp_path / "r")
    summary = _strict_json((tmp_path / "r" / "summary.json").read_text())
    found = summary["checks"]["class_imbalance"]
    assert found["ratio"] is None and found["worst"] is None and found["nested"] == {"x": [1.0, None]}
    assert math.isfinite(summary["timings"]["total"])


# ---------------------------------------------------------------------- one row, one line of exclude.txt
@pytest.mark.parametrize("bad", ["b.png\n/data/keep_me.png", "b.png\r\n/data/keep_me.png", "tab\there",
                                 "line\u2028sep", "nel\x85.png"])
def test_a_control_character_in_a_path_is_refused(tmp_path, bad):
    emb = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    paths = np.array(["a.png", bad, "c.png", "d.png", "e.png", "f.png"])
    with pytest.raises(tamis.InputError, match="row 1.*exclude.txt"):
        tamis.scan({"embeddings": emb, "image_paths": paths}, device="cpu")
    np.savez(tmp_path / "s.npz", embeddings=emb, image_paths=paths)
    proc = _cli("scan", str(tmp_path / "s.npz"), "--out", str(tmp_path / "r"), "--device", "cpu", "--no-projection")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "control character" in proc.stderr


def test_a_control_character_in_an_id_is_refused():
    emb = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    with pytest.raises(tamis.InputError, match="'ids'.*row 2"):
        tamis.scan({"embeddings": emb, "ids": np.array(["a", "b", "c\nd"])}, device="cpu")


# ---------------------------------------------------------------------- label values of any integer type
def test_uint64_labels_above_int64_are_kept_as_they_are(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(60, 8)).astype(np.float32)
    labels = np.uint64(2**63) + rng.integers(0, 3, 60).astype(np.uint64)
    split = np.where(np.arange(60) % 3 == 0, "test", "train")
    report = tamis.scan({"embeddings": emb, "labels": labels, "split": split}, device="cpu", out=tmp_path / "r")
    assert set(report.counts()) >= {"label_error", "class_imbalance"}
    counts = report.tables["class_counts"]
    assert set(counts.filter(counts["split"].is_null())["label"].to_pylist()) == {int(v) for v in set(labels)}
    suggested = [v for v in report.samples["suggested_label"].to_pylist() if v is not None]
    assert suggested and set(suggested) <= {int(v) for v in set(labels)}
