"""`explain dash over held`: auto-interpretability of a dictionary's features. Each feature of a
dashboard (`dashboard sae s over text`) is explained from its top examples, then the explanation is
scored by simulation on other text: predict the feature's activation on every token of `held` from
the explanation alone, and correlate with the true activations (stdlib/dictionary/autointerp.py).

    dash = dashboard sae s over train tokens=16384
    e    = explain dash over held tokens=8192 limit=128
    plot e as feature_table        # explanations and scores, searchable

`explainer` is `tokens` (offline: the activating tokens and the tokens before them, weighted by
activation) or any callable `module:function` (examples -> text), e.g. a local language model. The
features explained are the dashboard's alive ones, most frequent first (`limit` of them; dense
features, firing on more than a tenth of the tokens, come last). Scores are Pearson correlations over
every real token of `held`'s first `tokens` tokens (nan where the feature never fires there or the
simulation is constant). As a null baseline, each feature's activations are also correlated with the
simulation of another feature's (different) explanation ("baseline": what a wrong explanation scores).

Table "result": the dashboard's row per explained feature with `explanation`, `score`, `baseline`.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import polars as pl
import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib.dictionary import autointerp as ai
from mechstudy.stdlib.dictionary import features as fx
from mechstudy.stdlib.dictionary.evaluate import DENSE
from mechstudy.stdlib.ops.top_examples import unit_batches
from mechstudy.stdlib.dictionary.use import corpus_for, first_tokens, last, open_dictionary


def validate(params: Mapping[str, Any]) -> None:
    e = params["explainer"]
    if e != "tokens" and (":" not in e or not all(e.partition(":")[::2])):
        err = ValueError(f"explainer is `tokens` or a callable as `module:function`, got {e!r}")
        err.option = "explainer"  # type: ignore[attr-defined]
        raise err


def plan(params: dict, b: Any) -> Any:
    d = last(params["dashboard"])
    got = dict(d.inputs)
    if d.op != "dashboard" or "model" not in got:
        return b.node("explain", {**params, "dashboard": d})  # refused at run time
    return b.node("explain", {**params, "dashboard": d, "dictionary": got["dictionary"], "model": got["model"],
                              "corpus": corpus_for(b, params["corpus"], got["model"])})


def order(result: pl.DataFrame) -> list[int]:
    """Alive features, most frequent first, dense ones last.

    >>> order(pl.DataFrame({"feature": [0, 1, 2, 3], "density": [0.0, 0.5, 0.02, 0.05]}))
    [3, 2, 1]
    """
    alive = result.filter(pl.col("density") > 0).with_columns((pl.col("density") > DENSE).alias("_dense"))
    return alive.sort(["_dense", "density", "feature"], descending=[False, True, False])["feature"].to_list()


def tables_of(explanations: list[str], decode_vocab: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """[V, U] predicted activation where the token is t (`on`) and on the token after t (`after`)."""
    by_text: dict[str, list[int]] = {}
    for i, t in enumerate(decode_vocab):
        by_text.setdefault(t, []).append(i)
    V, U = len(decode_vocab), len(explanations)
    on, after = torch.zeros(V, U, dtype=torch.float64), torch.zeros(V, U, dtype=torch.float64)
    for u, text in enumerate(explanations):
        a, b = ai.parse(text)
        for table, got in ((on, a), (after, b)):
            for t, w in got.items():
                for i in by_text.get(t, ()):
                    table[i, u] = max(float(table[i, u]), w)
    return on, after


def partners(texts: list[str]) -> list[int]:
    """For the baseline: per feature, the first one half-way round the list onward whose explanation
    differs (itself when all are the same, which then scores as the explanation does).

    >>> partners(["a", "a", "b", "c"])
    [2, 3, 0, 1]
    """
    n = len(texts)
    out = []
    for u in range(n):
        out.append(next((j % n for j in range(u + n // 2, u + n // 2 + n) if texts[j % n] != texts[u]), u))
    return out


class Corr:
    """Running sums for Pearson correlations per unit."""

    def __init__(self, U: int) -> None:
        self.n = 0
        self.s = {k: torch.zeros(U, dtype=torch.float64) for k in ("x", "y", "xx", "yy", "xy")}

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:  # [N, U] each
        self.n += x.shape[0]
        for k, v in (("x", x), ("y", y), ("xx", x * x), ("yy", y * y), ("xy", x * y)):
            self.s[k] += v.sum(0)

    def value(self) -> list[float]:
        n, s = self.n, self.s
        cov = s["xy"] - s["x"] * s["y"] / n
        vx, vy = s["xx"] - s["x"] ** 2 / n, s["yy"] - s["y"] ** 2 / n
        out = []
        for c, a, b in zip(cov.tolist(), vx.tolist(), vy.tolist()):
            out.append(c / math.sqrt(a * b) if a > 1e-12 and b > 1e-12 else float("nan"))
        return out


@spec.operator(
    "explain",
    version=1,
    verb="explain",
    params=[
        Param("dashboard", spec.RESULT, doc="a `dashboard ...` result (its top examples are explained)"),
        Param("corpus", spec.CORPUS, doc="other text the explanations are scored on (`over CORPUS`)"),
        Param("tokens", int, 8192, minimum=2, ceiling=10_000_000, doc="tokens scored (the corpus's first rows)"),
        Param("limit", int, 128, minimum=1, ceiling=100_000, doc="features explained (alive ones, most frequent first)"),
        Param("explainer", str, "tokens", doc="`tokens` (offline default) or a callable `module:function`"),
        Param("terms", int, 4, minimum=1, ceiling=100, doc="the default explainer's tokens listed at most (each kind)"),
        Param("cover", float, 0.8, above=0, maximum=1, doc="... until they cover this share of the top examples' activation"),
    ],
    plan=plan,
    validate=validate,
    uses_model=True,
    output="table",
    default_chart="feature_table",
    example='corpus web = text "README.md" tokens=2048 context=32\n'
            "s = train sae in layer 1 of m over web width=256 k=8 batch=256 steps=20 checkpoint=10\n"
            "dash = dashboard sae s over web tokens=1024 top 5\n"
            "e = explain dash over web tokens=512 limit=16",
)
def run(inputs: Mapping[str, Artifact], params: dict, ctx: Any) -> Artifact:
    """Explanations of dictionary features from their top examples, scored by simulation on other text."""
    if "model" not in inputs or "dictionary" not in inputs:
        raise ValueError("explain reads a `dashboard ...` result")
    dash = inputs["dashboard"]
    adapter, sae, sites = open_dictionary(inputs, ctx, "explain")
    res = dash.tables["result"]
    index = order(res)[: int(params["limit"])]
    if not index:
        raise ValueError("no feature of the dashboard fired: nothing to explain")
    exs = dash.tables["examples"].filter(pl.col("group") == "top")
    by_feature: dict[int, list[dict]] = {f: [] for f in index}
    for e in exs.filter(pl.col("feature").is_in(index)).sort(["feature", "rank"]).iter_rows(named=True):
        by_feature[e["feature"]].append(e)
    explain = ai.explainer(params["explainer"])
    kw = {"terms": params["terms"], "cover": params["cover"]} if params["explainer"] == "tokens" else {}
    texts = [str(explain(by_feature[f], **kw)) for f in index]
    tok = adapter.tokenizer
    vocab = [tok.decode([i]) for i in range(adapter.model.get_input_embeddings().weight.shape[0])]
    on, after = tables_of(texts, vocab)
    prompts = first_tokens(inputs["corpus"], params["tokens"])
    feats = torch.tensor(index)
    partner = torch.tensor(partners(texts))
    corr, null = Corr(len(index)), Corr(len(index))
    fired = torch.zeros(len(index), dtype=torch.long)
    for b in unit_batches(adapter, prompts, sorted(set(sites.inputs)), fx.reader(sae, sites, feats), len(index),
                          ctx.max_rows)():
        ids = b.ids.long()
        prev = torch.cat([torch.full_like(ids[:, :1], -1), ids[:, :-1]], 1)
        sim = on[ids]  # [B, S, U]
        sim_after = after[prev.clamp(min=0)]
        sim_after[prev < 0] = 0
        sim = torch.maximum(sim, sim_after)
        real = b.mask.bool()
        x, y = b.acts.double()[real], sim[real]
        corr.add(x, y)
        null.add(x, y[:, partner])
        fired += (x > 0).sum(0)
    scores, baseline = corr.value(), null.value()
    table = pl.DataFrame({"feature": index, "explanation": texts, "score": scores, "baseline": baseline,
                          "held_density": (fired.double() / max(corr.n, 1)).tolist()})
    result = table.join(res, on="feature", how="left").select(
        ["feature", "explanation", "score", "baseline", *[c for c in res.columns if c != "feature"], "held_density"])
    ok = [s for s in scores if not math.isnan(s)]
    okb = [s for s in baseline if not math.isnan(s)]
    mean = sum(ok) / len(ok) if ok else None
    best = result.filter(pl.col("score").is_not_nan()).sort("score", descending=True).head(1)
    data = {
        "features": len(index), "tokens": corr.n, "explainer": params["explainer"], "mean_score": mean,
        "mean_baseline": sum(okb) / len(okb) if okb else None,
        "convention": "score = Pearson correlation, over every real token of the held-out text, between the feature's "
                      "activation and the activation simulated from its explanation (quoted tokens; see "
                      "stdlib/dictionary/autointerp.py); baseline = the same with another feature's (different) explanation",
        "chart": {"title": "Features with their explanations and simulation scores (type to filter)"},
        "headline": [{"label": "mean simulation score", "value": mean,
                      "detail": f"{len(ok)} of {len(index)} features scored on {corr.n} held-out tokens; explainer "
                                f"{params['explainer']}"},
                     {"label": "mean baseline (another feature's explanation)", "value": data_baseline(okb)},
                     {"label": "features scoring > 0.5", "value": sum(s > 0.5 for s in ok)}],
    }
    if best.height:
        r = best.row(0, named=True)
        data["headline"].append({"label": "best explained", "value": f"F{r['feature']}",
                                 "detail": f"{r['explanation']} (score {r['score']:.2f})"})
    return Artifact(tables={"result": result}, data=data)


def data_baseline(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
