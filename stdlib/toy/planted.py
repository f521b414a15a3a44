"""`dataset acts = planted(features=64, d=16, sparsity=0.95, rows=4096, seed=0)`.

Synthetic activations built from known sparse features: the ground truth a dictionary learner
(a sparse autoencoder) must recover. Each of `features` unit directions in R^d is active in a
row with probability 1 - sparsity, with a coefficient uniform on [0, 1] (the toy models'
features); with features > d they are in superposition, as in a real model's activations.

The artifact (any operator that takes a DATASET can read it):

- tensors "activations" [rows, d] = codes @ directions + noise * N(0, 1), "codes"
  [rows, features] (the true sparse code of each row), "directions" [features, d] (unit norm);
- table "features": feature, frequency (fraction of rows where it is active), mean
  coefficient when active, and its largest |cosine| with another direction;
- data: the parameters, plus "kind": "planted".

>>> from mechstudy.engine import spec
>>> a = spec.DATASETS["planted"].run({}, {"features": 8, "d": 4, "rows": 100}, None)
>>> a.tensors["activations"].shape, a.tensors["directions"].shape
(torch.Size([100, 4]), torch.Size([8, 4]))
"""

from __future__ import annotations

from typing import Any

import polars as pl
import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib.toy import data

PARAMS = (
    Param("features", int, 64, minimum=1, ceiling=10_000, doc="number of planted feature directions"),
    Param("d", int, 16, minimum=1, ceiling=10_000, doc="activation dimension"),
    Param("sparsity", float, 0.95, minimum=0.0, below=1.0, doc="probability that a feature is zero in a row"),
    Param("rows", int, 4096, minimum=1, ceiling=100_000, doc="number of activation vectors"),
    Param("noise", float, 0.0, minimum=0.0, doc="std of Gaussian noise added to the activations"),
    Param("seed", int, 0, minimum=0, doc="random seed"),
)


@spec.dataset("planted", version=1, params=PARAMS, provides=frozenset({"activations", "ground_truth"}),
              needs_model=False)
def generate(inputs: dict, params: dict, ctx: Any) -> Artifact:
    """Activations made of planted sparse features with known directions and codes."""
    p = {q.name: params.get(q.name, q.default) for q in PARAMS}
    if p["features"] < 1 or p["d"] < 1 or p["rows"] < 1:
        raise ValueError(f"planted: features, d and rows must be positive, got {p}")
    if not 0.0 <= p["sparsity"] < 1.0:
        raise ValueError(f"planted: sparsity must be in [0, 1), got {p['sparsity']}")
    if p["noise"] < 0:
        raise ValueError(f"planted: noise must be >= 0, got {p['noise']}")
    gen = torch.Generator().manual_seed(p["seed"])
    out = data.planted(gen, p["rows"], p["features"], p["d"], p["sparsity"], p["noise"])
    codes, dirs = out["codes"], out["directions"]
    active = codes > 0
    cos = (dirs @ dirs.T).abs().fill_diagonal_(0)
    table = pl.DataFrame({
        "feature": list(range(p["features"])),
        "frequency": active.float().mean(0).tolist(),
        "mean_value": (codes.sum(0) / active.sum(0).clamp_min(1)).tolist(),
        "max_cosine": cos.max(1).values.tolist() if p["features"] > 1 else [0.0],
    })
    return Artifact(tensors=out, tables={"features": table}, data={**p, "kind": "planted"})
