"""`train crosscoder`: one dictionary read from and written to several layers, or the same layers of
two models, on the training machinery of `train sae` (stdlib/ops/train_dictionary.py).

    cc = train crosscoder resid_post in all layers of m over web width=1024 k=32
    dd = train crosscoder resid_post in layer 1 of a over web other=b   # two models: model diffing

Its input is the concatenation of the site at every listed layer of the model (and then of the
`other` model, which reads the same corpus tokenised by itself: the two must tokenise it the same
way, checked on every shard). Each feature has one decoder block per (model, layer), and the L1
penalty weighs a feature by the sum of its blocks' norms (Lindsey et al. 2024). Besides the training
history, the table "features" gives every feature's decoder norm per block and, across two models,
its relative norm ||d_other|| / (||d_model|| + ||d_other||): near 0 a feature only the first model
writes, near 1 only the second, near 0.5 a shared one (the "rel_norm" histogram of model diffing).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import polars as pl
import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib.activations import plan_shards, shard_inputs
from mechstudy.stdlib.activations.stream import _open
from mechstudy.stdlib.ops import train_dictionary as td
from mechstudy.stdlib.dictionary.use import corpus_for


def _param(p: Param) -> Param:
    if p.name == "component":
        return dataclasses.replace(p, default="crosscoder", choices=("crosscoder",), doc="crosscoder")
    if p.name == "layers":
        return dataclasses.replace(p, sweepable=False, doc="the layers read and written (all of them at once)")
    return p


PARAMS = tuple(_param(p) for p in td.PARAMS if p.name != "target") + (
    Param("other", spec.MODEL, None, doc="a second model read at the same layers (`other=NAME`): model diffing"),
)


def validate(params: Mapping[str, Any]) -> None:
    td.validate({**params, "target": None})
    if params["other"] is not None and params["dataset"] is not None:
        e = ValueError("a crosscoder across two models reads their activations: use `of MODEL over CORPUS`")
        e.option = "other"  # type: ignore[attr-defined]
        raise e


def plan(params: dict, b: Any) -> Any:
    p = td.resolved({**params, "target": None})
    inputs: dict[str, Any] = {}
    if p["dataset"] is None:
        cols = td.columns(p, b)
        if p["other"] is not None:
            kw = {"shard_tokens": p["shard_tokens"], "dtype": p["store_dtype"]}
            corpus2 = corpus_for(b, p["corpus"], p["other"])
            cols += [plan_shards(b, p["other"], corpus2, p["site"], l, **kw) for l in p["layers"]]
        inputs.update(shard_inputs(*cols))
        inputs.update(model=p["model"], corpus=p["corpus"])
        if p["other"] is not None:
            inputs["other"] = p["other"]
    else:
        inputs["dataset"] = p["dataset"]
    return td.chain("train_crosscoder", p, inputs, b)


def check_aligned(inputs: Mapping[str, Artifact], n_layers: int) -> None:
    """The second model's shards hold the same tokens as the first's (same tokenisation)."""
    for name, art in inputs.items():
        if name.startswith("shard0_"):
            other = inputs[f"shard{n_layers}_{name.split('_')[1]}"]
            a, b = _open(art, ["token"]).get("token"), _open(other, ["token"]).get("token")
            if a is None or b is None or a.shape != b.shape or not torch.equal(a, b):
                raise ValueError("the two models tokenise the corpus differently: a crosscoder across models needs "
                                 "the same tokens at every position")


def relative_norms(W_dec: torch.Tensor, groups: int, models: int) -> pl.DataFrame:
    """Per feature: each block's decoder norm, and across two models the relative norm."""
    norms = W_dec.detach().view(W_dec.shape[0], groups, -1).norm(dim=-1)  # [F, groups]
    cols: dict[str, Any] = {"feature": list(range(W_dec.shape[0]))}
    for g in range(groups):
        cols[f"norm_{g}"] = norms[:, g].tolist()
    if models == 2:
        half = groups // 2
        a, b = norms[:, :half].sum(-1), norms[:, half:].sum(-1)
        cols["rel_norm"] = (b / (a + b).clamp_min(1e-12)).tolist()
    return pl.DataFrame(cols)


@spec.operator(
    "train_crosscoder",
    version=1,
    verb="train",
    components=("crosscoder",),
    params=PARAMS,
    plan=plan,
    validate=validate,
    output="table",
    default_chart="loss_curve",
    doc=__doc__.split("\n\n")[0],
    example='corpus web = text "README.md" tokens=2048 context=32\n'
            "cc = train crosscoder resid_post in layers 0..1 of m over web width=256 k=8 batch=256 steps=20 "
            "checkpoint=10",
)
def run(inputs: Mapping[str, Artifact], params: dict, ctx: Any) -> Artifact:
    """Train a crosscoder from the previous checkpoint to step `stop`."""
    layers = list(params["layers"] or [])
    models = 2 if "other" in inputs else 1
    if models == 2 and "resume" not in inputs:
        check_aligned(inputs, len(layers))
    art = td.run(inputs, {**params, "target": None}, ctx)
    shape = art.data["shape"]
    W_dec = torch.as_tensor(art.tensors["W_dec"])
    feats = relative_norms(W_dec, int(shape["groups"]), models)
    data = {**art.data, "models": models, "layers": layers,
            "blocks": [{"model": m, "layer": l} for m in range(models) for l in layers]}
    if models == 2:
        rel = feats["rel_norm"]
        data["headline"] = [*art.data["headline"],
                            {"label": "features shared by both models (0.3 < relative norm < 0.7)",
                             "value": float(((rel > 0.3) & (rel < 0.7)).mean())},
                            {"label": "features of one model only (relative norm < 0.1 or > 0.9)",
                             "value": float(((rel < 0.1) | (rel > 0.9)).mean())}]
    return Artifact(tensors=art.tensors, tables={**art.tables, "features": feats}, data=data)
