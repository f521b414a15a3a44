"""`attribute heads in all layers of m on ioi with logit_diff`: attribution patching (AtP).

The first-order estimate of activation patching (Nanda, "Attribution patching"): for a site with
clean activation a_c, corrupted activation a_r and metric gradient g taken at the corrupted run,

    m(corrupted run with a_c patched in) - m(corrupted) ~ (a_c - a_r) . g

so one corrupted forward + backward gives every component's estimate at once, instead of one
forward per component. Noising swaps the roles: (a_r - a_c) . g with g at the clean run.

Plan: the clean and corrupted activations are the `capture` nodes activation patching uses (shared
with `patch` statements), and the gradient a `gradient` node (shared by every attribution of that
site, metric and direction); this node only multiplies and sums, without a model.

Reported like `patch`, so the two compare directly: "patched" is the estimated metric of the
patched run (mean over prompts), "effect" its normalisation (patched - m_corrupted) /
(m_clean - m_corrupted), "attribution" the raw estimate of the change. Positions: "all" sums the
products over every position (one component patched everywhere), "each" / a list keeps each
position, "last" reads each prompt's answer position. Components: heads (attn.hook_z, summed over
d_head), q / k / v (per head), resid / resid_pre / resid_mid / resid_post, attn (hook_attn_out),
mlp (hook_mlp_out), neurons (mlp.hook_post, one value per neuron; `neurons 0..9` picks some). Known limit of the
linearisation: with kl and noising the gradient at the clean run is zero (KL is minimal there).
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
from mechstudy.stdlib.models.sites import Site, component, words

# The words of `patch` whose kinds carry a gradient (attention patterns excepted: no module sees
# them before they are used, so they cannot take a gradient edit).
COMPONENTS = words(lambda k: k.per_layer and k.grad)


def per_position(clean: torch.Tensor, corrupted: torch.Tensor, grad: torch.Tensor, word: str,
                 direction: str) -> torch.Tensor:
    """(a_patched_in - a_base) . grad per prompt and position: [N, S] (+ [units]), float64. A
    per-head kind sums over d_head; a neuron is its own unit; a whole-width kind sums over d_model."""
    diff = (clean.double() - corrupted.double()) if direction == "denoising" else (corrupted.double() - clean.double())
    prod = diff * grad.double()
    return prod if component(word).unit == "neuron" else prod.sum(-1)


def select_positions(x: torch.Tensor, positions: Any, answer_pos: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """[N, S, ...] -> ([N, ...], False) for "all" / "last", ([N, P, ...], True) for "each" / a list."""
    if positions == "all":
        return x.sum(1), False
    if positions == "last":
        return x[torch.arange(x.shape[0]), answer_pos], False
    if positions == "each":
        return x, True
    pos = torch.as_tensor([int(p) for p in positions], dtype=torch.long)
    inside = pos < x.shape[1]  # past every prompt's end: nothing changes there
    out = torch.zeros((x.shape[0], len(pos), *x.shape[2:]), dtype=x.dtype)
    out[:, inside] = x[:, pos[inside]]
    return out, True


def gradient_run(direction: str) -> str:
    """The run the gradient is taken at: the one patched into."""
    return "corrupted" if direction == "denoising" else "clean"


def _plan(params: dict, b: Any) -> Any:
    """Shared captures (as `patch` plans them) and a shared gradient node, then this node."""
    kind = component(params["component"]).kind.name
    grad = b.node("gradient", {"site": kind, "which": gradient_run(params["direction"]), "metric": params["metric"],
                               "model": params["model"], "dataset": params["dataset"]})
    caps = iv.plan_captures(b, params, {"clean": (kind, "clean"), "corrupted": (kind, "corrupted")})
    own = {k: v for k, v in params.items() if k != "model"}  # the attribution itself needs no model
    return b.node("attribute", {**own, **caps, "gradient": grad,
                                "positions": iv.default_positions(params["component"], params["positions"])})


def _only_neurons_indexed(p: dict) -> None:
    """Check time: an index picks neurons; other components are attributed whole (see `run`)."""
    if p.get("component_index") is not None and component(p["component"]).unit != "neuron":
        raise spec.OptionError(f"component '{p['component']}' takes no index here (only neurons)", "component_index",
                               f"attribute {p['component']} without an index, or attribute neurons N..M")


@spec.operator(
    "attribute",
    version=1,
    verb="attribute",
    components=COMPONENTS,
    params=[
        Param("component", str, choices=COMPONENTS, doc="what to attribute"),
        Param("component_index", list, None, minimum=0, nonempty=True, doc="neurons only: which neurons (default: all)"),
        Param("layers", spec.LAYERS, "all", doc="layers to report"),
        Param("positions", spec.POSITIONS, None, doc="default: all (heads, neurons), each (the others)"),
        Param("model", spec.MODEL),
        Param("dataset", spec.DATASET),
        Param("metric", spec.METRIC, "logit_diff", doc="any metric the dataset supports"),
        Param("direction", str, "denoising", choices=("denoising", "noising"),
              doc="denoising: clean into corrupted (gradient at corrupted); noising: the reverse"),
    ],
    output="table",
    plan=_plan,
    default_chart="heatmap",
    requires=frozenset({"corrupted"}),
    model_features=frozenset({"causal", "lm_head"}),
    result_keys=lambda p: iv.key_columns(p["component"], p.get("positions")),
    validate=lambda p: _only_neurons_indexed(p),
    example="attribute heads in all layers of m on ioi with logit_diff",
)
def run(inputs: dict[str, Artifact], params: dict, ctx: Any) -> Artifact:
    """Attribution patching: (clean - corrupted) . gradient, per component, as a patching estimate."""
    pairs = Pairs.of(inputs["dataset"])
    word, direction = params["component"], params["direction"]
    kind = component(word).kind
    unit = kind.unit
    positions = iv.default_positions(word, params["positions"])
    grad_art = inputs["gradient"]
    n_layers = sum(1 for k in grad_art.tensors if not k.startswith("metric_"))  # one tensor per layer
    given = params["layers"]
    layers = list(range(n_layers)) if given in (None, "all") else [int(l) for l in given]
    index = params["component_index"]
    if index is not None and unit != "neuron":
        raise ValueError(f"component {word!r} takes no index here (only neurons)")
    per_layer = []
    for layer in layers:
        name = Site(layer, kind.name).name
        x = per_position(inputs["clean"].tensors[name], inputs["corrupted"].tensors[name],
                         grad_art.tensors[name], word, direction)
        if index is not None:
            x = x[..., torch.as_tensor([int(i) for i in index], dtype=torch.long)]
        x, pos_axis = select_positions(x, positions, pairs.answer_pos)
        per_layer.append(x)
    per_prompt = torch.stack(per_layer).movedim(1, -1)  # [L, (P), (units), N]
    m_clean = torch.as_tensor(grad_art.tensors["metric_clean"]).double()
    m_corr = torch.as_tensor(grad_art.tensors["metric_corrupted"]).double()
    clean_mean, corr_mean = m_clean.mean().item(), m_corr.mean().item()
    attribution = per_prompt.mean(-1)
    patched = attribution + (corr_mean if direction == "denoising" else clean_mean)
    effect = metrics.normalise(patched, clean_mean, corr_mean)

    shape = list(attribution.shape)
    grid = torch.stack(torch.meshgrid(*[torch.arange(s) for s in shape], indexing="ij"), -1).view(-1, len(shape))
    cols: dict[str, Any] = {"layer": [layers[i] for i in grid[:, 0].tolist()]}
    axes = ["layer"]
    if pos_axis:
        width = pairs.clean_ids.shape[1]
        pos_values = list(range(width)) if positions == "each" else [int(p) for p in positions]
        cols["position"] = [pos_values[i] for i in grid[:, 1].tolist()]
        axes.append("position")
    elif unit is None:
        cols["position"] = [positions] * grid.shape[0]  # one column: "all" or "last", as patch writes it
    if unit is not None:
        unit_ids = list(range(shape[-1])) if index is None else [int(i) for i in index]
        cols[unit] = [unit_ids[i] for i in grid[:, -1].tolist()]
        axes.append(unit)
    cols.update(effect=effect.reshape(-1).tolist(), patched=patched.reshape(-1).tolist(),
                attribution=attribution.reshape(-1).tolist())
    chart: dict[str, Any] = {"x": unit} if unit == "neuron" else {}
    if axes == ["layer", "position", unit]:
        chart["facet"] = "position"
    return Artifact(
        tensors={"effect": effect.float().contiguous(), "patched": patched.float().contiguous(),
                 "attribution": attribution.float().contiguous(), "per_prompt": per_prompt.float().contiguous(),
                 "clean": m_clean.float(), "corrupted": m_corr.float()},
        tables={"result": pl.DataFrame(cols)},
        data={"component": word, "site": kind.name, "direction": direction, "metric": grad_art.data.get("metric"),
              "positions": positions, "axes": axes, "shape": shape, "clean_mean": clean_mean,
              "corrupted_mean": corr_mean, "method": "attribution patching", "chart": chart,
              "headline": [{"label": "metric, clean", "value": clean_mean}, {"label": "metric, corrupted",
                           "value": corr_mean, "detail": "effect: the first-order estimate, normalised the same way"},
                           {"label": "direction", "value": direction}]},
    )
