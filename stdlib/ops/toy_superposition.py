"""`train toy`: a batch of toy models of superposition, trained together, with their measurements.

    toy = train toy n=5 m=2 sparsity=[0, 0.7, 0.9] importance=0.9 seeds=4 steps=3000
    phase = train toy n=2 m=1 sparsity=[0, 0.5, 0.8, 0.9] importance=[0.5, 1, 2] seeds=3
    lin = train toy linear bias=false n=5 m=2 sparsity=[0, 0.9]
    corr = train toy anticorrelated group=2 n=6 m=2 sparsity=[0.9]

`sparsity` and `importance` are lists and are NOT sweeps: every (sparsity, importance, seed)
combination is one model of one batched training run (one node, one artifact), because the
charts compare them side by side (dimensions per feature against 1/(1-S), the phase diagram)
and training them as one tensor is what makes a sweep cheap. `n` and `m` are sweepable: each
value is its own node. `importance=r` means I_i = r^i (for n=2: the second feature's importance
relative to the first, the phase diagram's axis).

Independent features train on rows conditioned on at least one active feature, with the
all-zero row's loss added exactly (`data.sample_nonzero`): the same objective as plain
sampling, with far less gradient noise at high sparsity. Which arrangement a model reaches
(which feature an antipodal pair leaves out, whether an n=2, m=1 model escapes to
superposition) is decided mostly by its initialisation, hence `seeds` and the `best` column.

The artifact: tensors W [K, m, n], b [K, n], importance [K, n], sparsity [K], loss [K] and
loss_history [K, 50]; table "result" (one row per model: loss, ||W||_F^2, dimensions per
feature m / ||W||_F^2 and with normalised norms m / features represented, the represented
features' mean norm, features represented, their arrangement for m = 2 (a pentagon ...), best seed
of its configuration) and table "features" (one row
per model and feature: norm, superposition, dimensionality D_i, bias, status, coordinates).
"""

from __future__ import annotations

from typing import Any

import polars as pl
import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib.toy import data, measure, train

MAX_MODELS = 4096  # models in one batch: beyond this a study is almost certainly a typo
EVAL_ROWS = 16384  # fresh rows per model for the reported loss

PARAMS = (
    Param("component", str, "toy", choices=("toy",), keyed=False, doc="the word `toy`"),
    Param("n", int, 5, sweepable=True, minimum=1, ceiling=10_000, doc="number of features"),
    Param("m", int, 2, sweepable=True, minimum=1, ceiling=10_000, doc="hidden dimensions"),
    Param("sparsity", list, [0.0], minimum=0.0, below=1.0, nonempty=True, doc="feature sparsities S (a batch inside one node, not a sweep)"),
    Param("importance", list, [1.0], above=0.0, nonempty=True, doc="importance decay r, I_i = r^i (a batch inside one node)"),
    Param("seeds", int, 1, minimum=1, ceiling=1_000, doc="models per (sparsity, importance), differing in init and data"),
    Param("seed", int, 0, minimum=0, doc="seed of the whole batch's random stream"),
    Param("steps", int, 3000, minimum=1, ceiling=1_000_000, doc="training steps"),
    Param("batch", int, 1024, minimum=1, ceiling=65_536, doc="rows per model per step"),
    Param("lr", float, 0.03, above=0.0, doc="Adam learning rate (cosine decay to 0)"),
    Param("output", str, "relu", choices=("relu", "linear"), doc="ReLU output model or linear model"),
    Param("bias", bool, True, doc="learn the output bias b"),
    Param("features", str, "independent", choices=data.STRUCTURES,
          doc="independent features, or correlated / anticorrelated sets"),
    Param("group", int, 2, minimum=1, doc="set size for correlated / anticorrelated features"),
)


def _as_list(v: Any) -> list[float]:
    return [float(x) for x in (v if isinstance(v, (list, tuple)) else [v])]


def configs(params: dict) -> list[dict]:
    """One dict per model, in batch order: sparsity-major, then importance, then seed."""
    sparsities, importances, seeds = _as_list(params["sparsity"]), _as_list(params["importance"]), params["seeds"]
    out = []
    for s in sparsities:
        for r in importances:
            for j in range(seeds):
                out.append({"sparsity": s, "importance": r, "seed": j})
    return out


def _check(p: dict, cfg: list[dict]) -> None:
    if p["n"] < 1 or p["m"] < 1:
        raise ValueError(f"train toy: n and m must be positive, got n={p['n']} m={p['m']}")
    if not cfg:
        raise ValueError("train toy: empty sparsity or importance list, or seeds=0")
    if len(cfg) > MAX_MODELS:
        raise ValueError(f"train toy: {len(cfg)} models in one batch; the limit is {MAX_MODELS}")
    for c in cfg:
        if not 0.0 <= c["sparsity"] < 1.0:
            raise ValueError(f"train toy: sparsity must be in [0, 1), got {c['sparsity']}")
        if c["importance"] <= 0:
            raise ValueError(f"train toy: importance must be positive, got {c['importance']}")
    if p["steps"] < 1 or p["batch"] < 1:
        raise ValueError("train toy: steps and batch must be positive")


@spec.operator(
    "toy_superposition",
    version=2,
    params=PARAMS,
    verb="train",
    components=("toy",),
    output="toy models",
    default_chart="dims_per_feature",
    example="toy = train toy n=5 m=2 sparsity=[0, 0.9] seeds=2 steps=300",
)
def run(inputs: dict, params: dict, ctx: Any) -> Artifact:
    """Train toy models of superposition f(x) = ReLU(W^T W x + b), one per (sparsity,
    importance, seed), as one batch; measure ||W||_F^2, dimensions per feature, norms,
    superposition and dimensionality."""
    p = params
    cfg = configs(p)
    _check(p, cfg)
    n, m, K = p["n"], p["m"], len(cfg)
    S = torch.tensor([c["sparsity"] for c in cfg])
    r = torch.tensor([c["importance"] for c in cfg], dtype=torch.float64)
    importance = (r.unsqueeze(1) ** torch.arange(n, dtype=torch.float64)).float()  # I_i = r^i
    relu, bias = p["output"] == "relu", bool(p["bias"])
    gen = torch.Generator().manual_seed(p["seed"])
    eval_gen = torch.Generator().manual_seed(p["seed"] + 1_000_003)  # eval rows do not depend on steps

    def sample(g: torch.Generator, rows: int) -> train.Batch:
        if p["features"] == "independent":
            x, p_nonzero = data.sample_nonzero(g, S, rows, n)
            return x, p_nonzero / rows, 1 - p_nonzero
        return data.sample_features(g, S, rows, n, p["features"], p["group"]), None, None

    with train.one_thread():
        W, b = train.init_weights(gen, K, m, n)
        history = train.fit(W, b, lambda t: sample(gen, p["batch"]), importance,
                            steps=p["steps"], lr=p["lr"], relu=relu, bias=bias)
        loss = train.expected_loss(W, b, importance, lambda rows: sample(eval_gen, rows), EVAL_ROWS, relu, bias)
    result, features = tables(W, b, importance, cfg, loss)
    return Artifact(
        tensors={"W": W, "b": b, "importance": importance, "sparsity": S, "loss": loss, "loss_history": history},
        tables={"result": result, "features": features},
        data={"n": n, "m": m, "models": K, "output": p["output"], "bias": bias, "features": p["features"],
              "chart": {"x": "inv_density", "y": "dims_per_feature", "title": f"toy models n={n} m={m}"}},
    )


def tables(W: torch.Tensor, b: torch.Tensor, importance: torch.Tensor, cfg: list[dict], loss: torch.Tensor):
    """(per-model table, per-feature table) for a trained batch."""
    K, m, n = W.shape
    stats = measure.column_stats(W)
    fro = measure.frobenius(W)
    represented = (stats["norm"] >= measure.REPRESENTED).sum(1)
    best = _best(cfg, loss.tolist())
    meta = {
        "model": list(range(K)),
        "sparsity": [c["sparsity"] for c in cfg],
        "inv_density": [1.0 / (1.0 - c["sparsity"]) for c in cfg],
        "importance": [c["importance"] for c in cfg],
        "seed": [c["seed"] for c in cfg],
        "best": best,
    }
    result = pl.DataFrame({
        **meta,
        "loss": loss.tolist(),
        "frobenius": fro.tolist(),
        "dims_per_feature": (m / fro.clamp_min(1e-12)).tolist(),
        "dims_per_unit_feature": measure.dims_per_unit_feature(W).tolist(),
        "mean_norm": measure.mean_represented_norm(W).tolist(),
        "represented": represented.tolist(),
        "arrangement": measure.arrangement(W),
    })
    status = measure.status(stats["norm"], stats["superposition"])
    coords = [W[:, d, :] if d < m else torch.zeros(K, n) for d in (0, 1)]
    features = pl.DataFrame({
        **{k: [v for v in col for _ in range(n)] for k, col in meta.items()},
        "feature": list(range(n)) * K,
        "feature_importance": importance.flatten().tolist(),
        "norm": stats["norm"].flatten().tolist(),
        "superposition": stats["superposition"].flatten().tolist(),
        "dimensionality": stats["dimensionality"].flatten().tolist(),
        "bias": b.flatten().tolist(),
        "status": [s for row in status for s in row],
        "x": coords[0].flatten().tolist(),
        "y": coords[1].flatten().tolist(),
    })
    return result, features


def _best(cfg: list[dict], loss: list[float]) -> list[bool]:
    """Whether each model has the lowest loss among the seeds of its configuration."""
    winner: dict[tuple, int] = {}
    for k, c in enumerate(cfg):
        key = (c["sparsity"], c["importance"])
        if key not in winner or loss[k] < loss[winner[key]]:
            winner[key] = k
    chosen = set(winner.values())
    return [k in chosen for k in range(len(cfg))]
