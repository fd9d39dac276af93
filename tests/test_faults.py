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


# ---------------------------------------------------------------------- a report folder is replaced as one unit
def _labelled(n=80, seed=0):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, 8)).astype(np.float32)
    emb[n - 4:] = emb[:4]                                    # some copies: pairs, groups, knn
    labels = rng.integers(0, 3, n)
    split = np.where(np.arange(n) % 4 == 0, "test", "train")
    return {"embeddings": emb, "labels": labels, "split": split,
            "image_paths": np.array([f"img/{i}.png" for i in range(n)])}


def _owned(folder) -> set[str]:
    return {p.name for p in folder.iterdir()} - {".tamis.lock"}


def test_a_reused_out_holds_only_the_new_report(tmp_path):
    out = tmp_path / "R"
    tamis.scan(_labelled(), device="cpu", out=out)
    assert {"label_errors.parquet", "pairs.parquet", "knn.npz", "groups.parquet"} <= _owned(out)
    (out / "notes.txt").write_text("mine")                     # a file tamis did not write stays
    tamis.scan(_labelled(50, seed=1), device="cpu", checks=["invalid"], out=out)
    summary = json.loads((out / "summary.json").read_text())
    assert _owned(out) == set(summary["files"]) | {"notes.txt"}
    assert tamis.read_report(out).samples.num_rows == 50


def test_a_write_killed_between_two_renames_leaves_no_report_and_the_next_cleans_up(tmp_path, monkeypatch):
    import tamis.report.folder as folder

    out = tmp_path / "R"
    tamis.scan(_labelled(), device="cpu", out=out)
    old_files = set(json.loads((out / "summary.json").read_text())["files"])
    moves = []
    real = folder.move_into_place

    def dies_after_one(new, target):
        if moves:
            raise KeyboardInterrupt   # the process dies here
        moves.append(target.name)
        real(new, target)

    monkeypatch.setattr(folder, "move_into_place", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        tamis.scan(_labelled(50, seed=1), device="cpu", checks=["invalid"], out=out)
    assert moves == ["samples.parquet"] and not (out / "summary.json").exists()
    with pytest.raises(tamis.InputError, match="no summary.json"):
        tamis.read_report(out)
    monkeypatch.setattr(folder, "move_into_place", real)
    tamis.scan(_labelled(50, seed=1), device="cpu", checks=["invalid"], out=out)
    new_files = set(json.loads((out / "summary.json").read_text())["files"])
    assert _owned(out) == new_files and not (old_files - new_files) & _owned(out)
    assert tamis.read_report(out).samples.num_rows == 50


def test_read_report_refuses_a_mixed_folder(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    tamis.scan(_labelled(), device="cpu", out=a)
    tamis.scan(_labelled(), device="cpu", out=b)            # the same store: only the report_id differs
    (b / "samples.parquet").replace(a / "samples.parquet")
    with pytest.raises(tamis.InputError, match="samples.parquet belongs to another report"):
        tamis.read_report(a)
    (b / "knn.npz").replace(a / "knn.npz")
    (a / "samples.parquet").unlink()
    with pytest.raises(tamis.InputError, match="lists samples.parquet, which is not there"):
        tamis.read_report(a)


def test_a_second_scan_into_a_folder_being_written_is_refused(tmp_path):
    import fcntl

    out = tmp_path / "R"
    out.mkdir()
    with open(out / ".tamis.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(tamis.OutputError, match="another tamis scan is writing"):
            tamis.scan(_labelled(), device="cpu", out=out)
    assert _owned(out) == set()


SLOW_WRITE = ("import sys, time, tamis.report.folder as f\n"
              "real = f.move_into_place\n"
              "def slow(a, b):\n    real(a, b); print('moved', b.name, flush=True); time.sleep(0.2)\n"
              "f.move_into_place = slow\n"
              "from tamis.cli import main\n"
              "sys.exit(main(sys.argv[1:]))\n")


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM", "SIGINT"])
def test_a_scan_killed_during_the_write_leaves_one_whole_report_or_none(tmp_path, sig):
    """Old report: 80 rows, one check (few files). New: 50 rows, every check (many files), killed
    after 0, 3 or 8 files moved in, or not at all. A folder with a summary.json always reads back
    whole; the next scan (30 rows, one check) leaves exactly its own files."""
    import signal

    stores = {}
    for name, n, seed in (("old", 80, 0), ("new", 50, 1), ("next", 30, 2)):
        stores[name] = tmp_path / f"{name}.npz"
        np.savez(stores[name], **_labelled(n, seed=seed))
    one = ["--device", "cpu", "--no-projection", "-q"]
    seen = set()
    for cut in (0, 3, 8, None):
        out = tmp_path / f"R{cut}"
        assert _cli("scan", str(stores["old"]), "--out", str(out), *one, "--checks", "invalid").returncode == 0
        proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITE, "scan", str(stores["new"]), "--out", str(out), *one],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if cut is not None:
            for _ in range(cut + 1):          # the first line: the first move is under way
                if not proc.stdout.readline():
                    break
            proc.send_signal(getattr(signal, sig))
        _, err = proc.communicate()
        if cut is None:
            assert proc.returncode == 0, err
        elif sig != "SIGKILL" and proc.returncode != 0:
            assert proc.returncode == (143 if sig == "SIGTERM" else 130), err
            assert "never a mix" in err and "Traceback" not in err
            assert not [p for p in out.iterdir() if p.name.startswith((".tamis-staging", ".thumbs-"))]
        if (out / "summary.json").exists():
            rows = tamis.read_report(out).samples.num_rows
            assert rows in (80, 50)
            seen.add(rows)
        else:
            seen.add(None)
            with pytest.raises(tamis.InputError):
                tamis.read_report(out)
        assert _cli("scan", str(stores["next"]), "--out", str(out), *one, "--checks", "invalid").returncode == 0
        summary = json.loads((out / "summary.json").read_text())
        assert _owned(out) == set(summary["files"]), "a file of a killed run was left behind"
        assert tamis.read_report(out).samples.num_rows == 30
    assert {None, 50} <= seen


# ---------------------------------------------------------------------- output problems before the scan, exit 2
def test_out_inside_a_parquet_folder_store_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = _labelled()
    store = tmp_path / "shards"
    store.mkdir()
    pq.write_table(pa.table({"embeddings": list(cols["embeddings"]), "labels": cols["labels"]}), store / "a.parquet")
    with pytest.raises(ConfigError, match="inside the store folder"):
        tamis.scan(store, device="cpu", out=store / "report")
    proc = _cli("scan", str(store), "--out", str(store / "report"), "--device", "cpu", "--no-projection")
    assert proc.returncode == 2 and "inside the store folder" in proc.stderr and not (store / "report").exists()


def test_an_out_under_a_file_is_exit_2_before_the_scan(tmp_path, small_columns):
    (tmp_path / "f").write_text("x")
    np.savez(tmp_path / "s.npz", **small_columns)
    proc = _cli("scan", str(tmp_path / "s.npz"), "--out", str(tmp_path / "f" / "r"), "--device", "cpu",
                "--no-projection")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "is a file" in proc.stderr


def test_a_full_disk_is_an_output_error_naming_the_path(tmp_path, small_columns, monkeypatch):
    import errno

    import tamis.report.folder as folder

    def full(path, table):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(folder, "write_parquet", full)
    with pytest.raises(tamis.OutputError, match="No space left on device"):
        tamis.scan(small_columns, device="cpu", out=tmp_path / "r")
    assert not (tmp_path / "r").exists(), "a folder the failed write created is removed"


def test_plots_without_matplotlib_and_a_missing_image_root_fail_before_the_scan(tmp_path, small_columns,
                                                                               monkeypatch):
    import tamis.checks.base as base

    ran = []
    monkeypatch.setattr(base.Check, "_check_contract", lambda self, result, n: ran.append(self.name))
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ConfigError, match="matplotlib"):
        tamis.scan(small_columns, device="cpu", out=tmp_path / "r", plots=True)
    with pytest.raises(ConfigError, match="image_root"):
        tamis.scan(small_columns, device="cpu", out=tmp_path / "r", image_root=tmp_path / "nope")
    assert ran == [] and not (tmp_path / "r").exists()


def test_sigterm_is_handled_like_ctrl_c(tmp_path):
    import signal

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "s.npz", embeddings=rng.normal(size=(40_000, 64)).astype(np.float32),
             labels=rng.integers(0, 10, 40_000))
    proc = subprocess.Popen([sys.executable, "-m", "tamis", "scan", str(tmp_path / "s.npz"), "--out",
                             str(tmp_path / "r"), "--device", "cpu", "--no-projection", "-v", "--engine", "exact"],
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "running" in line:
            break
    proc.send_signal(signal.SIGTERM)
    err = proc.stderr.read()
    assert proc.wait() == 143, err
    assert "terminated" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------- the pairs a scan may hold are bounded
def _dense(n=3000, d=4, seed=0):
    """Rows on a few tight clusters: almost every pair is above 0.90."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(3, d))[rng.integers(0, 3, n)] * 10 + rng.normal(size=(n, d))).astype(np.float32)


@pytest.mark.parametrize("engine", ["exact", "ivf"])
def test_a_threshold_that_gives_too_many_pairs_stops_with_a_clear_error(engine):
    emb = _dense()
    with pytest.raises(tamis.PairLimitError, match=r"threshold 0.5 gives more than 100,000 pairs.*raise the threshold"):
        tamis.scan(emb, device="cpu", checks=["near_duplicate"], threshold=0.5, max_pairs=100_000, engine=engine)


def test_the_budget_stops_the_search_early(monkeypatch):
    """The search stops when the budget is spent, not after it has collected every pair."""
    import tamis.engine.search.tiles as tiles

    taken = []
    real = tiles.PairBudget.take

    def record(self, n):
        taken.append(self.taken + n)
        real(self, n)

    monkeypatch.setattr(tiles.PairBudget, "take", record)
    with pytest.raises(tamis.PairLimitError):
        tamis.scan(_dense(6000), device="cpu", checks=["near_duplicate"], threshold=0.5, max_pairs=50_000,
                   engine="exact", search_params={"block_rows": 64})
    all_pairs = 6000 * 5999 // 2
    assert max(taken) < all_pairs / 10, "the search ran on long past the budget"


def test_only_the_sweep_exploding_cuts_the_sweep(monkeypatch):
    from tamis.engine import artifacts

    real = artifacts.pairs_at
    asked = []

    def pairs_at(ctx, threshold):    # pairs below 0.95 are "too many": the sweep's 0.90 explodes
        asked.append(threshold)
        if threshold < 0.95:
            raise tamis.PairLimitError("too many", threshold, 10)
        return real(ctx, threshold)

    import tamis.checks.near_duplicate as nd

    monkeypatch.setattr(nd, "pairs_at", pairs_at)
    report = tamis.scan(_dense(300), device="cpu", checks=["near_duplicate"], threshold=0.95)
    summary = report.summary["checks"]["near_duplicate"]
    assert asked == [0.90, 0.95] and "sweep starts at 0.95" in summary["sweep_cut"]
    assert [s["threshold"] for s in summary["sweep"]][0] == 0.95


def test_cli_too_many_pairs_is_exit_2(tmp_path):
    np.savez(tmp_path / "s.npz", embeddings=_dense())
    proc = _cli("scan", str(tmp_path / "s.npz"), "--out", str(tmp_path / "r"), "--device", "cpu", "--no-projection",
                "--checks", "near_duplicate", "--threshold", "0.5", "--max-pairs", "100000")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--max-pairs" in proc.stderr, proc.stderr


def test_the_default_budget_follows_the_machine():
    from tamis.config import BYTES_PER_PAIR, PAIR_MEMORY_SHARE, default_max_pairs

    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert default_max_pairs() == max(1_000_000, int(total * PAIR_MEMORY_SHARE / BYTES_PER_PAIR))


# ---------------------------------------------------------------------- rough messages and silent semantics
@pytest.mark.parametrize("kwargs, match", [
    (dict(device=None), "device=None"), (dict(params={"outlier": 3}), "params=.*dict of check name"),
    (dict(params=[1]), "params=\\[1\\]"), (dict(checks=3), "checks=3 is not a list"),
    (dict(search_params=[1]), "search_params=\\[1\\]"),
])
def test_wrong_argument_types_are_named_errors(small_columns, kwargs, match):
    with pytest.raises(tamis.TamisError, match=match):
        tamis.scan(small_columns, **kwargs)


@pytest.mark.parametrize("content", [b"hello, this is text\n", b"\x80\x04\x95\x0b\x00\x00\x00\x00\x00\x00\x00}\x94."])
def test_a_file_named_npz_that_is_not_one_gets_no_unpickling_advice(tmp_path, content):
    (tmp_path / "s.npz").write_bytes(content)
    proc = _cli("scan", str(tmp_path / "s.npz"), "--out", str(tmp_path / "r"), "--device", "cpu", "--no-projection")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "not an .npz archive" in proc.stderr and "allow_pickle" not in proc.stderr


def test_a_corrupt_parquet_footer_is_one_line(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"embeddings": [[1.0, 2.0]] * 4}), tmp_path / "s.parquet")
    data = (tmp_path / "s.parquet").read_bytes()
    (tmp_path / "s.parquet").write_bytes(data[:-12] + b"\x00" * 8 + data[-4:])
    proc = _cli("scan", str(tmp_path / "s.parquet"), "--out", str(tmp_path / "r"), "--device", "cpu", "--no-projection")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr


def test_duplicate_ids_are_refused():
    emb = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    with pytest.raises(tamis.InputError, match="holds the id 'a' 3 times .*rows 0, 2, 4.*make them unique"):
        tamis.scan({"embeddings": emb, "ids": np.array(["a", "b", "a", "b", "a", "c"])}, device="cpu")


def test_a_store_with_no_usable_embedding_is_not_an_error(tmp_path):
    emb = np.full((20, 4), np.nan, dtype=np.float32)
    emb[3] = 0
    labels = np.arange(20) % 3
    report = tamis.scan({"embeddings": emb, "labels": labels}, device="cpu", out=tmp_path / "r", projection="pca")
    assert report.counts() == {"invalid": 20} and report.exclusions.num_rows == 20
    skipped = {s["check"]: s["reason"] for s in report.summary["checks_skipped"]}
    assert "class_imbalance" in skipped and "all 20 rows" in skipped["class_imbalance"]
    asked = tamis.scan({"embeddings": emb, "labels": labels}, device="cpu", checks=["class_imbalance"])
    assert asked.counts() == {} and asked.summary["checks_skipped"][0]["check"] == "class_imbalance"


def test_float64_embeddings_near_the_ends_of_the_range_are_usable():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(40, 8))
    emb = np.concatenate([base[:20] * 1e300, base[20:] * 1e-300])
    emb[39] = emb[38] * 3.0                          # the same direction: a near (exact) duplicate
    report = tamis.scan(emb, device="cpu", checks=["invalid", "near_duplicate"])
    assert report.counts()["invalid"] == 0
    assert {38, 39} <= set(np.flatnonzero(report.flags("near_duplicate")))
    plain = tamis.scan(base.astype(np.float32), device="cpu", checks=["invalid"])
    assert plain.counts()["invalid"] == 0
