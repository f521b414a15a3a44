"""`attention pattern in layer 1 of m on rep`: attention maps (token x token, per head, with the
tokens written on the axes) and per-head summary scores.

The patterns are the model's own attention probabilities (eager attention, the `pattern` site:
[query, key] per head), captured once per model and dataset and shared with every other statement
that reads them (patching patterns, for instance). Per head, averaged over every prompt
(`stdlib/representations/heads.py`): ``previous_token`` (attention on the token just before),
``first_token`` (on the first token, usually BOS), ``self``, ``duplicate_token`` (on earlier copies of
the query's own token) and ``prefix_matching`` (on the token after an earlier copy: induction).

Tables: "result" (layer, head and the five scores), "maps" (the full patterns of the first `show`
prompts: layer, head, prompt, query, key, weight, query_token, key_token), drawn by the default
`attention` chart (one panel per head, the first prompt, at most `heads` panels), and, for a dataset
with an indirect object and a subject (`io_id`, `s_id`: ioi), "answer": per head the attention from
the answer position to the IO, to the subject's first mention (S1) and to its last one (S2)
(`heads.answer_attention`), what name movers, S-inhibition and copy-suppression heads are told by.
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
from mechstudy.stdlib.models.sites import Site
from mechstudy.stdlib.ops.induction import score_table
from mechstudy.stdlib.representations import heads as hs

NEEDS = {"patterns": ("pattern", "clean")}


@spec.operator(
    "attention",
    version=2,
    verb="attention",
    components=("pattern",),
    params=[
        Param("component", str, "pattern", choices=("pattern",), doc="pattern: attention probabilities [query, key]"),
        Param("layers", spec.LAYERS, "all", doc="layers shown and scored"),
        Param("model", spec.MODEL),
        Param("dataset", spec.DATASET),
        Param("show", int, 1, minimum=1, ceiling=1_000, doc="prompts whose full maps are kept in the `maps` table"),
        Param("heads", int, 8, keyed=False, minimum=1, ceiling=1_000, doc="panels drawn by the default chart"),
    ],
    output="table",
    uses_model=True,
    default_chart="attention",
    plan=lambda params, b: b.node("attention", {**params, **iv.plan_captures(b, params, NEEDS)}),
    example="attention pattern in layer 1 of m on ioi",
)
def run(inputs: dict[str, Artifact], params: dict, ctx: Any) -> Artifact:
    """Token x token attention maps with token labels, and per-head summary scores."""
    dataset = inputs["dataset"]
    prompts = Prompts.of(dataset)
    art = inputs.get("patterns")
    named = art.tensors if art is not None else capture_dataset(ctx.model(inputs["model"]), dataset, "pattern",
                                                                "clean", ctx.max_rows)
    pats = {Site.parse(name).layer: torch.as_tensor(t) for name, t in named.items()}
    layers = sorted(pats) if params["layers"] in (None, "all") else [int(l) for l in params["layers"]]
    n_heads = int(pats[layers[0]].shape[1])
    ids, mask = prompts.ids, prompts.attention_mask
    scores = {l: hs.head_scores(pats[l], ids, mask) for l in layers}
    table = score_table(layers, n_heads, scores)
    tok = ctx.model(inputs["model"]).tokenizer
    maps = []
    for p in range(min(int(params["show"]), prompts.n)):
        n = int(mask[p].sum())
        words = [tok.decode([int(i)]) for i in ids[p, :n]]
        for l in layers:
            a = pats[l][p, :, :n, :n].float()
            for h in range(n_heads):
                for q in range(n):
                    maps += [{"layer": l, "head": h, "prompt": p, "query": q, "key": k, "weight": float(a[h, q, k]),
                              "query_token": words[q], "key_token": words[k]} for k in range(n)]
    maps_df = pl.DataFrame(maps, schema={"layer": pl.Int64, "head": pl.Int64, "prompt": pl.Int64, "query": pl.Int64,
                                         "key": pl.Int64, "weight": pl.Float64, "query_token": pl.Utf8,
                                         "key_token": pl.Utf8})
    top = {name: table.sort(name, descending=True, nulls_last=True).row(0, named=True) for name in hs.SCORES}
    tables = {"result": table, "maps": maps_df}
    t = dataset.tensors
    if "io_id" in t and "s_id" in t:
        io, s = torch.as_tensor(t["io_id"]).long(), torch.as_tensor(t["s_id"]).long()
        to = {l: hs.answer_attention(pats[l], ids, prompts.read_pos, io, s) for l in layers}
        tables["answer"] = pl.DataFrame([{"layer": l, "head": h, **{k: float(to[l][k][h]) for k in hs.ANSWER_SCORES}}
                                         for l in layers for h in range(n_heads)])
    return Artifact(
        tensors={name: torch.stack([scores[l][name] for l in layers]).float() for name in hs.SCORES},
        tables=tables,
        data={"layers": layers, "shown_prompts": min(int(params["show"]), prompts.n),
              "convention": "pattern[query, key] = attention probability; scores are means over prompts and queries",
              "chart": {"heads": int(params["heads"]), "title": "Attention patterns (query down, key across)"},
              "headline": [{"label": f"strongest {name.replace('_', '-')} head", "value": f"L{r['layer']}H{r['head']}",
                            "detail": f"{r[name]:.3g}"} for name, r in top.items() if r[name] == r[name]]},
    )
