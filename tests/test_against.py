"""A new batch against a scanned store: --save-index, --against, tamis index add.

The reference: 4 classes of 150 rows in 24 dimensions (loose clusters, no near duplicates at
0.95), a train / test split, string ids. The batch: 20 fresh rows per class plus planted cases:
an exact copy of a reference row (same label), a near copy under another label, a near copy of a
reference *test* row in the batch's train split, a row in the middle of class "cat" labelled
"dog", and a row far from every class.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

import tamis
from tamis.engine.artifacts import neighbours
from tamis.engine.backend import resolve_backend
from tamis.engine.context import RunContext
from tamis.engine.reference import Reference, neighbours_against, pairs_against
from tamis.io.index_file import open_index
from tamis.io.readers import load_store
from tamis.report.folder import open_reference

CLASSES = np.array(["cat", "dog", "eel", "fox"])
D = 24


def _centres() -> np.ndarray:
    return np.random.default_rng(7).normal(size=(4, D)) * 1.5


def _rows(rng, labels: np.ndarray) -> np.ndarray:
    return (_centres()[labels] + rng.normal(size=(len(labels), D))).astype(np.float32)


def _near(rng, x: np.ndarray, cosine: float = 0.99) -> np.ndarray:
    u = x / np.linalg.norm(x)
    noise = rng.normal(size=x.shape)
    noise -= (noise @ u) * u
    return (cosine * u + np.sqrt(1 - cosine ** 2) * noise / np.linalg.norm(noise)).astype(np.float32)


def _reference(n_per_class: int = 150) -> dict:
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(4), n_per_class)
    n = len(labels)
    return {"embeddings": _rows(rng, labels), "labels": CLASSES[labels],
            "split": np.where(np.arange(n) % 5 == 0, "test", "train"), "ids": np.array([f"r{i}" for i in range(n)])}


#: batch rows of the planted cases, and the reference rows they copy
EXACT, CONFLICT, LEAK, MISLABELLED, OUTLIER = 0, 1, 2, 3, 4
COPIED = {EXACT: 1, CONFLICT: 152, LEAK: 305}    # 305 % 5 == 0: a test row of the reference


def _batch(ref: dict, prefix: str = "b") -> dict:
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(4), 20)
    emb = _rows(rng, labels)
    names = CLASSES[labels].astype(object)
    emb[EXACT] = ref["embeddings"][COPIED[EXACT]]
    names[EXACT] = ref["labels"][COPIED[EXACT]]
    emb[CONFLICT] = _near(rng, ref["embeddings"][COPIED[CONFLICT]])
    names[CONFLICT] = "fox" if ref["labels"][COPIED[CONFLICT]] != "fox" else "cat"
    emb[LEAK] = _near(rng, ref["embeddings"][COPIED[LEAK]])
    names[LEAK] = ref["labels"][COPIED[LEAK]]
    emb[MISLABELLED] = _centres()[0] + rng.normal(size=D)             # a cat ...
    names[MISLABELLED] = "dog"                                          # ... labelled dog
    far = rng.normal(size=D)
    far -= _centres().T @ np.linalg.lstsq(_centres().T, far, rcond=None)[0]   # orthogonal to every class
    emb[OUTLIER] = far / np.linalg.norm(far) * 8.0
    emb[10] = _near(rng, emb[11])                                       # the batch's own near pair
    n = len(labels)
    return {"embeddings": emb, "labels": names.astype(str), "split": np.array(["train"] * n),
            "ids": np.array([f"{prefix}{i}" for i in range(n)])}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("against") / "ref"
    ref = _reference()
    report = tamis.scan(ref, device="cpu", out=folder, save_index=True)
    return ref, folder, report


def _flags(report, check: str) -> set[int]:
    return set(np.flatnonzero(report.flags(check)).tolist())


def test_save_index_writes_the_index_with_the_report_id(saved):
    ref, folder, report = saved
    summary = json.loads((folder / "summary.json").read_text())
    assert "index" in summary["files"]
    manifest = json.loads((folder / "index" / "manifest.json").read_text())
    assert manifest["report_id"] == summary["report_id"]
    assert manifest["n_rows"] == 600 and manifest["dim"] == D and manifest["dtype"] == "float32"
    assert summary["index"]["fingerprint"] == manifest["fingerprint"] == report.summary["index"]["fingerprint"]
    vectors = np.load(folder / "index" / "vectors-00000.npy", mmap_mode="r")
    assert isinstance(vectors, np.memmap) and vectors.shape == (600, D)
    x = ref["embeddings"][7]
    np.testing.assert_allclose(vectors[7], x / np.linalg.norm(x), rtol=1e-6)
    rows = pq.read_table(folder / "index" / "rows-00000.parquet")
    assert rows["id"].to_pylist()[:3] == ["r0", "r1", "r2"] and rows["label"][150].as_py() == "dog"
    assert tamis.read_report(folder).index == folder / "index"


def test_the_planted_cases_are_found_against_the_reference(saved, tmp_path):
    ref, folder, _ = saved
    batch = _batch(ref)
    report = tamis.scan(batch, device="cpu", against=folder, out=tmp_path / "new")
    assert EXACT in _flags(report, "exact_duplicate") and _flags(report, "exact_duplicate") == {EXACT}
    assert {EXACT, CONFLICT, LEAK} <= _flags(report, "near_duplicate")
    assert _flags(report, "conflicting_labels") == {CONFLICT}
    assert _flags(report, "leakage") == {LEAK}
    assert MISLABELLED in _flags(report, "label_error")
    suggested = report.samples["suggested_label"][MISLABELLED].as_py()
    assert suggested == "cat"
    assert OUTLIER in _flags(report, "outlier")

    matches = report.tables["reference_matches"].to_pylist()
    by_row = {(m["row"], m["reference_id"]): m for m in matches}
    exact = by_row[(EXACT, f"r{COPIED[EXACT]}")]
    assert exact["exact"] and exact["same_label"] and exact["similarity"] == pytest.approx(1.0, abs=1e-6)
    conflict = by_row[(CONFLICT, f"r{COPIED[CONFLICT]}")]
    assert not conflict["same_label"] and conflict["reference_label"] == "dog" and not conflict["exact"]
    leak = by_row[(LEAK, f"r{COPIED[LEAK]}")]
    assert leak["reference_split"] == "test" and leak["cross_split"] and leak["same_label"]
    assert {m["row"] for m in matches} == {EXACT, CONFLICT, LEAK}
    assert (tmp_path / "new" / "reference_matches.parquet").exists()

    # the exclusion list holds batch rows only: the batch's copies, never a reference id
    excluded = set(report.exclusions["id"].to_pylist())
    assert {f"b{EXACT}", f"b{CONFLICT}", f"b{LEAK}", f"b{MISLABELLED}", f"b{OUTLIER}"} <= excluded
    assert all(i.startswith("b") for i in excluded)
    summary = json.loads((tmp_path / "new" / "summary.json").read_text())
    assert summary["reference"]["folder"] == str(folder)
    assert summary["reference"]["fingerprint"] == json.loads((folder / "index" / "manifest.json").read_text())[
        "fingerprint"]
    assert summary["reference"]["rows"] == 600 and summary["reference"]["matches"]["n_pairs"] == 3
    assert summary["checks"]["leakage"]["reference"]["split_pairs"] == {"test->train": 1}
    assert summary["search"]["neighbours"]["reference"]["engine"] == "exact"
    assert "knn.npz" not in summary["files"]   # the graph names reference rows: no input-row graph to write


def test_the_reference_votes_on_the_batch_labels(saved):
    """The mislabelled row's neighbours are reference rows (the batch has only 20 cats): its
    suggestion comes from the reference's labels."""
    ref, folder, _ = saved
    store = load_store(_batch(ref))
    backend = resolve_backend("cpu")
    ctx = RunContext(store, backend, reference=Reference(open_reference(folder), np))
    idx, _ = neighbours(ctx, 10)
    m = len(ctx.valid_rows)
    assert (idx[MISLABELLED] >= m).sum() >= 8, "most neighbours of a cat should be the reference's 150 cats"
    assert ctx.label_names == ["cat", "dog", "eel", "fox"]
    assert ctx.reference_codes("labels")[idx[MISLABELLED][idx[MISLABELLED] >= m] - m].tolist() == [0] * int(
        (idx[MISLABELLED] >= m).sum())


def _full_scan(ref: dict, batch: dict, **options):
    """A scan of reference + batch as one store: what the batch scan must agree with."""
    both = {key: np.concatenate([ref[key], batch[key]]) for key in ref}
    return tamis.scan(both, device="cpu", engine="exact", **options)


@pytest.mark.parametrize("precision,engine", [("float32", "exact"), ("float32", "ivf"), ("float16", "ivf")])
def test_batch_pairs_equal_a_full_scan(tmp_path, precision, engine):
    """The batch rows' pairs, their own and with the reference, are those a full exact scan of
    reference + batch gives, similarities bit for bit, whether the reference is searched exactly
    or through its saved buckets (ivf: exact too, by the annulus bound)."""
    ref = _reference()
    batch = _batch(ref)
    folder = tmp_path / "ref"
    tamis.scan(ref, device="cpu", out=folder, save_index=True, engine=engine, checks=["invalid"], precision=precision)
    manifest = json.loads((folder / "index" / "manifest.json").read_text())
    assert (manifest["quantiser"] is not None) == (engine == "ivf") and manifest["dtype"] == precision
    report = tamis.scan(batch, device="cpu", against=folder, engine=engine, checks=["near_duplicate"])
    assert report.summary["search"]["reference_pairs"]["engine"] == ("buckets" if engine == "ivf" else "exact")
    assert report.summary["config"]["precision"] == precision      # the batch takes the index's precision

    full = _full_scan(ref, batch, checks=["near_duplicate"], precision=precision).tables["pairs"]
    a, b, s = (np.asarray(full[c]) for c in ("row_a", "row_b", "similarity"))
    n = len(ref["ids"])
    own = report.tables["pairs"]
    assert sorted(zip((np.asarray(own["row_a"]) + n).tolist(), (np.asarray(own["row_b"]) + n).tolist(),
                      own["similarity"].to_pylist())) == sorted(zip(a[a >= n].tolist(), b[a >= n].tolist(),
                                                                    s[a >= n].tolist()))
    assert len(own) >= 1, "the batch's own planted pair"
    cross = (a < n) & (b >= n)
    matches = report.tables["reference_matches"]
    ours = sorted(zip(matches["reference_position"].to_pylist(), (np.asarray(matches["row"]) + n).tolist(),
                      matches["similarity"].to_pylist()))
    assert ours == sorted(zip(a[cross].tolist(), b[cross].tolist(), s[cross].tolist())) and len(ours) >= 3


@pytest.mark.parametrize("precision", ["float32", "float16"])
def test_batch_neighbours_equal_a_full_scan(tmp_path, precision):
    """With the exact search, every batch row's k nearest among reference + batch (the graph the
    label and outlier checks read) is the full scan's list: the same rows in the same order (ties
    to the row a full scan numbers first), the same similarities."""
    ref = _reference()
    batch = _batch(ref)
    folder = tmp_path / "ref"
    tamis.scan(ref, device="cpu", out=folder, save_index=True, checks=["invalid"], precision=precision)
    ctx = RunContext(load_store(batch), resolve_backend("cpu"), tamis.ScanConfig(engine="exact", precision=precision),
                     reference=Reference(open_reference(folder), np))
    idx, sims = neighbours(ctx, 10)
    _, full_idx, full_sims = _full_scan(ref, batch, checks=["outlier"], precision=precision).knn
    n, m = len(ref["ids"]), len(batch["ids"])
    full_idx, full_sims = full_idx[n:], full_sims[n:]
    assert np.array_equal(np.where(full_idx < n, full_idx + m, full_idx - n), idx)
    assert np.array_equal(full_sims, sims)
    assert (idx >= m).any() and (idx < m).any(), "the lists mix reference and batch rows"


def test_the_bucketed_neighbour_search_measures_its_recall(tmp_path):
    ref = _reference()
    folder = tmp_path / "ref"
    tamis.scan(ref, device="cpu", out=folder, save_index=True, engine="ivf", checks=["invalid"])
    index = Reference(open_reference(folder), np)
    batch = _batch(ref)["embeddings"]
    Q = (batch / np.linalg.norm(batch, axis=1, keepdims=True)).astype(np.float32)
    _, sims, info = neighbours_against(Q, index, 10, xp=np, engine="ivf")
    _, exact_sims, _ = neighbours_against(Q, index, 10, xp=np, engine="exact")
    assert info["engine"] == "buckets" and not info["exact"] and info["recall"] >= 0.95
    assert (sims <= exact_sims + 1e-7).all(), "a bucketed list never beats the exact one"
    found = (sims >= exact_sims[:, -1:]).mean()
    assert found >= 0.9
    q, p, s, pinfo = pairs_against(Q, index, 0.95, xp=np, engine="ivf")
    assert pinfo["exact"] and pinfo["rows_compared"] < index.n, "the buckets spare most of the reference"
    # a tiny memory budget cuts every bucket's batch rows into tiles of one row: the same pairs
    q2, p2, s2, _ = pairs_against(Q, index, 0.80, xp=np, engine="ivf", memory_bytes=64)
    q3, p3, s3, _ = pairs_against(Q, index, 0.80, xp=np, engine="ivf")
    assert len(q3) > len(q) and np.array_equal(q2, q3) and np.array_equal(p2, p3) and np.array_equal(s2, s3)


def test_a_folder_without_an_index_is_refused(saved, tmp_path):
    ref, _, _ = saved
    plain = tmp_path / "plain"
    tamis.scan(ref, device="cpu", out=plain, checks=["invalid"])
    with pytest.raises(tamis.InputError, match=r"plain: this report has no index .*--save-index"):
        tamis.scan(_batch(ref), device="cpu", against=plain)
    with pytest.raises(tamis.InputError, match="no summary.json"):
        tamis.scan(_batch(ref), device="cpu", against=tmp_path)


def _copy(folder, to):
    import shutil

    shutil.copytree(folder, to)
    return to


def test_a_changed_index_file_is_refused_even_with_its_time_put_back(saved, tmp_path):
    ref, folder, _ = saved
    copy = _copy(folder, tmp_path / "ref")
    tamis.scan(_batch(ref), device="cpu", against=copy, checks=["near_duplicate"])   # a copy is whole (hashed)
    vectors = copy / "index" / "vectors-00000.npy"
    before = os.stat(vectors)
    with open(vectors, "r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"\x00\x00\x80\x3f")
    os.utime(vectors, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(tamis.InputError, match=r"vectors-00000.npy does not match the index's fingerprint .*"
                                               r"changed after tamis wrote it.*--save-index"):
        tamis.scan(_batch(ref), device="cpu", against=copy)


def test_a_missing_or_foreign_index_file_is_refused(saved, tmp_path):
    ref, folder, _ = saved
    copy = _copy(folder, tmp_path / "ref")
    (copy / "index" / "rows-00000.parquet").unlink()
    with pytest.raises(tamis.InputError, match="rows-00000.parquet is missing; the index is incomplete"):
        tamis.scan(_batch(ref), device="cpu", against=copy)
    other = tmp_path / "other"
    tamis.scan(ref, device="cpu", out=other, checks=["invalid"], save_index=True)
    import shutil

    shutil.rmtree(copy / "index")
    shutil.copytree(other / "index", copy / "index")      # the same store, another report: a mixed folder
    with pytest.raises(tamis.InputError, match="belongs to another report than summary.json"):
        tamis.scan(_batch(ref), device="cpu", against=copy)
    with pytest.raises(tamis.InputError, match="belongs to another report"):
        tamis.read_report(copy)


def test_a_batch_of_another_dimension_is_refused(saved):
    ref, folder, _ = saved
    batch = dict(_batch(ref), embeddings=np.ones((80, D + 1), np.float32))
    with pytest.raises(tamis.InputError, match=rf"{D + 1} dimensions and the index of .*ref holds {D}"):
        tamis.scan(batch, device="cpu", against=folder)


def test_options_that_cannot_hold_are_refused(saved, tmp_path):
    ref, folder, _ = saved
    with pytest.raises(tamis.ConfigError, match="needs an out folder"):
        tamis.scan(ref, device="cpu", save_index=True)
    with pytest.raises(tamis.ConfigError, match="is the --against folder"):
        tamis.scan(_batch(ref), device="cpu", against=folder, out=folder)
    with pytest.raises(tamis.ConfigError, match="index stores float32"):
        tamis.scan(_batch(ref), device="cpu", against=folder, precision="float16")
    with pytest.raises(tamis.ConfigError, match="no buckets"):
        tamis.scan(_batch(ref), device="cpu", against=folder, engine="ivf")


def test_index_add_then_a_second_batch_finds_a_copy_of_the_first(saved, tmp_path):
    ref, folder, _ = saved
    copy = _copy(folder, tmp_path / "ref")
    first = _batch(ref, prefix="first")
    before = json.loads((copy / "index" / "manifest.json").read_text())
    done = tamis.add_to_index(copy, first)
    after = json.loads((copy / "index" / "manifest.json").read_text())
    assert done["rows_added"] == 80 and after["n_rows"] == 680 and len(after["segments"]) == 2
    assert after["fingerprint"] != before["fingerprint"] and after["report_id"] == before["report_id"]
    assert tamis.read_report(copy).samples.num_rows == 600   # the report is still the reference's

    second = _batch(ref, prefix="second")
    second["embeddings"] = second["embeddings"].copy()
    second["embeddings"][40] = first["embeddings"][60]          # a copy of the first batch's row 60
    report = tamis.scan(second, device="cpu", against=copy, checks=["near_duplicate", "exact_duplicate"])
    matches = report.tables["reference_matches"].to_pylist()
    hit = [m for m in matches if m["row"] == 40]
    assert [(m["reference_id"], m["reference_position"], m["exact"]) for m in hit] == [("first60", 660, True)]
    assert 40 in _flags(report, "exact_duplicate")
    assert report.summary["reference"]["fingerprint"] == after["fingerprint"]

    with pytest.raises(tamis.InputError, match=r"80 of the batch's ids are in the index .* already \(e.g. 'first0'\)"):
        tamis.add_to_index(copy, first)
    assert json.loads((copy / "index" / "manifest.json").read_text()) == after   # nothing changed


def test_index_add_keeps_the_buckets_and_cleans_a_killed_append(tmp_path):
    ref = _reference()
    folder = tmp_path / "ref"
    tamis.scan(ref, device="cpu", out=folder, save_index=True, engine="ivf", checks=["invalid"])
    (folder / "index" / "vectors-00001.npy").write_bytes(b"left by a killed append")
    (folder / "index" / ".vectors-00001.npy.x1y2.tmp").write_bytes(b"a killed atomic write's temporary file")
    first = _batch(ref, prefix="first")
    tamis.add_to_index(folder, first)
    index = open_index(folder / "index")
    assert index.verified and set(index.manifest["files"]) == {p.name for p in (folder / "index").iterdir()} - {
        "manifest.json"}
    assert index.rows[1]["bucket"].null_count == 0 and len(index.rows[1]) == 80
    second = _batch(ref, prefix="second")
    second["embeddings"] = second["embeddings"].copy()
    second["embeddings"][40] = first["embeddings"][60] * 1.0001
    report = tamis.scan(second, device="cpu", against=folder, engine="ivf", checks=["near_duplicate"])
    assert report.summary["search"]["reference_pairs"]["engine"] == "buckets"
    assert "first60" in {m["reference_id"] for m in report.tables["reference_matches"].to_pylist() if m["row"] == 40}


def test_index_add_refuses_a_batch_without_ids_or_labels(saved, tmp_path):
    ref, folder, _ = saved
    copy = _copy(folder, tmp_path / "ref")
    batch = _batch(ref)
    with pytest.raises(tamis.InputError, match="has no id column"):
        tamis.add_to_index(copy, {k: v for k, v in batch.items() if k != "ids"})
    with pytest.raises(tamis.InputError, match="holds labels and the batch has none"):
        tamis.add_to_index(copy, {k: v for k, v in batch.items() if k != "labels"})


def test_a_report_read_back_and_written_elsewhere_keeps_its_index(saved, tmp_path):
    ref, folder, report = saved
    tamis.write_report(tamis.read_report(folder), tmp_path / "moved", html=False)
    moved = json.loads((tmp_path / "moved" / "index" / "manifest.json").read_text())
    assert moved["fingerprint"] == report.summary["index"]["fingerprint"]
    assert moved["report_id"] == json.loads((tmp_path / "moved" / "summary.json").read_text())["report_id"]
    found = tamis.scan(_batch(ref), device="cpu", against=tmp_path / "moved", checks=["near_duplicate"])
    assert found.summary["reference"]["matches"]["n_pairs"] == 3


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "tamis", *map(str, args)], capture_output=True, text=True)


def test_cli_save_against_and_index_add(saved, tmp_path):
    ref, _, _ = saved
    np.savez(tmp_path / "ref.npz", **_reference())
    np.savez(tmp_path / "new.npz", **_batch(ref))
    proc = _cli("scan", tmp_path / "ref.npz", "--out", tmp_path / "ref", "--save-index", "--no-projection", "-q",
                "--checks", "invalid")
    assert proc.returncode == 0, proc.stderr
    proc = _cli("scan", tmp_path / "new.npz", "--against", tmp_path / "ref", "--out", tmp_path / "new",
                "--no-projection", "--fail-on", "leakage>0")
    assert proc.returncode == 3 and "leakage>0: 1 rows" in proc.stderr
    assert "against" in proc.stdout and "reference_matches.parquet" in proc.stdout
    proc = _cli("index", "add", tmp_path / "ref", tmp_path / "new.npz")
    assert proc.returncode == 0 and "added 80 rows" in proc.stdout and "680 rows" in proc.stdout


@pytest.mark.parametrize("case", ["no index", "changed", "dimension", "index add twice"])
def test_cli_refusals_are_one_line_exit_2(saved, tmp_path, case):
    ref, folder, _ = saved
    copy = _copy(folder, tmp_path / "ref")
    batch = _batch(ref)
    if case == "dimension":
        batch = dict(batch, embeddings=np.ones((80, 3), np.float32))
    np.savez(tmp_path / "new.npz", **batch)
    if case == "no index":
        import shutil

        shutil.rmtree(copy / "index")
        summary = json.loads((copy / "summary.json").read_text())
        kept = [f for f in summary["files"] if f != "index"]
        (copy / "summary.json").write_text(json.dumps(dict(summary, files=kept)))
    if case == "changed":
        rows = copy / "index" / "rows-00000.parquet"
        rows.write_bytes(rows.read_bytes()[:-8] + b"\x00" * 8)
    if case == "index add twice":
        assert _cli("index", "add", copy, tmp_path / "new.npz").returncode == 0
        proc = _cli("index", "add", copy, tmp_path / "new.npz")
    else:
        proc = _cli("scan", tmp_path / "new.npz", "--against", copy, "--out", tmp_path / "out", "-q")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tamis: error: ") and "Traceback" not in proc.stderr
    assert str(copy) in lines[0]
    expected = {"no index": "--save-index", "changed": "does not match the index's fingerprint",
                "dimension": "3 dimensions", "index add twice": "already"}[case]
    assert expected in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_path_is_the_same_file_only_when_both_resolve_to_it(tmp_path):
    """Paths are relative to their own store: ``img/0.jpg`` of a store in another folder is another
    file (no exact duplicate), the same relative path of a store in the same folder is the same file."""
    rng = np.random.default_rng(5)
    paths = np.array([f"img/{i}.jpg" for i in range(40)])
    ref_dir, other_dir = tmp_path / "ref_store", tmp_path / "other_store"
    ref_dir.mkdir()
    other_dir.mkdir()
    np.savez(ref_dir / "store.npz", embeddings=rng.normal(size=(40, 16)).astype(np.float32), image_paths=paths,
             ids=np.array([f"r{i}" for i in range(40)]))
    tamis.scan(str(ref_dir / "store.npz"), checks=["exact_duplicate"], out=str(tmp_path / "ref"), save_index=True)
    batch = {"embeddings": rng.normal(size=(10, 16)).astype(np.float32), "image_paths": paths[:10],
             "ids": np.array([f"b{i}" for i in range(10)])}
    for folder, expected in ((other_dir, 0), (ref_dir, 10)):
        np.savez(folder / "batch.npz", **batch)
        report = tamis.scan(str(folder / "batch.npz"), checks=["exact_duplicate"], against=str(tmp_path / "ref"))
        assert int(report.flags("exact_duplicate").sum()) == expected, folder
