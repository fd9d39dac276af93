from __future__ import annotations

import json

import numpy as np

from tamis.cli import main
from tamis.demo import RARE_CLASS, make_demo_store


def test_demo_store_is_deterministic_and_planted():
    a, truth = make_demo_store()
    b, _ = make_demo_store()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    emb = a["embeddings"]
    for x, y in truth["exact_duplicate"]:
        np.testing.assert_array_equal(emb[x], emb[y])
    for x, y in truth["leakage"]:
        assert a["split"][x] == "train" and a["split"][y] == "test"
    for x, y in truth["conflicting_labels"]:
        assert a["labels"][x] != a["labels"][y]
    assert (a["labels"] == RARE_CLASS).sum() < 20
    assert all(v.dtype != object for v in a.values())


def test_tamis_demo_finds_the_planted_problems(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "invalid" in out and "report:" in out
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    _, truth = make_demo_store()
    assert summary["checks"]["invalid"]["first_rows"] == truth["invalid"]
    assert summary["checks"]["class_imbalance"]["rare_classes"] == [RARE_CLASS]
    excluded = set((tmp_path / "demo" / "exclude.txt").read_text().split())
    path = "digits/{:05d}.png".format
    assert {path(r) for r in truth["invalid"]} <= excluded
    assert {path(b) for _, b in truth["exact_duplicate"] + truth["near_duplicate"]} <= excluded
    assert {path(r) for pair in truth["conflicting_labels"] for r in pair} <= excluded
    assert {path(b) for _, b in truth["leakage"]} <= excluded
    for check in ("exact_duplicate", "near_duplicate", "conflicting_labels", "leakage"):
        assert summary["issues"][check] > 0


def test_demo_writes_the_images_and_their_thumbnails(tmp_path):
    from PIL import Image

    assert main(["demo", "--out", str(tmp_path), "--projection", "pca", "-q"]) == 0
    image = Image.open(tmp_path / "digits" / "00000.png")
    assert image.size == (64, 64)
    thumbs = list((tmp_path / "thumbs").iterdir())
    assert len(thumbs) > 1000, "the report shows each digit's image"
    html = (tmp_path / "report.html").read_text()
    assert "thumbs/" in html


def test_demo_plants_what_a_person_finds_by_hand(tmp_path):
    """Issue 14's cases, one of each: disguised zeros and sentinels, spelling variants, a leaky
    column, two classes the data cannot tell apart, a class whose images are dark."""
    import pyarrow.parquet as pq

    from tamis.demo import DARK_CLASS, SPLIT_CLASS, TWIN_CLASS

    assert main(["demo", "--out", str(tmp_path), "--projection", "pca", "-q"]) == 0
    _, truth = make_demo_store()
    findings = pq.read_table(tmp_path / "metadata.parquet").to_pylist()

    def rows_of(kind):
        return {r for f in findings if f["kind"] == kind for r in f["rows"]}

    for kind in ("disguised_missing", "inconsistent_category"):
        planted, found = set(truth["metadata"][kind]), rows_of(kind)
        assert len(planted & found) >= 0.95 * len(planted), kind
        assert len(planted & found) >= 0.9 * len(found), kind
    leaks = [f["column"] for f in findings if f["kind"] == "leaky_predictor"]
    assert leaks[:1] == truth["metadata"]["leaky_predictor"]
    overlap = pq.read_table(tmp_path / "class_overlap.parquet").to_pylist()
    assert {int(overlap[0]["class_a"]), int(overlap[0]["class_b"])} == {SPLIT_CLASS, TWIN_CLASS}
    bias = pq.read_table(tmp_path / "image_bias.parquet").to_pylist()
    assert int(bias[0]["label"]) == DARK_CLASS and bias[0]["property"] in ("brightness", "contrast")
