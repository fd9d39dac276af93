from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tamis import __version__
from tamis.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "tamis", *args], capture_output=True, text=True)


def test_version():
    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"tamis {__version__}"


def test_help_has_examples():
    proc = run("scan", "--help")
    assert proc.returncode == 0
    assert "examples:" in proc.stdout and "--embedding-col" in proc.stdout


def test_usage_error_is_one_line_exit_2():
    proc = run("scan")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "STORE" in proc.stderr
    proc = run("scan", "x.npz", "--device", "tpu")
    assert proc.returncode == 2 and "invalid choice: 'tpu'" in proc.stderr


def test_bad_param_syntax(tmp_path, capsys):
    np.save(tmp_path / "e.npy", np.eye(3, dtype=np.float32))
    assert main(["scan", str(tmp_path / "e.npy"), "--param", "min_fraction=0.1", "--out", str(tmp_path / "o")]) == 2
    assert "CHECK.NAME=VALUE" in capsys.readouterr().err


def test_scan_writes_report_and_summary_table(tmp_path, small_columns):
    np.savez(tmp_path / "s.npz", **small_columns)
    proc = run("scan", str(tmp_path / "s.npz"), "--out", str(tmp_path / "r"), "--device", "cpu",
               "--param", "class_imbalance.min_fraction=0.5", "--projection", "pca")
    assert proc.returncode == 0, proc.stderr
    assert "class_imbalance" in proc.stdout and str(tmp_path / "r") in proc.stdout
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["checks"]["class_imbalance"]["params"]["min_fraction"] == 0.5
    assert summary["projection"]["method"] == "pca" and "report.html" in summary["files"]
    import pyarrow.parquet as pq

    samples = pq.read_table(tmp_path / "r" / "samples.parquet")
    assert {"pca_x", "pca_y"} <= set(samples.column_names)


def test_checks_option_and_listing(tmp_path, small_columns):
    np.savez(tmp_path / "s.npz", **small_columns)
    assert main(["scan", str(tmp_path / "s.npz"), "--checks", "invalid", "--out", str(tmp_path / "r"), "-q",
                 "--no-projection"]) == 0
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["checks_run"] == ["invalid"]
    proc = run("checks")
    assert proc.returncode == 0 and "class_imbalance" in proc.stdout and "needs labels" in proc.stdout


def test_internal_error_is_exit_1_without_traceback(tmp_path, monkeypatch, capsys):
    import tamis.pipeline as pipeline

    def boom(*a, **k):
        raise ZeroDivisionError("planted bug")

    monkeypatch.setattr(pipeline, "scan", boom)
    np.save(tmp_path / "e.npy", np.eye(3, dtype=np.float32))
    assert main(["scan", str(tmp_path / "e.npy"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "internal error: ZeroDivisionError: planted bug" in err and "Traceback" not in err
    with pytest.raises(ZeroDivisionError):
        main(["scan", str(tmp_path / "e.npy"), "--out", str(tmp_path / "o"), "--debug"])


def test_engine_option_is_recorded_and_exact_is_its_alias(tmp_path, small_columns):
    np.savez(tmp_path / "s.npz", **small_columns)
    summaries = {}
    for name, args in (("ivf", ["--engine", "ivf", "--param", "search.n_buckets=3"]), ("alias", ["--exact"]),
                       ("faiss", ["--engine", "faiss"])):
        out = tmp_path / name
        assert main(["scan", str(tmp_path / "s.npz"), "--out", str(out), "-q", "--no-projection", *args]) == 0
        summaries[name] = json.loads((out / "summary.json").read_text())
    ivf = summaries["ivf"]
    assert ivf["config"]["engine"] == "ivf" and ivf["config"]["search_params"] == {"n_buckets": 3}
    assert ivf["search"]["pairs"]["engine"] == "ivf" and 0 <= ivf["search"]["pairs"]["recall"] <= 1
    assert ivf["search"]["pairs"]["buckets"] == 3
    assert ivf["search"]["neighbours"]["k"] == 10
    alias = summaries["alias"]
    assert alias["config"]["engine"] == "exact"
    assert alias["search"]["pairs"] == {"threshold": 0.9, "engine": "exact", "exact": True, "recall": 1.0}
    assert summaries["faiss"]["search"]["neighbours"]["engine"] == "faiss"
    assert summaries["faiss"]["search"]["neighbours"]["exact"] is True


def test_engine_errors_are_one_line_exit_2(tmp_path, small_columns, capsys):
    np.savez(tmp_path / "s.npz", **small_columns)
    store = str(tmp_path / "s.npz")
    proc = run("scan", store, "--engine", "annoy")
    assert proc.returncode == 2 and "invalid choice: 'annoy'" in proc.stderr
    assert main(["scan", store, "--exact", "--engine", "ivf", "--out", str(tmp_path / "o")]) == 2
    assert "--exact and --engine ivf contradict" in capsys.readouterr().err
    assert main(["scan", store, "--engine", "exact", "--param", "search.nprobe=4", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "engine 'exact' takes no parameter nprobe" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_fail_on_gates_a_pipeline(tmp_path, small_columns):
    import json
    import os
    import subprocess
    import sys

    emb = small_columns["embeddings"].copy()
    emb[5] = np.nan
    np.savez(tmp_path / "s.npz", **dict(small_columns, embeddings=emb))

    def run(*extra):
        return subprocess.run([sys.executable, "-m", "tamis", "scan", str(tmp_path / "s.npz"), "--out",
                               str(tmp_path / "r"), "--device", "cpu", "--no-projection", "-q", *extra],
                              capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})

    failed = run("--fail-on", "invalid>0,class_imbalance>50%,near_duplicate>=1000")
    assert failed.returncode == 3, failed.stderr
    assert failed.stderr.strip().splitlines() == ["tamis: fail-on: invalid>0: 1 rows (1.67 %)"]
    gate = json.loads((tmp_path / "r" / "summary.json").read_text())["gate"]
    assert [g["violated"] for g in gate] == [True, False, False] and gate[0]["count"] == 1
    assert run("--fail-on", "invalid>1").returncode == 0
    assert run("--fail-on", "invalid>=1%").returncode == 3          # 1 of 60 rows = 1.67 %
    skipped = run("--checks", "invalid", "--fail-on", "near_duplicate>5")
    assert skipped.returncode == 3 and "did not run" in skipped.stderr
    for bad in ("dupes>0", "invalid=3", "invalid>150%", "invalid>x"):
        proc = run("--fail-on", bad)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, (bad, proc.stderr)


def test_near_duplicate_fraction_option(tmp_path, small_columns):
    import json
    import subprocess
    import sys

    np.savez(tmp_path / "s.npz", **small_columns)
    proc = subprocess.run([sys.executable, "-m", "tamis", "scan", str(tmp_path / "s.npz"), "--out", str(tmp_path / "r"),
                           "--device", "cpu", "--no-projection", "-q", "--near-duplicate-fraction", "0.5"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["threshold_choice"]["threshold"] == 0.90       # no pairs at all: the lowest fits
    assert summary["config"]["near_duplicate_fraction"] == 0.5
    bad = subprocess.run([sys.executable, "-m", "tamis", "scan", str(tmp_path / "s.npz"), "--out", str(tmp_path / "r"),
                          "--near-duplicate-fraction", "2"], capture_output=True, text=True)
    assert bad.returncode == 2 and "near_duplicate_fraction=2.0" in bad.stderr
