"""`similarity resid_post in all layers of m on d using cka`: representational similarity between
every pair of layers of one model, or between two models (`other=n`), on the same examples.

Methods (`stdlib/representations/similarity.py`): ``cka`` (linear CKA), ``rbf_cka`` (CKA with a
Gaussian kernel whose width is `sigma` times the median distance) and ``rsa`` (Spearman
correlation of the representational dissimilarity matrices, 1 - Pearson correlation between
examples). An example is one token's activation: each prompt's read position (`at last position`,
default: its answer position, else its last token) or every real token (`at all positions`).

With `other=n` the rows are layers of `m` and the columns layers of `n`, both reading the same
dataset, tokenised by each model; the examples must line up, so `at all positions` needs the two
tokenisations to agree (models sharing a tokenizer), while `at last position` compares prompts.

Tables: "result" (layer, other, similarity; the heatmap).
"""

from __future__ import annotations

from typing import Any

import polars as pl
import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib import interventions as iv
from mechstudy.stdlib.datasets import Prompts
from mechstudy.stdlib.models.batching import capture_dataset
from mechstudy.stdlib.models.sites import Site, component, words
from mechstudy.stdlib.representations import similarity as S

COMPONENTS = words(lambda k: k.per_layer and len(k.seq_axes) == 1)
MAX_EXAMPLES = 4096


def _plan(params: dict, b: Any) -> Any:
    kind = component(params["component"]).kind.name
    keyed = {**params, **iv.plan_captures(b, params, {"acts": (kind, "clean")})}
    other = params.get("other")
    if other is not None:
        ds = params["dataset"]
        # The same dataset declaration, tokenised by the other model: one more dataset node.
        other_ds = b.node("dataset", dict(ds.params), {"model": other}) if "model" in dict(ds.inputs) else ds
        keyed["other_dataset"] = other_ds
        keyed.update(iv.plan_captures(b, {"model": other, "dataset": other_ds}, {"other_acts": (kind, "clean")}))
    return b.node("similarity", keyed)


def examples(acts: dict[int, torch.Tensor], layers: list[int], prompts: Prompts, positions: str) -> list[torch.Tensor]:
    """[n, d] per layer: every prompt at its read position, or every real token."""
    if positions == "last":
        rows, pos = torch.arange(prompts.n), prompts.read_pos
    else:
        rows, pos = prompts.attention_mask.bool().nonzero(as_tuple=True)
    if len(rows) > MAX_EXAMPLES:
        raise ValueError(f"{len(rows)} examples; similarity compares at most {MAX_EXAMPLES} (n x n matrices): "
                         "use fewer prompts or `at last position`")
    return [acts[l][rows, pos].reshape(len(rows), -1).double() for l in layers]


def _acts(art: Artifact | None, model: Artifact, dataset: Artifact, kind: str, ctx: Any) -> dict[int, torch.Tensor]:
    named = art.tensors if art is not None else capture_dataset(ctx.model(model), dataset, kind, "clean", ctx.max_rows)
    return {Site.parse(name).layer: torch.as_tensor(t) for name, t in named.items()}


@spec.operator(
    "similarity",
    version=1,
    verb="similarity",
    components=COMPONENTS,
    params=[
        Param("component", str, "resid_post", choices=COMPONENTS, doc="the activation compared"),
        Param("layers", spec.LAYERS, "all", doc="layers of the model (rows)"),
        Param("positions", spec.POSITIONS, "last", doc="last (each prompt's read position) or all (every real token)"),
        Param("model", spec.MODEL),
        Param("dataset", spec.DATASET),
        Param("method", str, "cka", choices=S.METHODS, doc="cka (linear), rbf_cka or rsa"),
        Param("other", spec.MODEL, None, doc="a second model (columns: its layers); default the same model"),
        Param("sigma", float, 0.8, above=0.0, doc="rbf_cka: kernel width as a fraction of the median distance"),
    ],
    output="table",
    uses_model=True,
    default_chart="heatmap",
    plan=_plan,
    example="similarity resid_post in all layers of m on ioi using cka",
)
def run(inputs: dict[str, Artifact], params: dict, ctx: Any) -> Artifact:
    """Linear / RBF CKA or RSA between every pair of layers (of one model or two)."""
    kind = component(params["component"]).kind.name
    positions = "all" if params["positions"] in ("all", "each") else params["positions"]
    if positions not in ("last", "all"):
        raise ValueError("similarity reads `at last position` or `at all positions`")
    dataset = inputs["dataset"]
    prompts = Prompts.of(dataset)
    acts = _acts(inputs.get("acts"), inputs["model"], dataset, kind, ctx)
    layers = sorted(acts) if params["layers"] in (None, "all") else [int(l) for l in params["layers"]]
    xa = examples(acts, layers, prompts, positions)
    if params.get("other") is not None or "other" in inputs:
        other_ds = inputs.get("other_dataset", dataset)
        other_prompts = Prompts.of(other_ds)
        if positions == "all" and not torch.equal(other_prompts.attention_mask, prompts.attention_mask):
            raise ValueError("`at all positions` needs both models to tokenise the dataset alike; use `at last position`")
        other = _acts(inputs.get("other_acts"), inputs["other"], other_ds, kind, ctx)
        other_layers = sorted(other)
        xb = examples(other, other_layers, other_prompts, positions)
        if xb[0].shape[0] != xa[0].shape[0]:
            raise ValueError("the two models read different numbers of examples")
    else:
        other_layers, xb = layers, xa
    sim = S.similarity_matrix(params["method"], xa, xb, params["sigma"])
    table = pl.DataFrame([{"layer": la, "other": lb, "similarity": float(sim[i, j])}
                          for i, la in enumerate(layers) for j, lb in enumerate(other_layers)])
    off = [(la, lb, float(sim[i, j])) for i, la in enumerate(layers) for j, lb in enumerate(other_layers) if la != lb]
    name = {"cka": "linear CKA", "rbf_cka": f"RBF CKA (sigma {params['sigma']:g} x median distance)",
            "rsa": "RSA (Spearman of 1 - Pearson RDMs)"}[params["method"]]
    headline = [{"label": "examples", "value": int(xa[0].shape[0]), "detail": f"{positions} position(s), {kind}"}]
    if off:
        lo = min(off, key=lambda t: t[2])
        headline.append({"label": "least similar pair", "value": lo[2], "detail": f"layers {lo[0]} and {lo[1]}"})
    if len(layers) > 1 and xb is xa:
        adj = [float(sim[i, i + 1]) for i in range(len(layers) - 1)]
        headline.append({"label": "adjacent layers", "value": sum(adj) / len(adj), "detail": "mean similarity"})
    return Artifact(
        tensors={"similarity": sim.float()},
        tables={"result": table},
        data={"method": params["method"], "site": kind, "layers": layers, "other_layers": other_layers,
              "examples": int(xa[0].shape[0]), "positions": positions, "convention": name,
              "chart": {"x": "other", "y": "layer", "value": "similarity", "domain": [0, 1] if params["method"] != "rsa"
                        else [-1, 1], "title": f"{name} between layers"},
              "headline": headline},
    )
