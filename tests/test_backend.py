from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest

import tamis
from tamis.engine.backend import resolve_backend
from tests.conftest import HAS_GPU


def test_cpu_backend_is_numpy():
    backend = resolve_backend("cpu")
    assert backend.xp is np and backend.name == "cpu" and not backend.is_gpu


def test_unknown_device_is_a_config_error():
    with pytest.raises(tamis.ConfigError, match="device='cuda' is not one of auto, cpu, gpu"):
        resolve_backend("cuda")


@pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU: the no-GPU error cannot happen here")
def test_gpu_without_a_gpu_is_a_clear_error():
    with pytest.raises(tamis.DeviceError, match="--device cpu|tamis\\[gpu\\]"):
        resolve_backend("gpu")


def test_auto_logs_its_choice(caplog):
    with caplog.at_level(logging.INFO, logger="tamis"):
        backend = resolve_backend("auto")
    assert backend.name == ("gpu" if HAS_GPU else "cpu")
    assert "device=auto: using the" in caplog.text


@pytest.mark.gpu
def test_gpu_backend_is_cupy():
    backend = resolve_backend("gpu")
    assert backend.xp.__name__ == "cupy"
    assert backend.to_host(backend.xp.asarray([1.0, 2.0])).tolist() == [1.0, 2.0]


def test_import_tamis_imports_no_gpu_package():
    code = ("import sys, tamis, tamis.cli, tamis.pipeline, tamis.checks\n"
            "bad = [m for m in ('cupy', 'cudf', 'cuml', 'faiss') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_import_works_when_gpu_packages_are_broken(tmp_path):
    # a cupy that fails to import must not break import tamis nor a CPU scan
    (tmp_path / "cupy").mkdir()
    (tmp_path / "cupy" / "__init__.py").write_text("raise ImportError('libcudart.so not found')\n")
    code = ("import numpy as np, tamis\n"
            "r = tamis.scan(np.eye(3, dtype=np.float32), device='auto')\n"
            "assert r.summary['device']['backend'] == 'cpu'\n"
            "try:\n    tamis.scan(np.eye(3, dtype=np.float32), device='gpu')\n"
            "except tamis.DeviceError as e:\n    assert 'cupy' in str(e)\nelse:\n    raise SystemExit(1)\n")
    env = {"PYTHONPATH": f"{tmp_path}:{sys.path[0] or '.'}"}
    import os

    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, **env})


def test_same_results_on_every_backend(small_columns, device):
    cpu = tamis.scan(small_columns, device="cpu")
    other = tamis.scan(small_columns, device=device)
    for check in cpu.summary["checks_run"]:
        assert cpu.samples[f"is_{check}_issue"].equals(other.samples[f"is_{check}_issue"])
        np.testing.assert_allclose(cpu.samples[f"{check}_score"].to_numpy(),
                                   other.samples[f"{check}_score"].to_numpy(), rtol=1e-6)


def test_float16_precision_halves_the_matrix(small_columns):
    from tamis.engine.context import RunContext
    from tamis.io.readers import load_store

    ctx32 = RunContext(load_store(small_columns), resolve_backend("cpu"))
    ctx16 = RunContext(load_store(small_columns), resolve_backend("cpu"), tamis.ScanConfig(precision="float16"))
    assert ctx16.embeddings.nbytes * 2 == ctx32.embeddings.nbytes
    np.testing.assert_allclose(np.linalg.norm(ctx32.embeddings, axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(ctx16.embeddings.astype(np.float32), ctx32.embeddings, atol=2e-3)


def test_normalisation_is_blocked_and_exact(monkeypatch):
    import tamis.engine.context as context
    from tamis.io.readers import load_store

    monkeypatch.setattr(context, "NORMALISE_BLOCK_BYTES", 8 * 5 * 7)  # 7 rows per block
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(50, 5)).astype(np.float32)
    emb[[3, 20, 21]] = np.array([np.nan, 0, np.inf])[:, None]
    emb[30] = 1e30  # huge but finite: squared norm overflows float32, not float64
    ctx = context.RunContext(load_store(emb), resolve_backend("cpu"))
    keep = np.setdiff1d(np.arange(50), [3, 20, 21])
    np.testing.assert_array_equal(ctx.valid_rows, keep)
    ref = emb[keep].astype(np.float64)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(ctx.embeddings, ref, rtol=1e-6, atol=1e-7)
