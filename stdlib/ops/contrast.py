"""`v = contrast resid_pre in layer 1 of m on pairs`: a mean-difference steering vector.

The mean over a dataset's contrast pairs of (clean activation - corrupted activation) at the
layer's residual-stream site: at each prompt's answer position (`at last position`, default) or
averaged over every real position (`at all positions`; the pairs are aligned token for token). With
`sentiment(polarity=positive)` every clean sentence is positive and its corrupted twin negative, so
the vector points from negative to positive sentiment. The result is a steering-vector artifact
(`stdlib/representations/steering.py`): `steer v of m on prompts ...` adds it back.

Table "result": per layer, the vector's norm, the mean norm of single differences, and their mean
cosine with the vector (near 1: the pairs agree on one direction).
"""

from __future__ import annotations

from typing import Any

import polars as pl
import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib import interventions as iv
from mechstudy.stdlib.datasets import Pairs
from mechstudy.stdlib.models.batching import capture_dataset
from mechstudy.stdlib.models.sites import Site, component, words
from mechstudy.stdlib.representations.steering import vector_artifact

COMPONENTS = words(lambda k: k.per_layer and k.stream)


def _needs(params: dict) -> dict[str, tuple[str, str]]:
    kind = component(params["component"]).kind.name
    return {"clean": (kind, "clean"), "corrupted": (kind, "corrupted")}


def differences(clean: torch.Tensor, corrupted: torch.Tensor, pairs: Pairs, positions: str) -> torch.Tensor:
    """Per pair [N, d]: clean - corrupted at the answer position, or averaged over real positions."""
    if positions == "last":
        b = torch.arange(pairs.n)
        return (clean[b, pairs.answer_pos] - corrupted[b, pairs.answer_pos]).double()
    m = pairs.attention_mask.double()[..., None]
    return ((clean.double() - corrupted.double()) * m).sum(1) / m.sum(1)


@spec.operator(
    "contrast",
    version=1,
    verb="contrast",
    components=COMPONENTS,
    params=[
        Param("component", str, "resid_pre", choices=COMPONENTS, doc="the residual-stream site"),
        Param("layers", spec.LAYERS, spec.REQUIRED, doc="the layer(s) a vector is found at (`in layer 1`)"),
        Param("positions", spec.POSITIONS, "last", doc="last (each pair's answer position) or all (mean over positions)"),
        Param("model", spec.MODEL),
        Param("dataset", spec.DATASET, doc="contrast pairs (clean vs corrupted prompts)"),
    ],
    output="steering",
    uses_model=True,
    default_chart="bar",
    requires=frozenset({"corrupted"}),
    plan=lambda params, b: b.node("contrast", {**params, **iv.plan_captures(b, params, _needs(params))}),
    example='model m = zoo "mini"\ndataset pairs = sentiment(polarity=positive)\n'
            "v = contrast resid_pre in layer 1 of m on pairs",
)
def run(inputs: dict[str, Artifact], params: dict, ctx: Any) -> Artifact:
    """Mean difference of clean and corrupted activations over contrast pairs (a steering vector)."""
    dataset = inputs["dataset"]
    pairs = Pairs.of(dataset)
    kind = component(params["component"]).kind.name
    positions = "all" if params["positions"] in ("all", "each") else params["positions"]
    if positions not in ("last", "all"):
        raise ValueError("contrast reads `at last position` or `at all positions`")
    acts = {}
    for which in ("clean", "corrupted"):
        art = inputs.get(which)
        named = art.tensors if art is not None else capture_dataset(ctx.model(inputs["model"]), dataset, kind, which,
                                                                    ctx.max_rows)
        acts[which] = {Site.parse(n).layer: torch.as_tensor(t) for n, t in named.items()}
    layers = [int(l) for l in params["layers"]]
    vecs, rows = [], []
    for l in layers:
        d = differences(acts["clean"][l], acts["corrupted"][l], pairs, positions)  # [N, d]
        v = d.mean(0)
        cos = torch.nn.functional.cosine_similarity(d, v[None], dim=-1)
        vecs.append(v)
        rows.append({"layer": l, "norm": float(v.norm()), "pair_norm": float(d.norm(dim=-1).mean()),
                     "mean_cos": float(cos.mean()), "pairs": pairs.n})
    art = vector_artifact(torch.stack(vecs), layers, kind, "mean_difference", inputs["model"].data,
                          {"positions": positions, "pairs": pairs.n}, pl.DataFrame(rows))
    first = rows[0]
    return Artifact(tensors=art.tensors, tables=art.tables, data={
        **art.data, "headline": [
            {"label": "vector norm", "value": first["norm"], "detail": f"layer {first['layer']} ({kind})"},
            {"label": "agreement of the pairs", "value": first["mean_cos"],
             "detail": f"mean cosine of {pairs.n} single differences with their mean"}]})
