"""`dashboard sae s over held`: feature dashboards in the spirit of Neuronpedia, for every feature of a
trained (or loaded) dictionary, over held-out text.

    s    = train sae resid_post in layer 1 of m over train width=1024 k=16
    dash = dashboard sae s over held tokens=16384 top 10
    plot dash as features         # per feature: top examples, intervals, histogram, logit weights
    plot dash as feature_map      # decoder directions in 2-D, coloured by density
    plot dash as feature_table    # every feature, searchable by token

Per feature, on the corpus's first `tokens` tokens (read by the dictionary's own model): its `top`
activating tokens, each with `before` tokens before and `after` after it and the feature's
activation on each (token highlighting); `per_band` samples from each of `bands` equal intervals of
(0, max] (quantile-style samples: what the feature does at a fifth, two fifths ... of its maximum); a
histogram of its non-zero activations; its density; the tokens its decoder direction promotes and
suppresses most through the unembedding (top +/- logit weights); its place on a 2-D map of decoder
directions. The examples come from the shared machinery (stdlib/representations/examples.py);
conventions: stdlib/dictionary/features.py.

Tables: "result" (one row per feature: density, max, mean, its most common top tokens, top-token
purity, logit weights as text, map coordinates), "examples", "histogram", "logits" (feature, sign,
rank, token, weight). `features` restricts the dashboards to some features (`features 0..63`).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Mapping

import polars as pl
import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib.dictionary import features as fx
from mechstudy.stdlib.dictionary.evaluate import DENSE
from mechstudy.stdlib.ops.top_examples import example_params, settings_of, unit_batches
from mechstudy.stdlib.dictionary.use import feature_list, first_tokens, open_dictionary, plan_reading
from mechstudy.stdlib.representations import examples as ex

KINDS = ("sae", "transcoder", "crosscoder")


def summarise(found: ex.Examples, tables: dict[str, pl.DataFrame], index: list[int], logit_rows: list[dict],
              xy: torch.Tensor) -> pl.DataFrame:
    """One row per feature (see the module docstring)."""
    top = tables["examples"].filter(pl.col("group") == "top")
    tokens = {f: [] for f in index}
    for f, t in top.select("feature", "token").iter_rows():
        tokens[f].append(t)
    logit_text: dict[tuple[int, str], list[str]] = {}
    for r in logit_rows:
        logit_text.setdefault((r["feature"], r["sign"]), []).append(repr(r["token"]))
    density = found.density.tolist()
    rows = []
    for u, f in enumerate(index):
        common = ", ".join(f"{t!r} x{n}" for t, n in Counter(tokens[f]).most_common(3))
        rows.append({"feature": f, "density": density[u],
                     "log10_density": math.log10(density[u]) if density[u] > 0 else None,
                     "max": float(found.max[u]), "mean": float(found.mean[u]), "top_tokens": common,
                     "purity": fx.purity(tokens[f]), "promotes": ", ".join(logit_text.get((f, "+"), [])[:5]),
                     "suppresses": ", ".join(logit_text.get((f, "-"), [])[:5]),
                     "x": float(xy[u, 0]), "y": float(xy[u, 1])})
    return pl.DataFrame(rows, schema={"feature": pl.Int64, "density": pl.Float64, "log10_density": pl.Float64,
                                      "max": pl.Float64, "mean": pl.Float64, "top_tokens": pl.Utf8,
                                      "purity": pl.Float64, "promotes": pl.Utf8, "suppresses": pl.Utf8,
                                      "x": pl.Float64, "y": pl.Float64})


@spec.operator(
    "dashboard",
    version=1,
    verb="dashboard",
    components=KINDS,
    params=[
        Param("component", str, "sae", choices=KINDS, doc="the dictionary's kind"),
        Param("dictionary", spec.RESULT, doc="a `train sae|transcoder|crosscoder` or `load sae` result"),
        Param("corpus", spec.CORPUS, doc="held-out text the features are read over (`over CORPUS`)"),
        Param("features", list, None, minimum=0, nonempty=True, doc="which features (default: all)"),
        Param("tokens", int, 16_384, minimum=1, ceiling=10_000_000, doc="tokens read (the corpus's first rows)"),
        *example_params(top=10, after=3, per_band=2, bins=24, bins_doc="histogram bins over the non-zero activations"),
        Param("logits", int, 8, minimum=1, ceiling=1_000, doc="tokens promoted and suppressed most by each decoder direction"),
    ],
    plan=plan_reading("dashboard", with_model=True),
    uses_model=True,
    output="table",
    default_chart="features",
    example='corpus web = text "README.md" tokens=2048 context=32\n'
            "s = train sae in layer 1 of m over web width=256 k=8 batch=256 steps=20 checkpoint=10\n"
            "dash = dashboard sae s over web tokens=1024 top 5",
)
def run(inputs: Mapping[str, Artifact], params: dict, ctx: Any) -> Artifact:
    """Feature dashboards: top examples, interval samples, histograms, logit weights, density, a map."""
    art = inputs["dictionary"]
    adapter, sae, sites = open_dictionary(inputs, ctx, "dashboard", one_model=True)
    F = sae.shape.width
    index = feature_list(params["features"], F)
    prompts = first_tokens(inputs["corpus"], params["tokens"])
    feats = torch.tensor(index)
    settings = settings_of(params, active_only=True)
    batches = unit_batches(adapter, prompts, sorted(set(sites.inputs)), fx.reader(sae, sites, feats), len(index),
                           ctx.max_rows)
    found = ex.collect(batches, len(index), settings)
    tok = adapter.tokenizer
    tables = found.tables(lambda i: tok.decode([i]), {"feature": index})
    logit_rows: list[dict] = []
    head = adapter.model.get_output_embeddings()
    writes = sites.outputs[-1]
    if head is not None and writes.kind in fx.RESIDUAL and sae.shape.d_out % adapter.d_model == 0:
        tv, ti, bv, bi = fx.logit_weights(sae, head.weight, feats, params["logits"])
        for u, f in enumerate(index):
            for sign, vals, idx in (("+", tv, ti), ("-", bv, bi)):
                for r in range(vals.shape[1]):
                    logit_rows.append({"feature": f, "sign": sign, "rank": r, "token": tok.decode([int(idx[u, r])]),
                                       "weight": float(vals[u, r])})
    logits = pl.DataFrame(logit_rows, schema={"feature": pl.Int64, "sign": pl.Utf8, "rank": pl.Int64,
                                              "token": pl.Utf8, "weight": pl.Float64})
    xy = fx.decoder_map(sae, feats)
    result = summarise(found, tables, index, logit_rows, xy)
    alive = result.filter(pl.col("density") > 0)
    dead = result.height - alive.height
    purity = alive["purity"].drop_nans().median() if alive.height else None
    data = {
        "features": len(index), "tokens": found.count, "site": art.data["site"], "kind": art.data["kind"],
        "settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__},
        "convention": "activation = the feature's activation; density = fraction of tokens with activation > 0; "
                      "intervals: equal fifths of (0, max], sampled uniformly; logit weights = W_dec[f] @ W_U "
                      "(no final norm); map = unit decoder directions on their first two principal components; "
                      "purity = share of the top examples whose token is the most common one",
        "chart": {"title": "Feature dashboards (token shade = the feature's activation on it)"},
        "headline": [{"label": "features with dashboards", "value": len(index),
                      "detail": f"over {found.count} held-out tokens; {dead} never fired"},
                     {"label": "median top-token purity (alive features)", "value": purity,
                      "detail": "share of a feature's top examples on its most common token"},
                     {"label": "dense features (density > 0.1)", "value": int((result["density"] > DENSE).sum())}],
    }
    return Artifact(tensors=found.tensors(), tables={"result": result, **{k: v for k, v in tables.items()
                                                                            if k != "stats"}, "logits": logits},
                    data=data)
