"""`score sae NAME over CORPUS`: a trained dictionary evaluated on held-out text, with the model.

    s   = train sae resid_post in layer 1 of m over train_text k=32 steps=2000
    fit = score sae s over held_text tokens=32768

Reconstruction (MSE, fraction of variance unexplained), sparsity (L0), dead and dense features
and the feature-density histogram (log10 of each feature's firing frequency) on the corpus's
first `tokens` tokens, and the model's next-token loss clean, with the dictionary spliced in and
with the site zero-ablated: the fraction of loss recovered and the KL of the spliced model
(stdlib/dictionary/evaluate.py states the conventions). Score it on text the dictionary did not
train on: a different corpus (the check does not know which text a corpus holds; a test checks the
study's corpora are disjoint).

The table "result" has one row per metric; "density" one row per feature (density, log10).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import polars as pl

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib.dictionary.evaluate import DENSE, splice_eval
from mechstudy.stdlib.dictionary.use import first_tokens, open_dictionary, plan_reading

METRICS = ("fvu", "mse", "l0", "dead_fraction", "dense_fraction", "ce_clean", "ce_spliced", "ce_zero",
           "ce_recovered", "kl")


@spec.operator(
    "score_dictionary",
    version=1,
    verb="score",
    components=("sae", "transcoder", "crosscoder"),
    params=[
        Param("dictionary", spec.RESULT, doc="a `train sae|transcoder|crosscoder` result"),
        Param("corpus", spec.CORPUS, doc="held-out text (`over CORPUS`)"),
        Param("tokens", int, 32_768, minimum=2, ceiling=10_000_000, doc="tokens evaluated (the corpus's first rows)"),
    ],
    plan=plan_reading("score_dictionary", with_model=True),
    uses_model=True,
    output="table",
    default_chart="density",
    example="corpus web = text \"README.md\" tokens=512 context=32\n"
            "sae = train sae in layer 1 of m over web width=256 k=8 batch=256 steps=20 checkpoint=10\n"
            "fit = score sae sae over web tokens=256",
)
def run(inputs: Mapping[str, Artifact], params: dict, ctx: Any) -> Artifact:
    """Held-out reconstruction, sparsity, density and spliced-in loss of a trained dictionary."""
    art = inputs["dictionary"]
    adapter, sae, sites = open_dictionary(inputs, ctx, "score", one_model=True)
    prompts = first_tokens(inputs["corpus"], params["tokens"])
    got = splice_eval(adapter, sae, sites, prompts.ids, prompts.attention_mask, ctx.max_rows,
                      getattr(ctx, "progress", None))
    density = got.pop("density")
    table = pl.DataFrame({"metric": list(METRICS), "value": [float(got[k]) for k in METRICS]})
    dens = pl.DataFrame({"feature": list(range(density.numel())), "density": density.tolist(),
                         "log10_density": [math.log10(v) if v > 0 else None for v in density.tolist()]})
    data = {
        **{k: got[k] for k in METRICS}, "tokens": got["tokens"], "site": art.data["site"], "kind": art.data["kind"],
        "chart": {"x": "metric", "y": "value"},
        "convention": "fvu = sum||y^-y||^2 / sum||y-mean y||^2; ce_* = mean next-token cross-entropy (nats) clean, "
                      "with the dictionary spliced in, with the site zeroed; ce_recovered = (zero - spliced) / "
                      f"(zero - clean); kl = KL(clean || spliced) in nats; dense = density > {DENSE}",
        "headline": [{"label": "fraction of CE loss recovered", "value": got["ce_recovered"],
                      "detail": f"CE clean {got['ce_clean']:.3f}, spliced {got['ce_spliced']:.3f}, zero {got['ce_zero']:.3f}"},
                     {"label": "FVU", "value": got["fvu"]}, {"label": "L0", "value": got["l0"]},
                     {"label": "dead fraction", "value": got["dead_fraction"],
                      "detail": f"on {got['tokens']} held-out tokens"},
                     {"label": "KL of the spliced model (nats)", "value": got["kl"]}],
    }
    return Artifact(tensors={"density": density.float()}, tables={"result": table, "density": dens}, data=data)
