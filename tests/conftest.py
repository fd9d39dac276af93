"""Shared fixtures: small stores written by the tests themselves, and the backends to run on."""

from __future__ import annotations

import numpy as np
import pytest

from tamis.engine.backend import gpu_available

HAS_GPU = gpu_available()
BACKENDS = ["cpu"] + (["gpu"] if HAS_GPU else [])


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="no usable CUDA GPU with CuPy here")
    for item in items:
        if "gpu" in item.keywords and not HAS_GPU:
            item.add_marker(skip_gpu)


@pytest.fixture(params=BACKENDS)
def device(request) -> str:
    """Each test using it runs once per usable backend: "cpu" always, "gpu" where there is one."""
    return request.param


@pytest.fixture
def small_columns() -> dict[str, np.ndarray]:
    """A tiny labelled store: 60 rows, 16 dims, 3 classes (class 2 rare: 2 rows), two splits.

    Classes are loose clusters: no two rows are near duplicates at 0.95.
    """
    rng = np.random.default_rng(0)
    labels = np.array([0] * 29 + [1] * 29 + [2] * 2)
    centers = rng.normal(size=(3, 16))
    emb = (centers[labels] + rng.normal(size=(60, 16))).astype(np.float32)
    split = np.array(["train", "test"] * 30)
    paths = np.array([f"img/{i:03d}.jpg" for i in range(60)])
    ids = np.array([f"s{i}" for i in range(60)])
    return {"embeddings": emb, "labels": labels, "image_paths": paths, "split": split, "ids": ids}
