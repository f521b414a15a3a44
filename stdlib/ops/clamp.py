"""`clamp features 12 s of m on prompts value 5 generate 12`: set dictionary features to a value (or
scale them; `scale 0` ablates them) wherever the model runs, and measure what changes in a metric and
in generated text.

At every position of every forward (the prompt's and each generated token's), the dictionary reads
its site, the features `f_i` (i in the listed features) are computed, and the written site gets

    y  <-  y + sum_i (f_i' - f_i) W_dec[i]          f_i' = value, or scale * f_i

so the rest of the activation, the dictionary's reconstruction error included, is kept (Templeton et
al. 2024's clamping). An SAE reads and writes one site; a transcoder reads its input site (resid_mid)
and writes its output site (mlp_out) of the same layer. Every prompt of the dataset is read at its
answer position with and without the clamp: the metric (`with METRIC`, default logit_diff; kl is
KL(original || clamped)) and its shift. The first `show` prompts are continued for `generate` tokens,
greedily and with `seeds` sampled continuations (one seeded generator per row, as `steer`), each with
and without the clamp.

Tables: "result" (condition: original / clamped; the metric's mean and std), "per_prompt",
"generations" (prompt, decoding, both continuations), "features" (per clamped feature: its mean
activation at the answer positions before, and the value it was set to on average).
"""

from __future__ import annotations

from typing import Any, Mapping

import polars as pl
import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib import metrics
from mechstudy.stdlib.datasets import Prompts
from mechstudy.stdlib.dictionary.evaluate import Sites
from mechstudy.stdlib.dictionary.model import Dictionary
from mechstudy.stdlib.models.base import Edit
from mechstudy.stdlib.models.batching import chunks, trimmed
from mechstudy.stdlib.dictionary.use import feature_list, open_dictionary, plan_reading
from mechstudy.stdlib.representations import generation as gen

KINDS = ("sae", "transcoder")


def clamp_edits(adapter: Any, sae: Dictionary, sites: Sites, features: torch.Tensor, value: float | None,
                scale: float, ids: torch.Tensor, mask: torch.Tensor | None, rows: list[int] | None = None,
                acts: Mapping[Any, torch.Tensor] | None = None) -> tuple[list[Edit], torch.Tensor]:
    """The edits that clamp `features` on a [B, S] batch (on `rows`, default all) and the features'
    activations before [B, S, n]. The read site is captured from an unedited forward: the edit is at
    the written site, which is never upstream of the read one (same site, or mlp_out after resid_mid).
    `acts`: the read sites already captured from that unedited forward (else it is run here)."""
    with torch.no_grad():
        if acts is None:
            acts = adapter.capture(ids, mask, sites.inputs)
        x = torch.cat([acts[s].flatten(2).float().cpu() for s in sites.inputs], -1)
        f = sae.encode(x)[..., features]
        new = torch.full_like(f, float(value)) if value is not None else f * float(scale)
        delta = (new - f) @ sae.W_dec.detach()[features].float()  # [B, S, d_out]
    edits, a = [], 0
    for s in sites.outputs:
        shape = acts[s].shape if s in acts else None
        n = int(torch.tensor(shape[2:]).prod()) if shape is not None and len(shape) > 2 else delta.shape[-1]
        part = delta[..., a:a + n]
        if shape is not None:
            part = part.reshape(shape)
        edits.append(Edit(s, part.to(adapter.dtype), mode="add", rows=rows))
        a += n
    return edits, f


def validate(params: Mapping[str, Any]) -> None:
    if not params["component_index"]:
        e = ValueError("clamp needs the features: `clamp features 12 s ...` or `clamp features [3, 7] s ...`")
        e.option = "component_index"  # type: ignore[attr-defined]
        raise e
    if params["value"] is not None and params["scale"] is not None:
        e = ValueError("give `value` (set the features) or `scale` (multiply them), not both")
        e.option = "scale"  # type: ignore[attr-defined]
        raise e


@spec.operator(
    "clamp",
    version=1,
    verb="clamp",
    components=("features",),
    params=[
        Param("component", str, "features", choices=("features",), doc="features of a dictionary"),
        Param("component_index", list, None, minimum=0, nonempty=True, doc="which features (`features 12`, `features [3, 7]`)"),
        Param("dictionary", spec.RESULT, doc="a `train sae|transcoder` or `load sae` result"),
        Param("model", spec.MODEL, doc="the dictionary's model"),
        Param("dataset", spec.DATASET, doc="the prompts (`on DATASET`)"),
        Param("metric", spec.METRIC, "logit_diff", doc="measured with and without the clamp"),
        Param("value", float, None, minimum=0, sweepable=True, doc="set the features to this value"),
        Param("scale", float, None, minimum=0, sweepable=True, doc="or multiply them (default 0: ablation)"),
        Param("generate", int, 12, minimum=0, ceiling=10_000, doc="tokens generated per continuation"),
        Param("seeds", int, 2, minimum=0, ceiling=1_000, doc="sampled continuations per prompt (seeds 0..seeds-1), besides greedy"),
        Param("temperature", float, 1.0, above=0.0, doc="sampling temperature"),
        Param("top_k", int, 0, minimum=0, doc="sample among the k most likely tokens (0: all)"),
        Param("show", int, 4, minimum=0, ceiling=10_000, doc="prompts continued (the first ones of the dataset)"),
    ],
    plan=plan_reading("clamp"),
    validate=validate,
    output="table",
    uses_model=True,
    default_chart="bar",
    example='model m = zoo "mini"\ncorpus web = text "README.md" tokens=512 context=32\n'
            'dataset neg = sentiment(polarity=negative, n=4)\n'
            "s = train sae in layer 1 of m over web width=256 k=8 batch=256 steps=20 checkpoint=10\n"
            "clamp features 3 s of m on neg value 10 generate 4",
)
def run(inputs: Mapping[str, Artifact], params: dict, ctx: Any) -> Artifact:
    """Clamping (or scaling, or ablating) dictionary features: the metric and generations, with and without."""
    art = inputs["dictionary"]
    adapter, sae, sites = open_dictionary(inputs, ctx, "clamp", one_site=True)
    index = feature_list(params["component_index"], sae.shape.width)
    feats = torch.tensor(index)
    value = params["value"]
    scale = 0.0 if value is None and params["scale"] is None else params["scale"]
    how = f"set to {value:g}" if value is not None else ("ablated (scale 0)" if scale == 0 else f"scaled by {scale:g}")
    dataset = inputs["dataset"]
    prompts = Prompts.of(dataset)
    n = prompts.n
    plain, clamped, before = [], [], []
    with torch.no_grad():
        for rows in chunks(n, ctx.max_rows):
            ids, mask = trimmed(prompts.ids, prompts.attention_mask, rows)
            at = prompts.read_pos[rows]
            out = adapter.forward(ids, mask, capture=sites.inputs, logits_at=at)  # logits and the read site at once
            plain.append(out.logits.double().cpu())
            edits, f = clamp_edits(adapter, sae, sites, feats, value, scale, ids, mask, acts=out.acts)
            clamped.append(adapter.forward(ids, mask, edits=edits, logits_at=at).logits.double().cpu())
            before.append(f[torch.arange(len(rows)), at.cpu()])
    plain, clamped, before = torch.cat(plain), torch.cat(clamped), torch.cat(before)
    data = dataset.tensors
    metric = params["metric"]
    m0 = metrics.compute(metric, plain, data, None, plain)
    m1 = metrics.compute(metric, clamped, data, None, plain)
    shift = m1 - m0
    std = lambda x: float(x.std()) if n > 1 else 0.0  # noqa: E731
    result = pl.DataFrame({"condition": ["original", "clamped"], "mean": [float(m0.mean()), float(m1.mean())],
                           "std": [std(m0), std(m1)], "n": [n, n]})
    per_prompt = pl.DataFrame({"prompt": list(range(n)), "original": m0.tolist(), "clamped": m1.tolist(),
                               "shift": shift.tolist()})
    set_to = [float(value)] * len(index) if value is not None else (before.mean(0) * scale).tolist()
    feat_table = pl.DataFrame({"feature": index, "mean_before": before.mean(0).tolist(), "mean_after": set_to,
                               "active_before": (before > 0).double().mean(0).tolist()})
    decodings = [None] + list(range(int(params["seeds"])))
    row_seeds = [s for s in decodings for _ in (0, 1)]
    on = list(range(1, len(row_seeds), 2))
    tok = adapter.tokenizer
    gens = []
    for p in range(min(int(params["show"]), n)):
        length = int(prompts.attention_mask[p].sum())
        ids = prompts.ids[p, :length].tolist()
        toks, _ = gen.generate(adapter, ids, int(params["generate"]), row_seeds, temperature=params["temperature"],
                               top_k=params["top_k"],
                               edits_at=lambda cur: clamp_edits(adapter, sae, sites, feats, value, scale, cur, None, on)[0])
        for d, s in enumerate(decodings):
            gens.append({"prompt": p, "text": tok.decode(ids), "decoding": "greedy" if s is None else f"seed {s}",
                         "original": tok.decode(toks[2 * d].tolist()), "clamped": tok.decode(toks[2 * d + 1].tolist())})
    changed = sum(g["original"] != g["clamped"] for g in gens)
    names = ", ".join(map(str, index))
    headline = [{"label": f"{metric} shift", "value": float(shift.mean()),
                 "detail": f"{float(m0.mean()):.3g} -> {float(m1.mean()):.3g} (mean of {n} prompts); feature(s) {names} "
                           f"{how} at every position"},
                {"label": "continuations changed", "value": f"{changed} of {len(gens)}",
                 "detail": f"greedy and {params['seeds']} seeds, {params['generate']} tokens"}]
    return Artifact(
        tensors={"original": m0.float(), "clamped": m1.float(), "shift": shift.float(), "before": before.float()},
        tables={"result": result, "per_prompt": per_prompt, "features": feat_table,
                "generations": pl.DataFrame(gens, schema={"prompt": pl.Int64, "text": pl.Utf8, "decoding": pl.Utf8,
                                                          "original": pl.Utf8, "clamped": pl.Utf8})},
        data={"metric": metric, "features": index, "value": value, "scale": None if value is not None else scale,
              "site": art.data["site"], "kind": art.data["kind"],
              "where": "every position of the prompt and of each generated token",
              "convention": "y <- y + sum_i (f_i' - f_i) W_dec[i] at the dictionary's written site (its error kept); "
                            f"{metric} at each prompt's answer position; kl = KL(original || clamped)",
              "chart": {"x": "condition", "y": "mean", "title": f"{metric} with feature(s) {names} {how}"},
              "headline": headline},
    )
