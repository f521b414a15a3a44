"""`gradient` (internal): d metric / d activation on a dataset, stored for attribution methods.

Planned (never written in a study) by `attribute` (one site kind: every layer's gradient, shared by
every attribution statement on that site, whatever its layers or positions) and by
`attribute_edges` (site "receivers": the gradients at the component graph's receiver inputs, see
`circuits.gradients`). Each prompt's row holds the gradient of that prompt's own metric.

`which` is the run the gradient is taken at: "corrupted" for denoising attributions (clean patched
into corrupted), "clean" for noising. With `ig_steps` k > 1 the embeddings are interpolated from
that run's toward the other run's, ``x = x_base + (j / k)(x_other - x_base)`` for j = 0 .. k-1,
and the gradients averaged (integrated gradients as in EAP-IG, Hanna et al. 2024); k = 1 is the
plain gradient. The metric's reference logits (kl) are always the clean run's.

Outputs: one float32 tensor per site name ([N, S, ...], zero at padding), plus "metric_clean" and
"metric_corrupted" ([N], float64; the metric on each run) for normalising attributions.
"""

from __future__ import annotations

from typing import Any

import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib.circuits.gradients import receiver_gradients, site_gradients
from mechstudy.stdlib.circuits.scores import metric_rows, scorer
from mechstudy.stdlib.datasets import Pairs
from mechstudy.stdlib.models.batching import chunks, trimmed
from mechstudy.stdlib.models.sites import SITE_KINDS, Site

# Every kind a gradient can be read at (the vocabulary's `grad`), or the graph's receiver inputs.
SITES = (*(k for k, v in SITE_KINDS.items() if v.grad and v.per_layer), "receivers")


def gradients(adapter: Any, pairs: Pairs, site: str, which: str, metric: str, ig_steps: int = 1,
              max_rows: int = 32) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """({site name: gradient [N, S, ...] float32}, metric on clean [N], metric on corrupted [N])."""
    if ig_steps < 1:
        raise ValueError(f"ig_steps must be at least 1, got {ig_steps}")
    other = "clean" if which == "corrupted" else "corrupted"
    mask, n, width = pairs.attention_mask, pairs.n, pairs.clean_ids.shape[1]
    out: dict[str, torch.Tensor] = {}
    m_base, m_other = torch.empty(n, dtype=torch.float64), torch.empty(n, dtype=torch.float64)
    for rows in chunks(n, max_rows):
        ids, m = trimmed(pairs.ids(which), mask, rows)
        ids_o, _ = trimmed(pairs.ids(other), mask, rows)
        apos = pairs.answer_pos[rows]
        emb = [Site(0, "resid_pre")]
        with torch.no_grad():
            o = adapter.forward(ids_o, m, capture=emb, logits_at=apos)
            # The base run without gradients only when needed: as the kl reference (clean), or
            # for its embeddings (the start of the integration path).
            b = adapter.forward(ids, m, capture=emb, logits_at=apos) if which == "clean" or ig_steps > 1 else None
        reference = o.logits if which == "corrupted" else b.logits
        m_other[rows] = metric_rows(metric, o.logits, pairs, rows, reference).cpu()
        score = scorer(metric, pairs, rows, reference)
        total: dict[str, torch.Tensor] = {}
        for j in range(ig_steps):
            alpha = j / ig_steps
            point = None if j == 0 else b.acts[emb[0]] + alpha * (o.acts[emb[0]] - b.acts[emb[0]])
            if site == "receivers":
                got, values = receiver_gradients(adapter, ids, m, apos, score, input_value=point)
            else:
                by_layer, values = site_gradients(adapter, ids, m, apos, score, site, input_value=point)
                got = {Site(l, site).name: g for l, g in by_layer.items()}
            if j == 0:
                m_base[rows] = values.cpu()
            for k, g in got.items():
                total[k] = total[k] + g if k in total else g
        for k, g in total.items():
            if k not in out:
                out[k] = torch.zeros((n, width, *g.shape[2:]), dtype=torch.float32)
            out[k][rows, : g.shape[1]] = (g / ig_steps).float().cpu()
    real = mask.bool()
    for k, g in out.items():
        out[k] = (g * real.view(n, width, *([1] * (g.ndim - 2)))).contiguous()
    clean, corrupted = (m_other, m_base) if which == "corrupted" else (m_base, m_other)
    return out, clean, corrupted


@spec.operator(
    "gradient",
    version=1,
    params=[
        Param("site", str, choices=SITES, doc="site kind, or 'receivers' (the component graph's receiver inputs)"),
        Param("which", str, "corrupted", choices=("clean", "corrupted"), doc="the run the gradient is taken at"),
        Param("metric", spec.METRIC, "logit_diff", doc="any metric the dataset supports"),
        Param("ig_steps", int, 1, minimum=1, ceiling=1_000, doc="integrated-gradient steps along the embeddings (1: plain gradient)"),
        Param("model", spec.MODEL),
        Param("dataset", spec.DATASET),
    ],
    verb=None,
    output="tensors",
    uses_model=True,
)
def run(inputs: dict[str, Artifact], params: dict, ctx: Any) -> Artifact:
    """Gradients of a metric at every layer of a site kind (or the graph's receivers), per prompt."""
    adapter = ctx.model(inputs["model"])
    pairs = Pairs.of(inputs["dataset"])
    site, which = params["site"], params["which"]
    metric, steps = params["metric"], int(params["ig_steps"])
    grads, clean, corrupted = gradients(adapter, pairs, site, which, metric, steps, ctx.max_rows)
    return Artifact(
        tensors={**grads, "metric_clean": clean, "metric_corrupted": corrupted},
        data={"site": site, "which": which, "metric": metric, "ig_steps": steps, "names": sorted(grads)},
    )
