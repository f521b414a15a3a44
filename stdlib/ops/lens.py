"""`lens resid_post in all layers of m on facts`: the logit lens (nostalgebraist, 2020).

Each layer's residual stream is read as if it were the last one: through the model's own final
norm and unembedding (the native modules, `Adapter.unembed`; nothing is re-implemented), giving a
next-token distribution per layer. At the last layer's `resid_post` this is exactly the model's
output. Per layer, averaged over prompts (and over positions with `at all positions`):

- ``kl``: KL(model || lens) in nats, the model's final next-token distribution against the
  layer's decoded one (0 at the last layer);
- ``top1_agree``: how often the layer's most likely token is the model's;
- with answer tokens (`io_id`, e.g. ioi, facts, induction), at each prompt's answer position:
  ``answer_prob`` and ``answer_rank`` (0 = the most likely token; the median over prompts).

Positions: `at last position` (default: each prompt's answer position, else its last real token)
or `at all positions` / `at every position` (every real position, averaged; answer columns still
at the answer position). The
table "top" lists each layer's `top` most likely tokens, decoded, for the first `show` prompts at
their read position, so a reader sees the prediction form layer by layer.

Components: the residual-stream kinds (resid_pre, resid_mid, resid_post; `stream` in the site
vocabulary). Needs a model whose stream ends in a final norm and an unembedding.
"""

from __future__ import annotations

from typing import Any

import polars as pl
import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib.datasets import Prompts
from mechstudy.stdlib.models.batching import chunks, trimmed
from mechstudy.stdlib.models.sites import Site, component, words

COMPONENTS = words(lambda k: k.per_layer and k.stream)


def lens_logits(adapter: Any, resid: torch.Tensor) -> torch.Tensor:
    """The logit lens of residual-stream states [..., d_model] -> log-probabilities [..., V], float64."""
    return torch.log_softmax(adapter.unembed(resid).double(), -1)


def read_mask(prompts: Prompts, rows: torch.Tensor, width: int, positions: str) -> torch.Tensor:
    """[B, S] bool: where a chunk's prompts are read (their read position, or every real one)."""
    ar = torch.arange(width)[None]
    if positions == "all":
        return prompts.attention_mask[rows, :width].bool()
    return ar == prompts.read_pos[rows][:, None]


@spec.operator(
    "lens",
    version=1,
    verb="lens",
    components=COMPONENTS,
    params=[
        Param("component", str, "resid_post", choices=COMPONENTS, doc="the residual-stream state decoded"),
        Param("layers", spec.LAYERS, "all", doc="layers to decode"),
        Param("positions", spec.POSITIONS, "last", doc="last (each prompt's answer position) or all"),
        Param("model", spec.MODEL),
        Param("dataset", spec.DATASET),
        Param("method", str, "logit", choices=("logit",), doc="logit: the model's own final norm and unembedding"),
        Param("top", int, 5, doc="tokens listed per layer in the `top` table"),
        Param("show", int, 4, doc="prompts listed in the `top` table"),
    ],
    output="table",
    uses_model=True,
    default_chart="line",
    model_features=frozenset({"lm_head", "residual_stream"}),
    example="lens resid_post in all layers of m on ioi",
)
def run(inputs: dict[str, Artifact], params: dict, ctx: Any) -> Artifact:
    """The logit lens: each layer's residual stream through the final norm and unembedding."""
    adapter = ctx.model(inputs["model"])
    prompts = Prompts.of(inputs["dataset"])
    kind = component(params["component"]).kind.name
    layers = list(range(adapter.n_layers)) if params["layers"] in (None, "all") else [int(l) for l in params["layers"]]
    positions = "all" if params["positions"] == "each" else params["positions"]
    if positions not in ("last", "all"):
        raise ValueError(f"the logit lens reads `at last position` or `at all positions`, not {positions!r}")
    k, show = int(params["top"]), min(int(params["show"]), prompts.n)
    sites = [Site(l, kind) for l in layers]
    n = prompts.n
    kl_sum, agree_sum, count = torch.zeros(len(layers), dtype=torch.float64), torch.zeros(len(layers), dtype=torch.float64), 0
    per_prompt_kl = torch.zeros(len(layers), n, dtype=torch.float64)
    ans_prob = torch.zeros(len(layers), n, dtype=torch.float64)
    ans_rank = torch.zeros(len(layers), n, dtype=torch.float64)
    tops: list[dict] = []
    tok = adapter.tokenizer
    with torch.no_grad():
        for rows in chunks(n, ctx.max_rows):
            ids, mask = trimmed(prompts.ids, prompts.attention_mask, rows)
            out = adapter.forward(ids, mask, capture=sites)
            where = read_mask(prompts, rows, ids.shape[1], positions)  # [B, S]
            final = torch.log_softmax(out.logits.double(), -1)  # [B, S, V]
            apos = prompts.read_pos[rows]
            b = torch.arange(len(rows))
            for i, s in enumerate(sites):
                lp = lens_logits(adapter, out.acts[s])  # [B, S, V]
                kl = (final.exp() * (final - lp)).sum(-1)  # [B, S]
                agree = (lp.argmax(-1) == final.argmax(-1)).double()
                w = where.double()
                kl_sum[i] += (kl * w).sum()
                agree_sum[i] += (agree * w).sum()
                per_prompt_kl[i, rows] = (kl * w).sum(1) / w.sum(1)
                at = lp[b, apos]  # [B, V] at each prompt's read position
                if prompts.answer is not None:
                    a = prompts.answer[rows]
                    ans_prob[i, rows] = at[b, a].exp()
                    ans_rank[i, rows] = (at > at[b, a][:, None]).sum(-1).double()
                for j in range(len(rows)):
                    if int(rows[j]) < show:
                        p, t = at[j].exp().topk(k)
                        tops += [{"layer": layers[i], "prompt": int(rows[j]), "rank": r, "token": tok.decode([int(x)]),
                                  "prob": float(pp)} for r, (pp, x) in enumerate(zip(p.tolist(), t.tolist()))]
            count += int(where.sum())
    table: dict[str, Any] = {"layer": layers, "kl": (kl_sum / count).tolist(), "top1_agree": (agree_sum / count).tolist()}
    tensors = {"kl": (kl_sum / count).float(), "per_prompt_kl": per_prompt_kl.float()}
    if prompts.answer is not None:
        table["answer_prob"] = ans_prob.mean(1).tolist()
        table["answer_rank"] = ans_rank.median(1).values.tolist()
        tensors.update(answer_prob=ans_prob.float(), answer_rank=ans_rank.float())
    value = "answer_prob" if prompts.answer is not None else "kl"
    return Artifact(
        tensors=tensors,
        tables={"result": pl.DataFrame(table), "top": pl.DataFrame(tops, schema={
            "layer": pl.Int64, "prompt": pl.Int64, "rank": pl.Int64, "token": pl.Utf8, "prob": pl.Float64})},
        data={"method": "logit lens", "site": kind, "positions": positions, "layers": layers,
              "convention": "KL(model || lens) in nats of the next-token distribution; answer_rank 0 = most likely",
              "chart": {"x": "layer", "y": value}},
    )
