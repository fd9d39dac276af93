"""Contract tests run over every registered check (scikit-learn's parametrize_with_checks)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import numpy as np
import pyarrow as pa
import pytest

import tamis
from tamis import checks as checks_pkg
from tamis.checks import REGISTRY, Check, make_checks
from tamis.engine.backend import cpu_backend
from tamis.engine.context import RunContext
from tamis.io.readers import load_store


def test_every_check_module_is_registered():
    found = {}
    for info in pkgutil.iter_modules(checks_pkg.__path__):
        if info.name in ("base", "views") or (info.ispkg and info.name == "shared"):  # the contract; helpers
            continue
        module = importlib.import_module(f"{checks_pkg.__name__}.{info.name}")
        classes = [c for _, c in inspect.getmembers(module, inspect.isclass)
                   if issubclass(c, Check) and c is not Check and c.__module__ == module.__name__]
        assert len(classes) == 1, f"{info.name} must define exactly one check class, found {classes}"
        found[classes[0].name] = classes[0]
    assert found == REGISTRY, "a check module is not registered in tamis/checks/__init__.py"


@pytest.mark.parametrize("name", list(REGISTRY))
def test_check_declares_its_contract(name):
    cls = REGISTRY[name]
    assert cls.name == name and name.isidentifier()
    assert cls.requires and set(cls.requires) <= set(tamis.io.store.INPUTS)
    assert cls.description
    check = cls()
    assert set(check.get_params()) == set(cls._parameter_constraints)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_constructor_only_stores_parameters(name):
    cls = REGISTRY[name]
    for param, constraint in cls._parameter_constraints.items():
        check = cls(**{param: "not a valid value"})  # no validation in __init__
        assert getattr(check, param) == "not a valid value"


@pytest.mark.parametrize("name", list(REGISTRY))
def test_check_result_follows_the_schema(name, small_columns, device):
    from tamis.engine.backend import resolve_backend

    cols = dict(small_columns, embeddings=small_columns["embeddings"].copy())
    cols["embeddings"][7] = np.nan
    ctx = RunContext(load_store(cols), resolve_backend(device))
    (check,) = make_checks([name], _params(name, small_columns))
    result = check.run(ctx)
    assert result.flags.shape == (60,) and result.flags.dtype == bool
    assert result.scores.shape == (60,)
    scored = result.scores[~np.isnan(result.scores)]
    assert ((scored >= 0) & (scored <= 1)).all()
    if name != "invalid":
        assert np.isnan(result.scores[7]) and not result.flags[7], "invalid rows must be left out"
    if result.flags.any():  # a flagged row never has the best possible score
        assert np.nanmin(result.scores[result.flags]) < 1.0
    import json

    json.dumps(result.summary)


def _params(name, columns):
    """What a check needs beyond the store: off_topic's trusted references."""
    if name == "off_topic":
        return {name: {"references": {"embeddings": columns["embeddings"][::6], "labels": columns["labels"][::6]}}}
    return None


@pytest.mark.parametrize("name", [n for n, c in REGISTRY.items() if c._parameter_constraints])
def test_invalid_parameter_fails_when_run_starts(name, small_columns):
    cls = REGISTRY[name]
    param = next(p for p, c in cls._parameter_constraints.items() if not c.accepts(object()))
    check = cls(**{param: object()})
    ctx = RunContext(load_store(small_columns), cpu_backend())
    with pytest.raises(tamis.ConfigError, match=param):
        check.run(ctx)


def _chunked(array: pa.Array, n_chunks: int = 3) -> pa.ChunkedArray:
    bounds = np.linspace(0, len(array), n_chunks + 1).astype(int)
    return pa.chunked_array([array.slice(a, b - a) for a, b in zip(bounds[:-1], bounds[1:])], type=array.type)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_chunked_columns_give_the_same_result(name, small_columns):
    """A million-row column arrives as several Arrow chunks (pyarrow cuts large string arrays):
    every check takes them, with the same answer as one chunk."""
    from dataclasses import replace

    cols = dict(small_columns, embeddings=small_columns["embeddings"].copy())
    cols["embeddings"][50] = cols["embeddings"][3]      # an exact copy, across chunks
    cols["embeddings"][7] = np.nan
    cols["quality"] = np.linspace(0, 1, 60)
    whole = load_store(cols)
    chunked = replace(whole, **{field: _chunked(getattr(whole, field)) for field in
                                ("labels", "paths", "split", "ids", "quality")}).validate()
    params = _params(name, small_columns)
    results = []
    for store in (whole, chunked):
        (check,) = make_checks([name], params)
        results.append(check.run(RunContext(store, cpu_backend())))
    a, b = results
    np.testing.assert_array_equal(a.flags, b.flags)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(np.sort(a.exclude), np.sort(b.exclude))
    assert sorted(a.tables) == sorted(b.tables)
    for table in a.tables:
        assert a.tables[table].equals(b.tables[table]), table
