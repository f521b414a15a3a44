"""`lens resid_post in all layers of m on facts`: the logit lens (nostalgebraist, 2020), and with
`over CORPUS` the tuned lens (Belrose et al., 2023).

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

The tuned lens (`lens resid_post in all layers of m on held over web`): before decoding, each
layer's stream goes through an affine translator trained on the corpus `web` to match the model's
final distribution (KL objective; `stdlib/ops/tuned_lens.py`, one cached node per model, corpus,
site and `steps`/`lr`/`batch`/`seed`). The dataset read (`on held`) should be text the translators
were not trained on. The result then holds both lenses on the same tokens: a row per layer and
lens ("logit", "tuned"), so the chart compares their KL layer by layer.

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


def translate(states: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A tuned lens's translator applied to states [..., d]: states @ W + b."""
    return states @ W.to(states.dtype) + b.to(states.dtype)


def _plan(params: dict, b: Any) -> Any:
    """The logit lens is one node; `over CORPUS` adds the translators' training node as an input."""
    corpus = params.get("corpus")
    keyed = {k: v for k, v in params.items() if k != "corpus"}
    if corpus is None:
        return b.node("lens", keyed)
    kind = component(params["component"]).kind.name
    t = b.node("tuned_lens", {"model": params["model"], "corpus": corpus, "kind": kind,
                              **{k: params[k] for k in ("steps", "lr", "batch", "seed")}})
    return b.node("lens", {**keyed, "translators": t})


def read_mask(prompts: Prompts, rows: torch.Tensor, width: int, positions: str) -> torch.Tensor:
    """[B, S] bool: where a chunk's prompts are read (their read position, or every real one)."""
    ar = torch.arange(width)[None]
    if positions == "all":
        return prompts.attention_mask[rows, :width].bool()
    return ar == prompts.read_pos[rows][:, None]


@spec.operator(
    "lens",
    version=2,
    verb="lens",
    components=COMPONENTS,
    params=[
        Param("component", str, "resid_post", choices=COMPONENTS, doc="the residual-stream state decoded"),
        Param("layers", spec.LAYERS, "all", doc="layers to decode"),
        Param("positions", spec.POSITIONS, "last", doc="last (each prompt's answer position) or all"),
        Param("model", spec.MODEL),
        Param("dataset", spec.DATASET),
        Param("method", str, "logit", choices=("logit",), doc="logit: the model's own final norm and unembedding"),
        Param("corpus", spec.CORPUS, None, doc="`over CORPUS`: also a tuned lens, its translators trained on it"),
        Param("steps", int, 300, minimum=1, ceiling=1_000_000, doc="tuned lens: Adam steps"),
        Param("lr", float, 1e-3, above=0.0, doc="tuned lens: learning rate"),
        Param("batch", int, 256, minimum=1, ceiling=1_000_000, doc="tuned lens: corpus tokens per step"),
        Param("seed", int, 0, minimum=0, doc="tuned lens: minibatch draws"),
        Param("top", int, 5, minimum=1, ceiling=1_000, doc="tokens listed per layer in the `top` table"),
        Param("show", int, 4, minimum=1, ceiling=10_000, doc="prompts listed in the `top` table"),
    ],
    output="table",
    uses_model=True,
    default_chart="line",
    model_features=frozenset({"lm_head", "residual_stream"}),
    plan=_plan,
    example="lens resid_post in all layers of m on ioi",
)
def run(inputs: dict[str, Artifact], params: dict, ctx: Any) -> Artifact:
    """The logit lens (and with `over CORPUS` the tuned lens): each layer's residual stream decoded."""
    adapter = ctx.model(inputs["model"])
    prompts = Prompts.of(inputs["dataset"])
    kind = component(params["component"]).kind.name
    layers = list(range(adapter.n_layers)) if params["layers"] in (None, "all") else [int(l) for l in params["layers"]]
    positions = "all" if params["positions"] == "each" else params["positions"]
    if positions not in ("last", "all"):
        raise ValueError(f"the logit lens reads `at last position` or `at all positions`, not {positions!r}")
    tr = inputs.get("translators")
    lenses = ["logit"] + (["tuned"] if tr is not None else [])
    k, show = int(params["top"]), min(int(params["show"]), prompts.n)
    sites = [Site(l, kind) for l in layers]
    n, nl = prompts.n, len(layers)
    stats = {name: {"kl": torch.zeros(nl, dtype=torch.float64), "agree": torch.zeros(nl, dtype=torch.float64),
                    "per_prompt_kl": torch.zeros(nl, n, dtype=torch.float64),
                    "prob": torch.zeros(nl, n, dtype=torch.float64), "rank": torch.zeros(nl, n, dtype=torch.float64)}
             for name in lenses}
    count = 0
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
            w = where.double()
            for i, s in enumerate(sites):
                for name in lenses:
                    h = out.acts[s]
                    if name == "tuned":
                        h = translate(h, torch.as_tensor(tr.tensors["W"])[layers[i]], torch.as_tensor(tr.tensors["b"])[layers[i]])
                    lp = lens_logits(adapter, h)  # [B, S, V]
                    st = stats[name]
                    kl = (final.exp() * (final - lp)).sum(-1)  # [B, S]
                    st["kl"][i] += (kl * w).sum()
                    st["agree"][i] += ((lp.argmax(-1) == final.argmax(-1)).double() * w).sum()
                    st["per_prompt_kl"][i, rows] = (kl * w).sum(1) / w.sum(1)
                    at = lp[b, apos]  # [B, V] at each prompt's read position
                    if prompts.answer is not None:
                        a = prompts.answer[rows]
                        st["prob"][i, rows] = at[b, a].exp()
                        st["rank"][i, rows] = (at > at[b, a][:, None]).sum(-1).double()
                    for j in range(len(rows)):
                        if int(rows[j]) < show:
                            p, t = at[j].exp().topk(k)
                            tops += [{"lens": name, "layer": layers[i], "prompt": int(rows[j]), "rank": r,
                                      "token": tok.decode([int(x)]), "prob": float(pp)}
                                     for r, (pp, x) in enumerate(zip(p.tolist(), t.tolist()))]
            count += int(where.sum())
    table: dict[str, list] = {"layer": [], "lens": [], "kl": [], "top1_agree": []}
    if prompts.answer is not None:
        table.update(answer_prob=[], answer_rank=[])
    tensors: dict[str, torch.Tensor] = {}
    for name in lenses:
        st = stats[name]
        table["layer"] += layers
        table["lens"] += [name] * nl
        table["kl"] += (st["kl"] / count).tolist()
        table["top1_agree"] += (st["agree"] / count).tolist()
        pre = "" if name == "logit" else "tuned_"
        tensors.update({pre + "kl": (st["kl"] / count).float(), pre + "per_prompt_kl": st["per_prompt_kl"].float()})
        if prompts.answer is not None:
            table["answer_prob"] += st["prob"].mean(1).tolist()
            table["answer_rank"] += st["rank"].median(1).values.tolist()
            tensors.update({pre + "answer_prob": st["prob"].float(), pre + "answer_rank": st["rank"].float()})
    value = "answer_prob" if prompts.answer is not None and tr is None else "kl"
    data: dict[str, Any] = {
        "method": "logit lens" + (" and tuned lens" if tr is not None else ""), "site": kind, "positions": positions,
        "layers": layers, "lenses": lenses, "tokens": count,
        "convention": "KL(model || lens) in nats of the next-token distribution; answer_rank 0 = most likely",
        "chart": {"x": "layer", "y": value, **({"color": "lens"} if tr is not None else {})}}
    if tr is not None:
        lk, tk = stats["logit"]["kl"] / count, stats["tuned"]["kl"] / count
        below = [layers[i] for i in range(nl) if tk[i] < lk[i]]
        data["headline"] = [
            {"label": "tuned-lens KL below the logit lens's", "value": f"{len(below)} of {nl} layers",
             "detail": "layers " + ", ".join(map(str, below)) if below else "none"},
            {"label": "mean KL, logit -> tuned", "value": f"{float(lk.mean()):.3g} -> {float(tk.mean()):.3g}",
             "detail": f"nats over {count} tokens, {nl} layers"}]
        data["translator_training"] = {"kl_before": tr.data.get("kl_before"), "kl_after": tr.data.get("kl_after"),
                                       "tokens": tr.data.get("tokens")}
    return Artifact(
        tensors=tensors,
        tables={"result": pl.DataFrame(table), "top": pl.DataFrame(tops, schema={
            "lens": pl.Utf8, "layer": pl.Int64, "prompt": pl.Int64, "rank": pl.Int64, "token": pl.Utf8,
            "prob": pl.Float64})},
        data=data,
    )
