"""Fuzzed stores: truncated, bit-flipped and random files of every format, and random arrays in
memory. tamis either reads them or raises a TamisError (the CLI's exit 2); never another
exception (the CLI's exit 1, "internal error"), never a hang."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tamis


def _columns() -> dict:
    rng = np.random.default_rng(0)
    return {"embeddings": rng.normal(size=(12, 4)).astype(np.float32), "labels": rng.integers(0, 3, 12),
            "image_paths": np.array([f"img/{i}.png" for i in range(12)]), "split": np.array(["train", "test"] * 6)}


def _valid(fmt: str) -> bytes:
    cols = _columns()
    buf = io.BytesIO()
    if fmt in ("npz", "npz-mapped"):
        np.savez(buf, **cols)
    elif fmt == "npz-compressed":
        np.savez_compressed(buf, **cols)
    elif fmt == "npy":
        np.save(buf, cols["embeddings"])
    else:
        table = pa.table({"embeddings": pa.FixedSizeListArray.from_arrays(pa.array(cols["embeddings"].ravel()), 4),
                          "labels": cols["labels"], "path": cols["image_paths"]})
        if fmt == "parquet":
            pq.write_table(table, buf, row_group_size=5)
        else:
            feather.write_feather(table, buf)
    return buf.getvalue()


# npz-mapped: the same stored archive, its members read through a map of the file (see below)
FORMATS = {"npz": ".npz", "npz-mapped": ".npz", "npz-compressed": ".npz", "npy": ".npy", "parquet": ".parquet", "feather": ".feather"}
VALID = {fmt: _valid(fmt) for fmt in FORMATS}


@st.composite
def mutated(draw, fmt: str) -> bytes:
    data = bytearray(VALID[fmt])
    kind = draw(st.sampled_from(["truncate", "flip", "splice", "random"]))
    if kind == "truncate":
        return bytes(data[:draw(st.integers(0, len(data) - 1))])
    if kind == "random":
        return draw(st.binary(min_size=0, max_size=512))
    if kind == "splice":
        at = draw(st.integers(0, len(data)))
        return bytes(data[:at] + draw(st.binary(min_size=1, max_size=64)) + data[at:])
    for _ in range(draw(st.integers(1, 8))):   # flip bytes, headers and footers included
        at = draw(st.one_of(st.integers(0, min(63, len(data) - 1)), st.integers(0, len(data) - 1),
                            st.integers(max(0, len(data) - 64), len(data) - 1)))
        data[at] ^= draw(st.integers(1, 255))
    return bytes(data)


def _read_or_refuse(path) -> None:
    try:
        store = tamis.load_store(path)
    except tamis.TamisError:
        return
    try:   # what was read must scan, or be refused by name
        tamis.scan(store, device="cpu", checks=[c for c in ("invalid", "exact_duplicate", "class_imbalance")
                                                if tamis.CHECKS[c].requires[0] in store.available] or None)
    except tamis.TamisError:
        pass


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_mutated_files_are_read_or_refused_by_name(fmt, tmp_path_factory, monkeypatch):
    folder = tmp_path_factory.mktemp(fmt)
    if fmt == "npz-mapped":   # members of any size are mapped, not only those of a megabyte or more
        from tamis.io.readers import npz
        monkeypatch.setattr(npz, "MAP_AT_LEAST", 0)
    count = iter(range(1 << 30))

    @settings(max_examples=150, deadline=5000, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(mutated(fmt))
    def run(data: bytes) -> None:
        path = folder / f"store{next(count)}{FORMATS[fmt]}"     # a new file: a map may still hold the last
        path.write_bytes(data)
        _read_or_refuse(path)

    run()


DTYPES = st.sampled_from([np.float16, np.float32, np.float64, np.int8, np.int64, np.uint64, np.bool_, np.complex64,
                          "U3", object])


@settings(max_examples=150, deadline=5000, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_arrays_in_memory_are_read_or_refused_by_name(data):
    shape = data.draw(st.sampled_from([(0,), (5,), (0, 3), (5, 0), (5, 3), (5, 3, 2), (1, 1)]))
    dtype = data.draw(DTYPES)
    values = np.asarray(data.draw(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32),
                                           min_size=int(np.prod(shape)), max_size=int(np.prod(shape)))),
                        dtype=np.float64).reshape(shape)
    with np.errstate(all="ignore"):
        array = values.astype(dtype) if dtype is not object else values.astype(object)
    columns = {"embeddings": array}
    if data.draw(st.booleans()) and len(shape) >= 1:
        columns["labels"] = data.draw(st.sampled_from([np.arange(shape[0]), np.array(["a"] * shape[0]),
                                                       np.full(shape[0], np.nan), np.arange(shape[0] + 1)]))
    try:
        store = tamis.load_store(columns)
    except tamis.TamisError:
        return
    try:
        tamis.scan(store, device="cpu")
    except tamis.TamisError:
        pass
