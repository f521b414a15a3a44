"""`w = actadd resid_pre in layer 1 of m positive " wonderful" negative " terrible"`: an ActAdd steering
vector (Turner et al., 2023) from two prompts.

Both prompts run through the model; the vector is the positive prompt's activation minus the
negative prompt's at the layer's residual-stream site, each read at its last token (for one-word
prompts such as " Love" / " Hate", the activation of that word). The result is a steering-vector
artifact (`stdlib/representations/steering.py`), added back by `steer w of m on prompts ...`.
"""

from __future__ import annotations

from typing import Any

import polars as pl
import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib.datasets import encode
from mechstudy.stdlib.models.sites import Site, component, words
from mechstudy.stdlib.representations.steering import vector_artifact

COMPONENTS = words(lambda k: k.per_layer and k.stream)


@spec.operator(
    "actadd",
    version=1,
    verb="actadd",
    components=COMPONENTS,
    params=[
        Param("component", str, "resid_pre", choices=COMPONENTS, doc="the residual-stream site"),
        Param("layers", spec.LAYERS, spec.REQUIRED, doc="the layer(s) a vector is found at (`in layer 1`)"),
        Param("model", spec.MODEL),
        Param("positive", str, spec.REQUIRED, doc="the prompt steered toward (its last token is read)"),
        Param("negative", str, spec.REQUIRED, doc="the prompt steered away from"),
    ],
    output="steering",
    uses_model=True,
    default_chart="bar",
    example='w = actadd resid_pre in layer 1 of m positive " wonderful" negative " terrible"',
)
def run(inputs: dict[str, Artifact], params: dict, ctx: Any) -> Artifact:
    """The difference of two prompts' activations at a layer (ActAdd)."""
    adapter = ctx.model(inputs["model"])
    kind = component(params["component"]).kind.name
    layers = [int(l) for l in params["layers"]]
    sites = [Site(l, kind) for l in layers]
    reads = {}
    for side in ("positive", "negative"):
        ids = encode(adapter.tokenizer, params[side], None)
        if not ids:
            raise ValueError(f"the {side} prompt is empty")
        with torch.no_grad():
            acts = adapter.capture(torch.tensor([ids]), None, sites)
        reads[side] = (ids, torch.stack([acts[s][0, -1].double().cpu() for s in sites]))
    vecs = reads["positive"][1] - reads["negative"][1]
    tok = adapter.tokenizer
    table = pl.DataFrame({"layer": layers, "norm": vecs.norm(dim=-1).tolist(),
                          "positive_token": [tok.decode([reads["positive"][0][-1]])] * len(layers),
                          "negative_token": [tok.decode([reads["negative"][0][-1]])] * len(layers)})
    art = vector_artifact(vecs, layers, kind, "actadd", inputs["model"].data,
                          {"positive": params["positive"], "negative": params["negative"]}, table)
    return Artifact(tensors=art.tensors, tables=art.tables, data={
        **art.data, "headline": [{"label": "vector norm", "value": float(vecs[0].norm()),
                                  "detail": f"layer {layers[0]}: {params['positive']!r} - {params['negative']!r}"}]})
