"""Projection to 2-D / 3-D: PCA and tamis' UMAP always; umap-learn and t-SNE where their packages are
installed (CI installs them)."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from tamis import ConfigError, InputError, resolve_backend
from tamis.engine.projection import (
    project,
    project_or_fallback,
    project_with_info,
)

HAS_UMAP = importlib.util.find_spec("umap") is not None
HAS_TSNE = importlib.util.find_spec("openTSNE") is not None
needs_umap = pytest.mark.skipif(not HAS_UMAP, reason="umap-learn is not installed (pip install umap-learn)")
needs_tsne = pytest.mark.skipif(not HAS_TSNE, reason="openTSNE is not installed (pip install openTSNE)")


def clusters(n=240, d=24, k=4, seed=0):
    """Unit vectors in k well-separated clusters, and their labels."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 3
    labels = rng.integers(0, k, n)
    x = (centers[labels] + rng.normal(size=(n, d))).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


def knn_graph(x, k=15):
    """tamis' graph layout: each row's k nearest other rows (self excluded), cosine distances."""
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    ind = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return ind, (1.0 - np.take_along_axis(sim, ind, axis=1)).astype(np.float32)


def neighbour_agreement(y, labels, k=5):
    """Share of each point's k nearest points in the map that carry its label."""
    d = ((y[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nn = np.argsort(d, axis=1)[:, :k]
    return float((labels[nn] == labels[:, None]).mean())


def check_map(y, m, dims):
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.shape == (m, dims)
    assert np.isfinite(y).all()


# ---------------------------------------------------------------------- PCA
@pytest.mark.parametrize("dims", [2, 3])
def test_pca_separates_clusters_and_is_deterministic(dims):
    x, labels = clusters()
    y = project(x, method="pca", dims=dims)
    check_map(y, len(x), dims)
    assert np.array_equal(y, project(x, method="pca", dims=dims))
    assert neighbour_agreement(y, labels) > 0.9


def test_pca_matches_the_svd_reference():
    x, _ = clusters(n=100, d=10)
    y = project(x, method="pca", dims=2)
    centred = x.astype(np.float64) - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    ref = centred @ vt[:2].T
    for j in range(2):  # the same axes up to sign
        assert min(np.abs(y[:, j] - ref[:, j]).max(), np.abs(y[:, j] + ref[:, j]).max()) < 1e-4


def test_pca_on_tiny_and_narrow_inputs():
    one = np.ones((1, 5), dtype=np.float32) / np.sqrt(5)
    check_map(project(one, method="pca"), 1, 2)
    narrow, _ = clusters(n=20, d=2)
    y = project(narrow, method="pca", dims=3)  # fewer features than dims: the extra axis is zero
    check_map(y, 20, 3)
    assert (y[:, 2] == 0).all()


def test_pca_same_on_every_backend(device):
    x, _ = clusters()
    backend = resolve_backend(device)
    y = project(backend.xp.asarray(x), method="pca", xp=backend.xp)
    ref = project(x, method="pca")
    assert np.allclose(y, ref, atol=1e-4)


# ---------------------------------------------------------------------- errors and fallback
@pytest.mark.parametrize("kwargs, match", [
    ({"method": "mds"}, "not known"),
    ({"method": "pca", "dims": 4}, "use 2 or 3"),
    ({"method": "pca", "max_fit": 0}, "max_fit"),
])
def test_bad_options_are_config_errors(kwargs, match):
    x, _ = clusters(n=20)
    with pytest.raises(ConfigError, match=match):
        project(x, **kwargs)


def test_bad_inputs_are_input_errors():
    x, _ = clusters(n=20)
    with pytest.raises(InputError, match="2-D"):
        project(x[0], method="pca")
    with pytest.raises(InputError, match="knn"):
        project(x, method="pca", knn=(np.zeros((5, 3), dtype=int), np.zeros((5, 3))))


@pytest.mark.parametrize("method, package", [("umap-learn", "umap-learn"), ("tsne", "openTSNE")])
def test_missing_package_names_the_pip_command(monkeypatch, method, package):
    monkeypatch.setitem(sys.modules, "umap" if method == "umap-learn" else "openTSNE", None)  # import fails
    x, _ = clusters(n=40)
    with pytest.raises(ConfigError, match=f"pip install {package}"):
        project(x, method=method)


def test_tamis_umap_needs_no_package_and_replaces_a_missing_umap_learn(monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)
    x, labels = clusters(n=40)
    y, info = project_or_fallback(x, method="umap")
    check_map(y, 40, 2)
    assert info["method"] == "umap" and info["layout"]["implementation"] == "tamis" and "fallback_reason" not in info
    y, info = project_or_fallback(x, method="umap-learn")
    check_map(y, 40, 2)
    assert info["method"] == "umap" and info["requested"] == "umap-learn" and "umap-learn" in info["fallback_reason"]
    monkeypatch.setitem(sys.modules, "openTSNE", None)
    with pytest.raises(ConfigError, match="pip install openTSNE"):
        project_or_fallback(x, method="tsne")


def test_fallback_for_a_tiny_store():
    x, _ = clusters(n=5)
    y, info = project_or_fallback(x, method="umap")
    check_map(y, 5, 2)
    assert info["method"] == "pca" and "5 rows" in info["fallback_reason"]


# ---------------------------------------------------------------------- UMAP and t-SNE
@pytest.mark.parametrize("method", ["umap", pytest.param("umap-learn", marks=[needs_umap, pytest.mark.slow])])
def test_umap_uses_the_precomputed_graph_and_is_deterministic(method):
    x, labels = clusters(n=200)
    ind, dist = knn_graph(x)
    ind[0, -2:] = -1  # a row with fewer neighbours than k: both layouts skip -1
    y = project(x, method=method, knn=(ind, dist), seed=3)
    check_map(y, len(x), 2)
    assert np.array_equal(y, project(x, method=method, knn=(ind, dist), seed=3))
    assert neighbour_agreement(y, labels) > 0.9
    y3 = project(x, method=method, dims=3, knn=(ind, dist))
    check_map(y3, len(x), 3)
    assert neighbour_agreement(y3, labels) > 0.9


@pytest.mark.parametrize("method", ["umap", pytest.param("umap-learn", marks=[needs_umap, pytest.mark.slow])])
def test_umap_fits_a_sample_and_places_the_rest(method):
    x, labels = clusters(n=200)
    y = project(x, method=method, max_fit=120, seed=1)
    check_map(y, len(x), 2)
    assert neighbour_agreement(y, labels) > 0.9


def test_tamis_umap_says_what_drew_the_map():
    x, _ = clusters(n=200)
    _, info = project_with_info(x, method="umap", knn=knn_graph(x, k=10), seed=5)
    assert info["method"] == "umap" and info["seed"] == 5 and info["n_points"] == 200 and info["n_fitted"] == 200
    layout = info["layout"]
    assert layout["implementation"] == "tamis" and layout["n_epochs"] == 500 and layout["init"] == "spectral"
    assert set(layout["seconds"]) >= {"graph", "init", "optimise"} and info["seconds"] >= 0


def test_tamis_umap_on_every_backend(device):
    x, labels = clusters(n=200)
    backend = resolve_backend(device)
    y = project(backend.xp.asarray(x), method="umap", knn=knn_graph(x), xp=backend.xp)
    check_map(y, len(x), 2)
    assert neighbour_agreement(y, labels) > 0.9


@needs_tsne
@pytest.mark.slow
def test_tsne_with_graph_sample_and_3d():
    x, labels = clusters(n=200)
    y = project(x, method="tsne", knn=knn_graph(x, k=60), seed=2)
    check_map(y, len(x), 2)
    assert np.array_equal(y, project(x, method="tsne", knn=knn_graph(x, k=60), seed=2))
    assert neighbour_agreement(y, labels) > 0.9
    placed = project(x, method="tsne", max_fit=120)
    check_map(placed, len(x), 2)
    assert neighbour_agreement(placed, labels) > 0.9
    check_map(project(x, method="tsne", dims=3), len(x), 3)
