"""`match features a b over held`: feature splitting and universality. Two dictionaries' features
matched by their decoder directions (same model and site: cosine) and by their activations on the
same text (Pearson correlation over every real token; works across seeds, widths and models that
share a tokenizer).

    small = train sae in layer 1 of m over train width=256 k=16
    big   = train sae in layer 1 of m over train width=1024 k=16
    split = match features small big over held        # which small features split into which big ones
    again = train sae in layer 1 of m over train width=256 k=16 seed=1
    univ  = match features small again over held      # the same features from another seed?

Per feature of `a`: its best match in `b` by decoder cosine and by activation correlation (and the
values); per feature of `b` the same in `a`. Splitting (Bricken et al. 2023): each feature j of `b`
is the child of its closest feature of `a` by decoder cosine when that cosine is at least
`threshold`; a feature of `a` with two or more children has split. Features that never fire on the
text have no correlation (nan) and are left out of the correlation means.

Tables: "result" (metric, value: the means and counts), "a" (one row per feature of a:
best_b_cosine, cosine, best_b_corr, corr, children, child_cosines), "b" (one row per feature of b:
its best match in a).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import polars as pl
import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib.datasets import Prompts
from mechstudy.stdlib.dictionary import features as fx
from mechstudy.stdlib.models.batching import chunks, trimmed
from mechstudy.stdlib.dictionary.use import corpus_for, first_tokens, last, load, model_of, sites_of


def plan(params: dict, b: Any) -> Any:
    a, bb = last(params["a"]), last(params["b"])
    ma, mb = model_of(a), model_of(bb)
    extra: dict[str, Any] = {"a": a, "b": bb}
    if ma is not None and mb is not None:
        extra.update(model_a=ma, model_b=mb, corpus_a=corpus_for(b, params["corpus"], ma),
                     corpus_b=corpus_for(b, params["corpus"], mb))
    return b.node("match_features", {**{k: v for k, v in params.items() if k != "corpus"}, **extra})


def best(m: torch.Tensor) -> tuple[list[int], list[float]]:
    """Per row of m, the column of its largest (non-nan) value and that value (-1, nan if none)."""
    filled = torch.nan_to_num(m, nan=-math.inf)
    v, i = filled.max(1)
    ok = v > -math.inf
    return [int(j) if o else -1 for j, o in zip(i.tolist(), ok.tolist())], \
        [float(x) if o else float("nan") for x, o in zip(v.tolist(), ok.tolist())]


def correlations(fa: list[torch.Tensor], fb: list[torch.Tensor]) -> torch.Tensor:
    """[Fa, Fb] Pearson correlations between feature activations given as matching [N_i, F] chunks
    (float64 running sums; nan where a feature is constant, e.g. never fires)."""
    Fa, Fb = fa[0].shape[1], fb[0].shape[1]
    n, sa, sb, saa, sbb = 0, torch.zeros(Fa, dtype=torch.float64), torch.zeros(Fb, dtype=torch.float64), \
        torch.zeros(Fa, dtype=torch.float64), torch.zeros(Fb, dtype=torch.float64)
    sab = torch.zeros(Fa, Fb, dtype=torch.float64)
    for x, y in zip(fa, fb):
        x, y = x.double(), y.double()
        n += x.shape[0]
        sa += x.sum(0)
        sb += y.sum(0)
        saa += (x * x).sum(0)
        sbb += (y * y).sum(0)
        sab += x.T @ y
    cov = sab - sa[:, None] * sb[None] / n
    va, vb = saa - sa * sa / n, sbb - sb * sb / n
    den = (va.clamp(min=0)[:, None] * vb.clamp(min=0)[None]).sqrt()
    ok = (va[:, None] > 1e-12) & (vb[None] > 1e-12)
    return torch.where(ok, cov / den.clamp(min=1e-300), torch.full_like(cov, float("nan")))


def _acts(adapter: Any, sae: Any, sites: Any, prompts: Prompts, max_rows: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    feats = torch.arange(sae.shape.width)
    read = fx.reader(sae, sites, feats)
    out = []
    with torch.no_grad():
        for rows in chunks(prompts.n, max_rows):
            ids, mask = trimmed(prompts.ids, prompts.attention_mask, rows)
            f = read(adapter.capture(ids, mask, sorted(set(sites.inputs))))
            out.append(f[mask.bool()])
    return out, prompts.ids


@spec.operator(
    "match_features",
    version=1,
    verb="match",
    components=("features",),
    params=[
        Param("component", str, "features", choices=("features",), doc="features of two dictionaries"),
        Param("a", spec.RESULT, doc="the first dictionary (the smaller one, for splitting)"),
        Param("b", spec.RESULT, doc="the second dictionary"),
        Param("corpus", spec.CORPUS, None, doc="text both read, for activation correlations (`over CORPUS`)"),
        Param("tokens", int, 8192, minimum=2, ceiling=10_000_000, doc="tokens read (the corpus's first rows)"),
        Param("threshold", float, 0.7, minimum=-1, maximum=1, doc="decoder cosine for a feature of b to count as a child of one of a"),
    ],
    plan=plan,
    uses_model=True,
    output="table",
    default_chart="bar",
    example='corpus web = text "README.md" tokens=1024 context=32\n'
            "a = train sae in layer 1 of m over web width=64 k=4 batch=256 steps=20 checkpoint=10\n"
            "b = train sae in layer 1 of m over web width=128 k=4 batch=256 steps=20 checkpoint=10\n"
            "match features a b over web tokens=512",
)
def run(inputs: Mapping[str, Artifact], params: dict, ctx: Any) -> Artifact:
    """Matching two dictionaries' features by decoder cosine and activation correlation; splitting."""
    art_a, art_b = inputs["a"], inputs["b"]
    A, B = load(art_a), load(art_b)
    same_space = (art_a.data.get("site") == art_b.data.get("site") and A.shape.d_out == B.shape.d_out
                  and inputs.get("model_a") is not None
                  and inputs["model_a"].data.get("fingerprint") == inputs["model_b"].data.get("fingerprint"))
    if not same_space and "model_a" not in inputs:
        same_space = A.shape.d_out == B.shape.d_out  # two dictionaries of one dataset's activations
    rows_a = {"feature": list(range(A.shape.width))}
    rows_b = {"feature": list(range(B.shape.width))}
    summary: list[tuple[str, float]] = []
    if same_space:
        cos = (A.directions().detach().double() @ B.directions().detach().double().T)  # [Fa, Fb]
        ia, va = best(cos)
        ib, vb = best(cos.T)
        rows_a.update(best_b_cosine=ia, cosine=va)
        rows_b.update(best_a_cosine=ib, cosine=vb)
        summary += [("mean max cosine a->b", sum(va) / len(va)), ("mean max cosine b->a", sum(vb) / len(vb))]
        thr = float(params["threshold"])
        kids: dict[int, list[tuple[int, float]]] = {i: [] for i in range(A.shape.width)}
        for j, (i, v) in enumerate(zip(ib, vb)):
            if v >= thr:
                kids[i].append((j, v))
        rows_a.update(children=[[j for j, _ in sorted(kids[i], key=lambda t: -t[1])] for i in range(A.shape.width)],
                      child_cosines=[[v for _, v in sorted(kids[i], key=lambda t: -t[1])] for i in range(A.shape.width)])
        split = sum(len(k) >= 2 for k in kids.values())
        summary += [("features of a that split (>= 2 children)", float(split)),
                    ("features of b with a parent", float(sum(len(k) for k in kids.values())))]
    if "corpus_a" in inputs:
        pa, pb = first_tokens(inputs["corpus_a"], params["tokens"]), first_tokens(inputs["corpus_b"], params["tokens"])
        if pa.ids.shape != pb.ids.shape or not torch.equal(pa.ids, pb.ids):
            raise ValueError("the two dictionaries' models tokenise the text differently: activation correlations "
                             "need the same tokens")
        fa, _ = _acts(ctx.model(inputs["model_a"]), A, sites_of(art_a.data), pa, ctx.max_rows)
        fb, _ = _acts(ctx.model(inputs["model_b"]), B, sites_of(art_b.data), pb, ctx.max_rows)
        corr = correlations(fa, fb)
        ia, va = best(corr)
        ib, vb = best(corr.T)
        rows_a.update(best_b_corr=ia, corr=va)
        rows_b.update(best_a_corr=ib, corr=vb)
        ok_a = [v for v in va if not math.isnan(v)]
        ok_b = [v for v in vb if not math.isnan(v)]
        summary += [("mean max correlation a->b (alive)", sum(ok_a) / max(len(ok_a), 1)),
                    ("mean max correlation b->a (alive)", sum(ok_b) / max(len(ok_b), 1)),
                    ("features of a matched (corr > 0.7)", float(sum(v > 0.7 for v in ok_a))),
                    ("alive features of a", float(len(ok_a))), ("tokens", float(sum(x.shape[0] for x in fa)))]
    if not summary:
        raise ValueError("nothing to compare: the dictionaries read different spaces and no text was given (`over CORPUS`)")
    table = pl.DataFrame({"metric": [k for k, _ in summary], "value": [v for _, v in summary]})
    head = dict(summary)
    headline = [{"label": k, "value": v} for k, v in summary[:4]]
    return Artifact(
        tables={"result": table, "a": pl.DataFrame(rows_a), "b": pl.DataFrame(rows_b)},
        data={"summary": head, "width_a": A.shape.width, "width_b": B.shape.width, "same_space": same_space,
              "convention": "cosine between unit decoder directions; corr = Pearson correlation of activations over "
                            "every real token of the text; a child of a's feature i: a feature of b whose closest "
                            f"feature of a is i, with cosine >= {params['threshold']}",
              "chart": {"x": "metric", "y": "value", "title": "Matching two dictionaries"},
              "headline": headline},
    )
