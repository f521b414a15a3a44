"""`ablate heads in layer 3 of m on ioi with logit_diff using mean`: knock components out, batched.

The clean prompts run with one component (per variant: a head, a neuron, a layer's attention or
MLP output, the residual stream, at all positions or per position) replaced by

- ``zero``: zeros;
- ``mean`` (default): its mean over the dataset's prompts, per position (each position averaged
  over the prompts that are real there); `mean_of=corrupted` averages the corrupted prompts
  instead (Wang et al. mean-ablate with the ABC distribution);
- ``resample``: its value on another prompt's corrupted version, drawn by a seeded random
  permutation among the prompts of the same length (so positions line up).

Components are those of `patch` (see `stdlib/interventions.py`): heads, q, k, v, pattern (a
zero pattern zeroes the head; a mean pattern is averaged attention, written through z = P @ v),
neurons, resid*, attn / attn_out, mlp / mlp_out. Variants go through the model together as rows
of `ctx.max_rows`-row forwards; activations come from the shared `capture` nodes.

Table: `effect` = (m_ablated - m_corrupted) / (m_clean - m_corrupted) on means over prompts (1 =
the component does not matter, 0 = knocking it out is as bad as the corruption), `ablated` (the
raw metric) and `change` = m_ablated - m_clean.
"""

from __future__ import annotations

from typing import Any

import polars as pl
import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib import interventions as iv
from mechstudy.stdlib import metrics
from mechstudy.stdlib.datasets import Pairs
from mechstudy.stdlib.models.sites import Site
from mechstudy.stdlib.ops.capture import capture

METHODS = ("zero", "mean", "resample")


def masked_mean(act: torch.Tensor, mask: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean over prompts [1, ...] of `act` [N, ...], per position, over the prompts real there.

    The sequence axis is 1 (2 for a pattern's query rows); padded entries are zero already."""
    axis = 2 if kind == "pattern" else 1
    real = mask.to(act.dtype).view(mask.shape[0], *[mask.shape[1] if d == axis else 1 for d in range(1, act.ndim)])
    return (act * real).sum(0, keepdim=True) / real.sum(0, keepdim=True).clamp(min=1)


def resample_order(mask: torch.Tensor, seed: int) -> torch.Tensor:
    """[N]: the prompt whose corrupted activation prompt i gets; a random permutation within each
    group of prompts of the same length.

    >>> resample_order(torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 0]]), 0).tolist()[1]
    1
    """
    gen = torch.Generator().manual_seed(seed)
    lengths = mask.sum(1)
    order = torch.arange(mask.shape[0])
    for length in torch.unique(lengths).tolist():
        idx = torch.nonzero(lengths == length)[:, 0]
        order[idx] = idx[torch.randperm(len(idx), generator=gen)]
    return order


def ablation_values(kind: str, method: str, acts: dict[int, torch.Tensor], mask: torch.Tensor,
                    seed: int) -> dict[int, torch.Tensor]:
    """layer -> [N, ...] replacement values of a mean (an expanded view) or resample ablation."""
    if method == "mean":
        return {l: masked_mean(a, mask, kind).expand_as(a) for l, a in acts.items()}
    order = resample_order(mask, seed)
    return {l: a[order] for l, a in acts.items()}


def _captures(params: dict) -> dict[str, tuple[str, str]]:
    """Input name -> (site kind, clean | corrupted) of the captures a statement reads."""
    kind = iv.component(params["component"]).kind
    method = params.get("method", "mean")
    if method == "zero":
        return {}
    which = "corrupted" if method == "resample" else params.get("mean_of", "clean")
    out = {"source": (kind, which)}
    if kind == "pattern":  # z = pattern @ v with the clean run's own values
        out["values"] = ("v", "clean")
    return out


def _plan(params: dict, b: Any) -> Any:
    m, d = params["model"], params["dataset"]
    inputs = {"model": m, "dataset": d}
    for name, (site, which) in _captures(params).items():
        inputs[name] = b.node("capture", {"site": site, "which": which}, {"model": m, "dataset": d})
    keyed = {k: v for k, v in params.items() if k not in ("model", "dataset")}
    keyed["positions"] = iv.default_positions(params["component"], params.get("positions"))
    return b.node("ablate", keyed, inputs)


@spec.operator(
    "ablate",
    version=1,
    verb="ablate",
    components=tuple(iv.COMPONENTS),
    params=[
        Param("component", str, choices=tuple(iv.COMPONENTS), doc="what to knock out"),
        Param("component_index", list, None, doc="heads or neurons to sweep (`neurons 10..20`); default all"),
        Param("layers", spec.LAYERS, "all", doc="layers to sweep"),
        Param("positions", spec.POSITIONS, None, doc="default: all (per head / neuron), each (the others)"),
        Param("model", spec.MODEL),
        Param("dataset", spec.DATASET),
        Param("metric", spec.METRIC, "logit_diff", doc="logit_diff, prob, kl, loss or prob_diff"),
        Param("method", str, "mean", choices=METHODS, doc="zero, mean (over the dataset) or resample (corrupted)"),
        Param("mean_of", str, "clean", choices=("clean", "corrupted"), doc="prompts a mean ablation averages"),
        Param("seed", int, 0, doc="resample permutation seed"),
    ],
    output="table",
    plan=_plan,
    uses_model=True,
    default_chart="heatmap",
    requires=frozenset({"corrupted"}),
    example="ablate heads in all layers of m on ioi with logit_diff using mean",
)
def run(inputs: dict[str, Artifact], params: dict, ctx: Any) -> Artifact:
    """Zero, mean or resample ablation of any patchable component: effect, raw metric, change."""
    adapter = ctx.model(inputs["model"])
    dataset = inputs["dataset"]
    pairs = Pairs.of(dataset)
    word, metric, method = params["component"], params.get("metric", "logit_diff"), params.get("method", "mean")
    kind = iv.component(word).kind
    n, width = pairs.n, int(pairs.clean_ids.shape[1])

    def acts_of(name: str, site: str, which: str) -> dict[int, torch.Tensor]:
        art = inputs.get(name)
        named = art.tensors if art is not None else capture(adapter, dataset, site, which, ctx.max_rows)
        return {l: torch.as_tensor(named[Site(l, site).name]) for l in range(adapter.n_layers)}

    caps = {name: acts_of(name, site, which) for name, (site, which) in _captures(params).items()}
    write = iv.write_kind(kind)
    if method == "zero":  # a zero pattern gives a zero head output: zero z
        zeros = torch.zeros(()).expand(adapter.shape(Site(0, write), n, width))
        source = {l: zeros for l in range(adapter.n_layers)}
    else:
        source = ablation_values(kind, method, caps["source"], pairs.attention_mask, params.get("seed", 0))
        if kind == "pattern":
            source = {l: iv.pattern_as_z(p, caps["values"][l]) for l, p in source.items()}

    positions = iv.default_positions(word, params.get("positions"))
    unit_ids = iv.units(word, adapter, params.get("component_index"))
    g = iv.grid(word, params.get("layers", "all"), positions, adapter.n_layers, unit_ids, width)
    clean_logits, m_clean, m_corr = iv.baselines(adapter, pairs, metric, ctx.max_rows)
    per_prompt = iv.sweep(adapter, pairs, write, source, g, metric, "clean", clean_logits, ctx.max_rows)
    ablated = per_prompt.mean(1)
    clean_mean, corr_mean = m_clean.mean().item(), m_corr.mean().item()
    effect = metrics.normalise(ablated, clean_mean, corr_mean)

    cols = iv.table_columns(word, g, positions)
    cols.update(effect=effect.tolist(), ablated=ablated.tolist(), change=(ablated - clean_mean).tolist())
    shape = g.shape
    return Artifact(
        tensors={"effect": effect.float().view(shape).contiguous(), "ablated": ablated.float().view(shape).contiguous(),
                 "per_prompt": per_prompt.float().view(*shape, n).contiguous(),
                 "clean": m_clean.float(), "corrupted": m_corr.float()},
        tables={"result": pl.DataFrame(cols)},
        data={"component": word, "site": kind, "method": method, "metric": metric, "positions": positions,
              "axes": g.axes, "shape": shape, "clean_mean": clean_mean, "corrupted_mean": corr_mean,
              "chart": iv.chart_hints(g),
              "headline": [{"label": f"{metric}, clean", "value": clean_mean},
                           {"label": f"{metric}, corrupted", "value": corr_mean,
                            "detail": "effect = (ablated - corrupted) / (clean - corrupted)"}, {"label": "ablation", "value": method}],},
    )
