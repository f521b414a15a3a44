"""`memorise toy`: toy models trained on finite data sets, memorisation versus generalisation.

    mem = memorise toy n=100 m=2 sparsity=0.97 examples=[3, 5, 10, 30, 100, 1000] steps=3000

After Henighan et al. (2023), "Superposition, Memorization, and Double Descent": each model is
trained full-batch on T fixed examples (features zero with probability S, else U[0, 1], each
example scaled to unit norm; equal importances) with AdamW and weight decay. With few examples
the model stores the *data points* as directions of its hidden space (each training example's
hidden vector h_t = W x_t gets a share of the m dimensions, dimensionality about m / T, while
the features' dimensionalities are small); with many examples it learns *features* instead
(a pentagon of features, dimensionality 2/5 each, and the data points' hidden vectors are no
longer spread out).

`examples` is a list inside one node (not a sweep) so that one chart compares the regimes;
each T trains on its own random stream, seeded by (seed, T), so adding a T leaves the others'
numbers unchanged. `n`, `m` and `sparsity` are sweepable.

The artifact: tensors W [K, m, n] and b [K, n]; table "result" (per model: T, train and test
loss, ||W||_F^2, the features' and the data points' mean dimensionality, weighted by ||v||^2), table
"features" (per model and feature: norm, dimensionality, x, y) and table "points" (per model
and training example: its hidden vector's norm, dimensionality, x, y).
"""

from __future__ import annotations

from typing import Any

import polars as pl
import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib.toy import data, measure, train

TEST_ROWS = 8192  # fresh examples per model for the test loss
MAX_ROWS = 10_000_000  # sum over models of T * n: the memory a study may ask for

PARAMS = (
    Param("component", str, "toy", choices=("toy",), keyed=False, doc="the word `toy`"),
    Param("n", int, 100, sweepable=True, minimum=1, ceiling=10_000, doc="number of features"),
    Param("m", int, 2, sweepable=True, minimum=1, ceiling=10_000, doc="hidden dimensions"),
    Param("sparsity", float, 0.97, sweepable=True, minimum=0.0, below=1.0, doc="feature sparsity S"),
    Param("examples", list, [3, 5, 10, 30, 100, 1000], minimum=1, ceiling=100_000, nonempty=True, doc="training-set sizes T (a batch inside one node)"),
    Param("seeds", int, 1, minimum=1, ceiling=1_000, doc="models per T"),
    Param("seed", int, 0, minimum=0, doc="base seed; T's stream is seeded by (seed, T)"),
    Param("steps", int, 3000, minimum=1, ceiling=1_000_000, doc="full-batch training steps"),
    Param("lr", float, 0.01, above=0.0, doc="AdamW learning rate (cosine decay to 0)"),
    Param("weight_decay", float, 0.01, minimum=0.0, doc="AdamW decoupled weight decay"),
    Param("output", str, "relu", choices=("relu", "linear"), doc="ReLU output model or linear model"),
    Param("bias", bool, True, doc="learn the output bias b"),
)


def _check(p: dict, sizes: list[int]) -> None:
    if p["n"] < 1 or p["m"] < 1:
        raise ValueError(f"memorise toy: n and m must be positive, got n={p['n']} m={p['m']}")
    if not 0.0 <= p["sparsity"] < 1.0:
        raise ValueError(f"memorise toy: sparsity must be in [0, 1), got {p['sparsity']}")
    if not sizes or min(sizes) < 1 or p["seeds"] < 1:
        raise ValueError(f"memorise toy: examples must be positive sizes and seeds >= 1, got {sizes}")
    if sum(sizes) * p["n"] * p["seeds"] > MAX_ROWS:
        raise ValueError(f"memorise toy: {sum(sizes)} examples x n={p['n']} x {p['seeds']} seeds is too large")


@spec.operator(
    "toy_memorisation",
    version=1,
    params=PARAMS,
    verb="memorise",
    components=("toy",),
    output="toy models on finite data",
    default_chart="memorisation",
    example="mem = memorise toy n=50 m=2 sparsity=0.95 examples=[3, 300] steps=300",
)
def run(inputs: dict, params: dict, ctx: Any) -> Artifact:
    """Train toy models on T examples each (a list of T), and measure the dimensionality of
    features (columns of W) and of the training points' hidden vectors."""
    p = params
    sizes = sorted({int(t) for t in p["examples"]})
    _check(p, sizes)
    n, m, K = p["n"], p["m"], p["seeds"]
    relu, bias = p["output"] == "relu", bool(p["bias"])
    importance = torch.ones(K, n)
    Ws, bs, rows, feats, points = [], [], [], [], []
    with train.one_thread():
        for T in sizes:
            gen = torch.Generator().manual_seed(p["seed"] * 1_000_003 + T)
            X = data.finite_dataset(gen, K, T, n, p["sparsity"])  # [K, n, T]
            W, b = train.init_weights(gen, K, m, n)
            train.fit(W, b, lambda t: (X, None, None), importance, steps=p["steps"], lr=p["lr"],
                      relu=relu, bias=bias, weight_decay=p["weight_decay"])
            train_loss, _, _ = train.loss_and_grads(W, b, X, importance, relu, bias)
            test = data.finite_dataset(gen, K, TEST_ROWS, n, p["sparsity"])
            test_loss, _, _ = train.loss_and_grads(W, b, test, importance, relu, bias)
            H = measure.hidden_points(W, X)
            base = len(Ws) * K
            Ws.append(W)
            bs.append(b)
            rows.append(_summary(W, H, T, base, train_loss, test_loss))
            feats.append(_columns(W, T, base, "feature"))
            points.append(_columns(H, T, base, "point"))
    return Artifact(
        tensors={"W": torch.cat(Ws), "b": torch.cat(bs)},
        tables={"result": pl.concat(rows), "features": pl.concat(feats), "points": pl.concat(points)},
        data={"n": n, "m": m, "sparsity": p["sparsity"], "examples": sizes, "models": K * len(sizes),
              "chart": {"x": "examples", "y": "test_loss", "title": f"toy models on T examples, n={n} m={m}"}},
    )


def _summary(W, H, T: int, base: int, train_loss, test_loss) -> pl.DataFrame:
    """One row per model: losses, ||W||_F^2, and the norm-weighted mean dimensionality of the
    features and of the training points."""
    K = W.shape[0]
    fs, ps = measure.column_stats(W), measure.column_stats(H)

    def weighted(s):  # the mean dimensionality, weighted by ||v||^2 so tiny vectors count little
        w = s["norm"].square()
        return ((s["dimensionality"] * w).sum(1) / w.sum(1).clamp_min(1e-12)).tolist()

    return pl.DataFrame({
        "model": list(range(base, base + K)),
        "examples": [T] * K,
        "seed": list(range(K)),
        "train_loss": train_loss.tolist(),
        "test_loss": test_loss.tolist(),
        "frobenius": measure.frobenius(W).tolist(),
        "feature_dimensionality": weighted(fs),
        "point_dimensionality": weighted(ps),
    })


def _columns(V: torch.Tensor, T: int, base: int, what: str) -> pl.DataFrame:
    """One row per column of V [K, m, c]: norm, dimensionality and the first two coordinates."""
    K, m, c = V.shape
    s = measure.column_stats(V)
    xy = [V[:, d, :] if d < m else torch.zeros(K, c) for d in (0, 1)]
    return pl.DataFrame({
        "model": [base + k for k in range(K) for _ in range(c)],
        "examples": [T] * (K * c),
        "seed": [k for k in range(K) for _ in range(c)],
        what: list(range(c)) * K,
        "norm": s["norm"].flatten().tolist(),
        "dimensionality": s["dimensionality"].flatten().tolist(),
        "x": xy[0].flatten().tolist(),
        "y": xy[1].flatten().tolist(),
    })
