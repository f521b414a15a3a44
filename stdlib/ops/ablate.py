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

import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib import interventions as iv
from mechstudy.stdlib.datasets import Pairs
from mechstudy.stdlib.models.sites import Site, component

METHODS = ("zero", "mean", "resample")
COMPONENTS = iv.words(lambda k: k.per_layer and k.write is not None)


def masked_mean(act: torch.Tensor, mask: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean over prompts [1, ...] of `act` [N, ...], per position, over the prompts real there.

    The first sequence axis of the kind is averaged per position (a pattern's query rows); padded
    entries are zero already."""
    axis = Site(0, kind).spec.seq_axes[0]
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


def captures(params: dict) -> dict[str, tuple[str, str]]:
    """Input name -> (site kind, clean | corrupted) of the captures a statement reads."""
    kind = component(params["component"]).kind.name
    method = params["method"]
    resume = iv.resume_captures(params, "clean")
    if method == "zero":
        return resume
    which = "corrupted" if method == "resample" else params["mean_of"]
    out = {"source": (kind, which)}
    if kind == "pattern":  # z = pattern @ v with the clean run's own values
        out["values"] = ("v", "clean")
    return {**out, **resume}


@spec.operator(
    "ablate",
    version=1,
    verb="ablate",
    components=COMPONENTS,
    params=[
        Param("component", str, choices=COMPONENTS, doc="what to knock out"),
        Param("component_index", list, None, minimum=0, nonempty=True, doc="heads or neurons to sweep (`neurons 10..20`); default all"),
        Param("layers", spec.LAYERS, "all", doc="layers to sweep"),
        Param("positions", spec.POSITIONS, None, doc="default: all (per head / neuron), each (the others)"),
        Param("model", spec.MODEL),
        Param("dataset", spec.DATASET),
        Param("metric", spec.METRIC, "logit_diff", doc="logit_diff, prob, kl, loss or prob_diff"),
        Param("method", str, "mean", choices=METHODS, doc="zero, mean (over the dataset) or resample (corrupted)"),
        Param("mean_of", str, "clean", choices=("clean", "corrupted"), doc="prompts a mean ablation averages"),
        Param("seed", int, 0, minimum=0, doc="resample permutation seed"),
    ],
    output="table",
    plan=lambda params, b: iv.plan_sweep("ablate", params, b, captures(params)),
    uses_model=True,
    default_chart="heatmap",
    requires=frozenset({"corrupted"}),
    model_features=frozenset({"causal", "lm_head"}),
    result_keys=lambda p: iv.key_columns(p["component"], p.get("positions")),
    example="ablate heads in all layers of m on ioi with logit_diff using mean",
)
def run(inputs: dict[str, Artifact], params: dict, ctx: Any) -> Artifact:
    """Zero, mean or resample ablation of any patchable component: effect, raw metric, change."""
    adapter = ctx.model(inputs["model"])
    dataset = inputs["dataset"]
    pairs = Pairs.of(dataset)
    word, metric, method = params["component"], params["metric"], params["method"]
    kind = component(word).kind.name
    n, width = pairs.n, int(pairs.clean_ids.shape[1])
    caps = {name: iv.read_or_capture(inputs, name, adapter, dataset, k, which, ctx.max_rows)
            for name, (k, which) in captures(params).items()}
    write = iv.write_kind(word)
    if method == "zero":  # a zero pattern gives a zero head output: zero z
        zeros = torch.zeros(()).expand(adapter.shape(Site(0, write), n, width))
        source = {l: zeros for l in range(adapter.n_layers)}
    else:
        values = ablation_values(kind, method, caps["source"], pairs.attention_mask, params["seed"])
        source = iv.source_values(word, values, caps.get("values"), adapter.n_heads)
    positions = iv.default_positions(word, params["positions"])
    unit_ids = iv.units(word, adapter, params["component_index"])
    g = iv.grid(word, params["layers"], positions, adapter.n_layers, unit_ids, width)
    clean_logits, m_clean, m_corr = iv.read_baselines(inputs, adapter, pairs, metric, ctx.max_rows)
    per_prompt = iv.sweep(adapter, pairs, write, source, g, metric, "clean", clean_logits, iv.rows(ctx, pairs),
                          resume=caps.get("resume"), replay=caps.get("replay"))
    return iv.sweep_result(word, g, positions, per_prompt, m_clean, m_corr, "ablated",
                           {"component": word, "site": kind, "method": method, "metric": metric, "positions": positions},
                           extra={"change": lambda raw, clean: raw - clean}, headline={"ablation": method})
