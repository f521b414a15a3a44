"""`memorise toy`: finite training sets. Few examples: the model stores the data points as
directions (memorisation); many: it learns features, a pentagon (generalisation)."""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch

from mechstudy.engine import spec
from mechstudy.stdlib.ops import toy_memorisation  # noqa: F401  (registers the op)
from mechstudy.stdlib.toy import charts, data, measure  # noqa: F401  (charts registers kinds)


@pytest.fixture(scope="module")
def mem():
    return spec.OPS["toy_memorisation"].execute(
        {}, {"n": 60, "m": 2, "sparsity": 0.95, "examples": [3, 5, 600], "steps": 1500}, None)


def row(art, T):
    r = art.tables["result"].filter(pl.col("examples") == T)
    return r.row(0, named=True)


def test_few_examples_are_memorised_as_directions(mem):
    for T, share in ((3, 2 / 3), (5, 2 / 5)):
        r = row(mem, T)
        # Each training point's hidden vector gets about m / T of the hidden space...
        assert r["point_dimensionality"] == pytest.approx(share, abs=0.05), r
        # ...while the features are squeezed together (many features per data point direction).
        assert r["feature_dimensionality"] < 0.25 and r["point_dimensionality"] > 1.5 * r["feature_dimensionality"], r
    r3 = row(mem, 3)
    assert r3["train_loss"] < 1e-4 and r3["test_loss"] > 0.9  # memorised, does not generalise
    k = r3["model"]
    pts = mem.tables["points"].filter(pl.col("model") == k)
    H = torch.tensor([pts["x"].to_list(), pts["y"].to_list()])[None]
    gaps = measure.pairwise_angles(H, min_norm=0.0)[0]
    assert max(abs(g - 120) for g in gaps) < 20, gaps  # three points spread around the circle


def test_many_examples_learn_features_as_a_pentagon(mem):
    r = row(mem, 600)
    assert r["feature_dimensionality"] > 0.3 and r["point_dimensionality"] < 0.05, r
    assert r["feature_dimensionality"] > 5 * r["point_dimensionality"]
    assert abs(r["test_loss"] - r["train_loss"]) < 0.1  # generalises
    assert r["test_loss"] < row(mem, 3)["test_loss"]
    W = mem.tensors["W"][r["model"]]
    top = W.norm(dim=0).argsort(descending=True)[:5]
    gaps = measure.pairwise_angles(W[None, :, top], min_norm=0.0)[0]
    assert max(abs(g - 72) for g in gaps) < 6, gaps


def test_training_sets_are_unit_norm_and_never_empty():
    g = torch.Generator().manual_seed(0)
    X = data.finite_dataset(g, 2, 500, 40, 0.99)  # 0.99^40 = 67% of raw rows would be zero
    assert float((X.norm(dim=1) - 1).abs().max()) < 1e-5
    assert float(X.min()) >= 0


def test_deterministic_and_each_T_independent_of_the_others():
    run = spec.OPS["toy_memorisation"].execute
    p = {"n": 20, "m": 2, "sparsity": 0.9, "steps": 100}
    a = run({}, {**p, "examples": [3, 10]}, None)
    b = run({}, {**p, "examples": [3, 10]}, None)
    c = run({}, {**p, "examples": [10]}, None)
    assert torch.equal(a.tensors["W"], b.tensors["W"]) and a.tables["points"].equals(b.tables["points"])
    assert torch.equal(a.tensors["W"][1], c.tensors["W"][0])  # T=10 trains on its own stream


def test_charts(mem):
    import vl_convert as vlc

    for kind in ("memorisation", "memorisation_dims"):
        vl = spec.CHARTS[kind].render(mem, None)
        json.dumps(vl, allow_nan=False)
        assert vlc.vegalite_to_vega(vl)["marks"], kind
    dims = spec.CHARTS["memorisation_dims"].render(mem, None)
    expected = next(l for l in dims["layer"] if l["mark"]["type"] == "line" and "strokeDash" in l["mark"])
    assert [v["m_over_T"] for v in expected["data"]["values"]] == pytest.approx([2 / 3, 2 / 5, 2 / 600])
