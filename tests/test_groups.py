"""Objects within images: a group column (the image each crop comes from). Crops of one image are
never each other's duplicates or leaks; splits are judged per image; the exclusion list can drop
whole images."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pytest

import tamis


def _crops():
    """30 images x 2 crops. Crops of image 0 are identical (one image's pixels twice); image 5's
    crop is copied into image 6 (a real duplicate across images); image 9 has a crop in train and
    one in test; image 20's crop copies image 2's in the other split (a leak across images)."""
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(60, 16)).astype(np.float32)
    image = np.repeat([f"img{i:02d}" for i in range(30)], 2)
    split = np.repeat(np.where(np.arange(30) < 20, "train", "test"), 2)
    emb[1] = emb[0]                        # two crops of image 0, the same pixels
    emb[12] = emb[10]                      # image 6's first crop copies image 5's
    split[19] = "test"                     # image 9: one crop in train, one in test
    emb[40] = emb[4]                       # image 20 (test) copies image 2 (train)
    paths = np.array([f"images/{name}.jpg" for name in image])   # crops share their image's path
    return {"embeddings": emb, "image_id": image, "split": split, "image_paths": paths}


def test_crops_of_one_image_are_not_duplicates_of_each_other():
    report = tamis.scan(_crops(), device="cpu", checks=["exact_duplicate", "near_duplicate"])
    assert report.summary["store"]["columns"]["groups"] == "image_id"
    exact = set(np.flatnonzero(report.flags("exact_duplicate")))
    assert exact == {10, 12, 4, 40}                # not 0/1 (one image), not the shared paths
    assert {0, 1}.isdisjoint(np.flatnonzero(report.flags("near_duplicate")))
    plain = tamis.scan({k: v for k, v in _crops().items() if k != "image_id"}, device="cpu",
                       checks=["exact_duplicate"])
    assert {0, 1} <= set(np.flatnonzero(plain.flags("exact_duplicate")))     # without groups they are


def test_leakage_is_judged_per_image():
    report = tamis.scan(_crops(), device="cpu", checks=["leakage"])
    flagged = set(np.flatnonzero(report.flags("leakage")))
    assert flagged == {19, 40}                     # image 9's test crop, and the copy across images
    assert report.summary["checks"]["leakage"]["n_groups_across_splits"] == 1


def test_exclude_by_group_drops_whole_images(tmp_path):
    by_row = tamis.scan(_crops(), device="cpu", checks=["exact_duplicate", "leakage"])
    by_group = tamis.scan(_crops(), device="cpu", checks=["exact_duplicate", "leakage"], exclude_by="group",
                          out=tmp_path / "r")
    rows, grouped = set(by_row.exclusions["row"].to_pylist()), set(by_group.exclusions["row"].to_pylist())
    assert rows < grouped and grouped == rows | {r ^ 1 for r in rows}      # each crop's sibling too
    added = by_group.exclusions.filter(pc.equal(by_group.exclusions["reason"], "group"))
    assert set(added["row"].to_pylist()) == grouped - rows
    with pytest.raises(tamis.ConfigError, match="group column"):
        tamis.scan({k: v for k, v in _crops().items() if k != "image_id"}, device="cpu", exclude_by="group")
