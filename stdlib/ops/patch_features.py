"""`patch features s of m on ioi with logit_diff`: activation patching of a dictionary's features,
one feature at a time, with the dictionary spliced in at its site (Marks et al.'s sparse feature
circuits; the `patch` verb's operator for the component word `features`).

Denoising (the default): the corrupted prompt runs, and at every position the dictionary's written
site gets

    y  <-  y + (f_i(clean) - f_i(corrupted)) W_dec[i]

that is, feature i takes its value on the clean prompt at the same position while everything else,
the dictionary's reconstruction error included, stays the corrupted run's. `noising` runs the clean
prompt with each feature set to its corrupted value. Clean and corrupted prompts must be as long as
each other (the pairs every patching statement reads). An SAE reads and writes one site; a
transcoder reads resid_mid and writes mlp_out of its layer (a crosscoder is refused).

`effect` = (patched - corrupted) / (clean - corrupted) on means over prompts, as for every patching
sweep: in denoising, 1 means the feature alone restores the clean behaviour; in noising, low means the
feature is necessary. Also reported: the features' mean activations on clean and corrupted prompts at
the answer position. Variants are packed along the batch (several features per forward).
"""

from __future__ import annotations

from typing import Any, Mapping

import polars as pl
import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib import metrics
from mechstudy.stdlib.datasets import Pairs
from mechstudy.stdlib.models.base import Edit
from mechstudy.stdlib.models.batching import chunks, trimmed
from mechstudy.stdlib.dictionary.use import feature_list, open_dictionary, plan_reading

DIRECTIONS = ("denoising", "noising")


def _run(adapter: Any, sae: Any, sites: Any, ids: torch.Tensor, mask: torch.Tensor,
         at: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """One unedited forward: the logits at `at`, all features [B, S, F], the written site's shape."""
    out = adapter.forward(ids, mask, capture=list(dict.fromkeys([*sites.inputs, *sites.outputs])), logits_at=at)
    x = torch.cat([out.acts[s].flatten(2).float().cpu() for s in sites.inputs], -1)
    return out.logits.double().cpu(), sae.encode(x), {s: tuple(out.acts[s].shape) for s in sites.outputs}


@spec.operator(
    "patch_features",
    version=1,
    verb="patch",
    components=("features",),
    params=[
        Param("component", str, "features", choices=("features",), doc="features of a dictionary"),
        Param("component_index", list, None, minimum=0, nonempty=True,
              doc="which features (`features 0..63`); default all"),
        Param("dictionary", spec.RESULT, doc="a `train sae|transcoder` or `load sae` result"),
        Param("model", spec.MODEL, doc="the dictionary's model"),
        Param("dataset", spec.DATASET, doc="clean/corrupted prompt pairs of equal length"),
        Param("metric", spec.METRIC, "logit_diff", doc="read at each prompt's answer position"),
        Param("direction", str, "denoising", choices=DIRECTIONS,
              doc="denoising: corrupted run, feature from clean; noising: the reverse"),
    ],
    plan=plan_reading("patch_features"),
    output="table",
    uses_model=True,
    default_chart="bar",
    example='model m = zoo "mini"\ncorpus web = text "README.md" tokens=512 context=32\n'
            "dataset ioi = ioi(n=8)\n"
            "s = train sae in layer 1 of m over web width=64 k=4 batch=256 steps=20 checkpoint=10\n"
            "patch features 0..15 s of m on ioi with logit_diff",
)
def run(inputs: Mapping[str, Artifact], params: dict, ctx: Any) -> Artifact:
    """Patch each dictionary feature from the clean run into the corrupted one (or the reverse)."""
    art = inputs["dictionary"]
    adapter, sae, sites = open_dictionary(inputs, ctx, "patch features", one_site=True)
    index = feature_list(params["component_index"], sae.shape.width)
    pairs = Pairs.of(inputs["dataset"])  # refuses a dataset without corrupted prompts
    noising = params["direction"] == "noising"
    feats = torch.tensor(index)
    W = sae.W_dec.detach().float()[feats]  # [k, d_out]
    n, k = pairs.n, len(index)
    out_site = sites.outputs[0]
    clean_logits, corr_logits = [], []
    patched = torch.empty(k, n, dtype=torch.float64)
    f_clean_at, f_corr_at = [], []
    data = inputs["dataset"].tensors
    with torch.no_grad():
        for rows in chunks(n, ctx.max_rows):
            rows_t = torch.as_tensor(rows)
            c_ids, mask = trimmed(pairs.clean_ids, pairs.attention_mask, rows)
            x_ids, _ = trimmed(pairs.corrupted_ids, pairs.attention_mask, rows)
            at = pairs.answer_pos[rows_t]
            b = torch.arange(len(rows))
            lc, fc, shapes = _run(adapter, sae, sites, c_ids, mask, at)
            lx, fx, _ = _run(adapter, sae, sites, x_ids, mask, at)
            f_clean_at.append(fc[b, at.cpu()][:, feats])
            f_corr_at.append(fx[b, at.cpu()][:, feats])
            clean_logits.append(lc)
            corr_logits.append(lx)
            base_ids = c_ids if noising else x_ids
            delta = (fx - fc if noising else fc - fx)[..., feats]  # [B, S, k]
            shape = shapes[out_site]
            per = max(1, ctx.max_rows // len(rows))  # features per forward: variants packed along the batch
            for j0 in range(0, k, per):
                js = list(range(j0, min(k, j0 + per)))
                # variant j's edit: delta[..., j] x W_dec[j], added at the written site
                edit = torch.einsum("bsj,jd->jbsd", delta[..., js], W[js]).reshape(len(js) * len(rows), *shape[1:])
                ids = base_ids.repeat(len(js), 1)
                m = mask.repeat(len(js), 1) if mask is not None else None
                logits = adapter.forward(ids, m, edits=[Edit(out_site, edit.to(adapter.dtype), mode="add")],
                                         logits_at=at.repeat(len(js))).logits.double().cpu()
                ref = torch.cat([lc] * len(js))
                vals = metrics.compute(params["metric"], logits, data, rows_t.repeat(len(js)), ref).view(len(js), len(rows))
                patched[js[0]:js[-1] + 1, rows_t] = vals.double()
    clean_logits, corr_logits = torch.cat(clean_logits), torch.cat(corr_logits)
    m_clean = metrics.compute(params["metric"], clean_logits, data, None, clean_logits)
    m_corr = metrics.compute(params["metric"], corr_logits, data, None, clean_logits)
    c_mean, x_mean = float(m_clean.mean()), float(m_corr.mean())
    raw = patched.mean(1)
    effect = metrics.normalise(raw, c_mean, x_mean)
    f_clean_at, f_corr_at = torch.cat(f_clean_at), torch.cat(f_corr_at)
    table = pl.DataFrame({"feature": index, "effect": effect.tolist(), "patched": raw.tolist(),
                          "clean_activation": f_clean_at.mean(0).tolist(),
                          "corrupted_activation": f_corr_at.mean(0).tolist()})
    base = x_mean if not noising else c_mean
    order = (raw - base).abs().argsort(descending=True)[:5].tolist()
    top = ", ".join(f"F{index[i]} {float(effect[i]):+.3f}" for i in order)
    conv = ("denoising: the corrupted run with feature i set to its clean value at every position"
            if not noising else "noising: the clean run with feature i set to its corrupted value at every position")
    metric = params["metric"]
    return Artifact(
        tensors={"effect": effect.float(), "patched": raw.float(), "per_prompt": patched.float(),
                 "clean": m_clean.float(), "corrupted": m_corr.float()},
        tables={"result": table},
        data={"metric": metric, "features": index, "direction": params["direction"], "site": art.data["site"],
              "kind": art.data["kind"], "clean_mean": c_mean, "corrupted_mean": x_mean,
              "convention": conv + "; y <- y + (f_i' - f_i) W_dec[i] at the dictionary's written site (its "
                                   "reconstruction error kept); effect = (patched - corrupted) / (clean - corrupted)",
              "chart": {"x": "feature", "y": "effect", "title": f"{metric}: each feature patched ({params['direction']})"},
              "headline": [{"label": f"{metric}, clean", "value": c_mean},
                           {"label": f"{metric}, corrupted", "value": x_mean,
                            "detail": "effect = (patched - corrupted) / (clean - corrupted)"},
                           {"label": "largest effects", "value": top, "detail": params["direction"]}]},
    )
