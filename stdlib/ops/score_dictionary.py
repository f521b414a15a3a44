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
import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib.datasets import Prompts
from mechstudy.stdlib.dictionary.evaluate import DENSE, Sites, splice_eval
from mechstudy.stdlib.models.sites import Site
from mechstudy.stdlib.ops.train_dictionary import load

METRICS = ("fvu", "mse", "l0", "dead_fraction", "dense_fraction", "ce_clean", "ce_spliced", "ce_zero",
           "ce_recovered", "kl")


def model_of(dictionary: Any) -> Any:
    """The model node a dictionary's checkpoint chain was trained on (None for one trained on a dataset)."""
    return dict(dictionary.inputs).get("model")


def corpus_for(b: Any, corpus: Any, model: Any) -> Any:
    """The corpus node tokenised by `model` (the dictionary's model, whatever the statement inferred)."""
    if corpus is None or model is None:
        return corpus
    return b.node("dataset", {k: v for k, v in corpus.params}, {"model": model})


def plan(params: dict, b: Any) -> Any:
    d = params["dictionary"]
    if isinstance(d, list):
        d = d[-1]
    model = model_of(d)
    return b.node("score_dictionary", {**params, "dictionary": d, "model": model,
                                       "corpus": corpus_for(b, params["corpus"], model)})


def validate(params: Mapping[str, Any]) -> None:
    if params["tokens"] < 2:
        e = ValueError(f"tokens must be at least 2, got {params['tokens']}")
        e.option = "tokens"  # type: ignore[attr-defined]
        raise e


def sites_of(data: Mapping[str, Any]) -> Sites:
    """A dictionary's read and write sites, from its training artifact's data."""
    names = [Site.parse(n) for n in data["site"]]
    if data["kind"] == "transcoder":
        return Sites([names[0]], [names[1]])
    return Sites(names, names)


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
    plan=plan,
    validate=validate,
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
    if "model" not in inputs:
        raise ValueError("score needs a dictionary trained on a model's activations (`of MODEL over CORPUS`)")
    if art.data.get("models", 1) > 1:
        raise ValueError("score reads one model; this crosscoder reads two (score its training history, or train "
                         "one per model)")
    adapter = ctx.model(inputs["model"])
    sae = load(art)
    prompts = Prompts.of(inputs["corpus"])
    ctxlen = prompts.ids.shape[1]
    rows = max(1, min(prompts.n, math.ceil(int(params["tokens"]) / ctxlen)))
    got = splice_eval(adapter, sae, sites_of(art.data), prompts.ids[:rows], prompts.attention_mask[:rows],
                      ctx.max_rows, getattr(ctx, "progress", None))
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
