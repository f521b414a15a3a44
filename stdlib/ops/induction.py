"""`induction heads in all layers of m on rep`: induction heads (prefix matching), previous-token
heads, and the in-context learning score (Olsson et al., 2022).

Per head, from the attention patterns on the dataset's prompts (`stdlib/representations/heads.py`):
``prefix_matching`` (attention from a token to the token that followed its earlier occurrence),
``previous_token``, ``duplicate_token``, ``first_token`` and ``self``. A head whose prefix matching
is above `threshold` is listed as an induction head. On repeated random tokens
(`dataset rep = induction(...)`) prefix matching is the classic induction score; on natural text it
counts every repeated token.

The in-context learning score is the loss late in the context minus the loss early in it, at
50/512 and 500/512 of the row as in Olsson et al.'s "500th token minus 50th token" (bands of a
twentieth of the row around each; `stdlib/representations/heads.icl_positions`): negative when
later tokens are predicted better thanks to the context. The table "loss" gives the mean loss at
every position.

Tables: "result" (layer, head, each score, induction), "loss" (position, loss, count).
"""

from __future__ import annotations

from typing import Any

import polars as pl
import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib.datasets import Prompts
from mechstudy.stdlib.models.batching import chunks, trimmed
from mechstudy.stdlib.models.sites import Site
from mechstudy.stdlib.representations import heads as hs


def score_table(layers: list[int], n_heads: int, scores: dict[int, dict[str, torch.Tensor]]) -> pl.DataFrame:
    """One row per (layer, head) with every score of `heads.SCORES`."""
    rows = []
    for l in layers:
        for h in range(n_heads):
            rows.append({"layer": l, "head": h, **{name: float(scores[l][name][h]) for name in hs.SCORES}})
    return pl.DataFrame(rows, schema={"layer": pl.Int64, "head": pl.Int64, **{n: pl.Float64 for n in hs.SCORES}})


def scan(adapter: Any, prompts: Prompts, layers: list[int], max_rows: int, losses: bool):
    """Per-layer head scores over every prompt, and (with `losses`) the summed loss and count per
    prediction position."""
    sites = [Site(l, "pattern") for l in layers]
    total: dict[int, dict] = {l: {} for l in layers}
    counts: dict[int, dict] = {l: {} for l in layers}
    width = int(prompts.ids.shape[1])
    loss_sum = torch.zeros(max(width - 1, 0), dtype=torch.float64)
    loss_n = torch.zeros(max(width - 1, 0), dtype=torch.float64)
    with torch.no_grad():
        for rows in chunks(prompts.n, max_rows):
            ids, mask = trimmed(prompts.ids, prompts.attention_mask, rows)
            out = adapter.forward(ids, mask, capture=sites, logits=losses)
            for l, s in zip(layers, sites):
                hs.accumulate(total[l], counts[l], out.acts[s].cpu(), ids, mask)
            if losses:
                nll, ok = hs.token_losses(out.logits.cpu(), ids, mask)
                w = ids.shape[1] - 1
                loss_sum[:w] += nll.sum(0)
                loss_n[:w] += ok.double().sum(0)
    scores = {l: {name: (total[l][name] / counts[l][name] if counts[l][name] else
                         torch.full((adapter.n_heads,), float("nan"), dtype=torch.float64)) for name in hs.SCORES}
              for l in layers}
    return scores, loss_sum, loss_n


@spec.operator(
    "induction",
    version=1,
    verb="induction",
    components=("heads",),
    params=[
        Param("component", str, "heads", choices=("heads",), doc="heads: every attention head"),
        Param("layers", spec.LAYERS, "all", doc="layers whose heads are scored"),
        Param("model", spec.MODEL),
        Param("dataset", spec.DATASET, doc="prompts: repeated random tokens (`induction(...)`) or any text"),
        Param("threshold", float, 0.5, minimum=0.0, maximum=1.0, doc="prefix matching above which a head is listed as an induction head"),
    ],
    output="table",
    uses_model=True,
    default_chart="heatmap",
    model_features=frozenset({"causal"}),
    example='model m = zoo "attn2"\ndataset rep = induction(n=8, length=20)\ninduction heads in all layers of m on rep',
)
def run(inputs: dict[str, Artifact], params: dict, ctx: Any) -> Artifact:
    """Prefix-matching, previous-token and other head scores, induction heads and the ICL score."""
    adapter = ctx.model(inputs["model"])
    prompts = Prompts.of(inputs["dataset"])
    layers = list(range(adapter.n_layers)) if params["layers"] in (None, "all") else [int(l) for l in params["layers"]]
    scores, loss_sum, loss_n = scan(adapter, prompts, layers, ctx.max_rows, losses=True)
    table = score_table(layers, adapter.n_heads, scores)
    thr = params["threshold"]
    table = table.with_columns((pl.col("prefix_matching") > thr).alias("induction"))
    per_pos = loss_sum / loss_n.clamp(min=1)
    loss = pl.DataFrame({"position": list(range(len(per_pos))), "loss": per_pos.tolist(),
                         "count": loss_n.long().tolist()}).filter(pl.col("count") > 0)
    width = int(prompts.attention_mask.sum(1).max())
    early, late = hs.icl_positions(width)
    mean_at = lambda pos: float(loss_sum[pos].sum() / loss_n[pos].sum().clamp(min=1))  # noqa: E731
    l_early, l_late = mean_at(early), mean_at(late)
    ind = table.filter(pl.col("induction")).sort("prefix_matching", descending=True)
    prev = table.sort("previous_token", descending=True, nulls_last=True).row(0, named=True)
    best = table.sort("prefix_matching", descending=True, nulls_last=True).row(0, named=True)
    names = ", ".join(f"L{r['layer']}H{r['head']} {r['prefix_matching']:.2f}" for r in ind.iter_rows(named=True))
    return Artifact(
        tensors={name: torch.stack([scores[l][name] for l in layers]).float() for name in hs.SCORES}
        | {"loss_by_position": per_pos.float()},
        tables={"result": table, "loss": loss},
        data={"layers": layers, "threshold": thr, "icl_score": l_late - l_early, "loss_early": l_early,
              "loss_late": l_late, "early_positions": early, "late_positions": late, "rows": prompts.n,
              "induction_heads": [[r["layer"], r["head"]] for r in ind.iter_rows(named=True)],
              "convention": "scores are mean attention weights (see stdlib/representations/heads.py); ICL score = "
                            "mean loss (nats) at ~500/512 of the row minus at ~50/512",
              "chart": {"value": "prefix_matching", "domain": [0, 1], "title": "Prefix-matching score per head"},
              "headline": [
                  {"label": "induction heads", "value": len(ind),
                   "detail": f"prefix matching > {thr:g}: {names}" if names else
                             f"none above {thr:g} (best L{best['layer']}H{best['head']} {best['prefix_matching']:.3g})"},
                  {"label": "previous-token head", "value": f"L{prev['layer']}H{prev['head']}",
                   "detail": f"previous-token score {prev['previous_token']:.3g}"},
                  {"label": "in-context learning score", "value": l_late - l_early,
                   "detail": f"loss {l_late:.3g} late (positions {late[0]}-{late[-1]}) - {l_early:.3g} early "
                             f"({early[0]}-{early[-1]}), nats"}]},
    )
