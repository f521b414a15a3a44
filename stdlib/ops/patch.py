"""`patch heads in all layers of m on ioi with logit_diff`: activation patching, batched.

Denoising (default) runs the corrupted prompts with one component's clean activation patched in;
noising runs the clean prompts with a corrupted activation. Each variant (layer x head, or layer x
position, ...) is a block of rows, one per prompt, and all variants' rows go through the model
together, `ctx.max_rows` rows per forward; logits are only computed at the answer positions.

Effect = (m_patched - m_corrupted) / (m_clean - m_corrupted) on means over prompts, so 1 = the
clean behaviour, 0 = the corrupted one, in both directions (noising: low = necessary). For kl,
m_clean = 0 and the effect reads 1 - KL_patched / KL_corrupted. The table reports both the
normalised `effect` and the raw metric `patched` (e.g. the logit difference itself).

Positions are absolute token indices in right-padded prompts. "all" patches every position at
once, "each" every position separately (0 .. longest prompt - 1), a list each listed position
separately, "last" each prompt's own answer position. Patching a position past a prompt's end is
a no-op for that prompt (it only touches padding), so with mixed templates a position means
different words in different prompts; the ioi `template` parameter fixes that.

Components (see `stdlib/interventions.py`): heads = attn.hook_z per head; q, k, v per head;
pattern per head (query rows; written exactly through z = pattern @ v); neurons = mlp.hook_post
per neuron (`neurons 10..20 in layer 2`); resid / resid_pre, resid_mid, resid_post; attn /
attn_out = hook_attn_out; mlp / mlp_out = hook_mlp_out. Defaults: per-head and per-neuron
components at all positions at once, the others at each position.

Activations are captured once per (model, dataset, site kind, clean or corrupted) by a shared
`capture` node; a pattern patch also reads the base run's values (a `v` capture).
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
from mechstudy.stdlib.interventions import ALL, LAST  # noqa: F401  (re-exported)
from mechstudy.stdlib.models.base import Adapter
from mechstudy.stdlib.models.sites import Site
from mechstudy.stdlib.ops.capture import capture

COMPONENT_SITE = {w: c.kind for w, c in iv.COMPONENTS.items()}
default_positions = iv.default_positions


def variants(component: str, layers: Any, positions: Any, n_layers: int, n_heads: int, width: int):
    """The sweep as flat variant codes plus its grid (per-head components sweep every head).

    Returns (layer [V], head [V] (-1 = none), pos [V] (ALL, LAST or >= 0), axis names, grid shape).
    Order is layer-major, then position, then head, so `effect.view(grid)` is the heatmap.

    >>> layer, head, pos, axes, shape = variants("heads", [1], "all", n_layers=2, n_heads=4, width=10)
    >>> axes, shape, layer.tolist(), head.tolist(), pos.tolist()
    (['layer', 'head'], [1, 4], [1, 1, 1, 1], [0, 1, 2, 3], [-1, -1, -1, -1])
    >>> variants("resid", "all", [3, 5], n_layers=2, n_heads=4, width=10)[2].tolist()
    [3, 5, 3, 5]
    """
    unit_ids = list(range(n_heads)) if iv.component(component).unit == "head" else [-1]
    g = iv.grid(component, layers, positions, n_layers, unit_ids, width)
    return g.layer, g.unit, g.pos, g.axes, g.shape


def sweep(adapter: Adapter, pairs: Pairs, source: dict[int, torch.Tensor], kind: str, var_layer: torch.Tensor,
          var_head: torch.Tensor, var_pos: torch.Tensor, metric: str, base: str,
          clean_logits: torch.Tensor, max_rows: int = 32) -> torch.Tensor:
    """Metric of every (variant, prompt) row, float64 [V, N] (see `interventions.sweep`)."""
    g = iv.Grid(var_layer, var_head, var_pos, [], [])
    return iv.sweep(adapter, pairs, kind, source, g, metric, base, clean_logits, max_rows)


def sources(adapter: Adapter, dataset: Artifact, word: str, which: str, inputs: dict[str, Artifact],
            max_rows: int) -> tuple[str, dict[int, torch.Tensor]]:
    """(kind written, layer -> value [N, S, ...]) of the `which` run for component `word`, from the
    capture inputs ("source"; "values" for a pattern) or captured here when run directly."""
    kind = iv.component(word).kind
    base = "corrupted" if which == "clean" else "clean"

    def named(key: str, k: str, w: str) -> dict[str, torch.Tensor]:
        art = inputs.get(key)
        return art.tensors if art is not None else capture(adapter, dataset, k, w, max_rows)

    src = named("source", kind, which)
    out = {l: torch.as_tensor(src[Site(l, kind).name]) for l in range(adapter.n_layers)}
    if kind == "pattern":
        vals = named("values", "v", base)
        out = {l: iv.pattern_as_z(p, torch.as_tensor(vals[Site(l, "v").name])) for l, p in out.items()}
    return iv.write_kind(kind), out


def _plan(params: dict, b: Any) -> Any:
    """Shared capture node(s) (model, dataset, site kind, clean or corrupted), then the patch node."""
    kind = iv.component(params["component"]).kind
    which = "clean" if params.get("direction", "denoising") == "denoising" else "corrupted"
    m, d = params["model"], params["dataset"]
    inputs = {"model": m, "dataset": d,
              "source": b.node("capture", {"site": kind, "which": which}, {"model": m, "dataset": d})}
    if kind == "pattern":  # z = pattern @ v needs the values of the run being patched
        base = "corrupted" if which == "clean" else "clean"
        inputs["values"] = b.node("capture", {"site": "v", "which": base}, {"model": m, "dataset": d})
    keyed = {k: v for k, v in params.items() if k not in ("model", "dataset")}
    keyed["positions"] = default_positions(params["component"], params.get("positions"))
    if keyed.get("component_index") is None:
        keyed.pop("component_index", None)  # absent when unused: earlier statements keep their keys
    return b.node("patch", keyed, inputs)


@spec.operator(
    "patch",
    version=1,
    verb="patch",
    components=tuple(iv.COMPONENTS),
    params=[
        Param("component", str, choices=tuple(iv.COMPONENTS), doc="what to patch"),
        # keyed=False only so that make_node does not spell out its default: the plan hook keys it
        # whenever it is given, and its absence (every unit) keeps the keys statements had before it.
        Param("component_index", list, None, keyed=False,
              doc="heads or neurons to sweep (`neurons 10..20`); default all"),
        Param("layers", spec.LAYERS, "all", doc="layers to sweep"),
        Param("positions", spec.POSITIONS, None, doc="default: all (per head / neuron), each (the others)"),
        Param("model", spec.MODEL),
        Param("dataset", spec.DATASET),
        Param("metric", spec.METRIC, "logit_diff", doc="logit_diff, prob, kl, loss or prob_diff"),
        Param("direction", str, "denoising", choices=("denoising", "noising"),
              doc="denoising: clean into corrupted; noising: corrupted into clean"),
    ],
    output="table",
    plan=_plan,
    uses_model=True,
    default_chart="heatmap",
    example="patch heads in all layers of m on ioi with logit_diff",
)
def run(inputs: dict[str, Artifact], params: dict, ctx: Any) -> Artifact:
    """Activation patching of heads, q/k/v, patterns, neurons, resid, attn or mlp: effect and raw metric."""
    adapter = ctx.model(inputs["model"])
    pairs = Pairs.of(inputs["dataset"])
    word, metric = params["component"], params.get("metric", "logit_diff")
    direction = params.get("direction", "denoising")
    which, base = ("clean", "corrupted") if direction == "denoising" else ("corrupted", "clean")
    kind, source = sources(adapter, inputs["dataset"], word, which, inputs, ctx.max_rows)
    positions = default_positions(word, params.get("positions"))
    unit_ids = iv.units(word, adapter, params.get("component_index"))
    g = iv.grid(word, params.get("layers", "all"), positions, adapter.n_layers, unit_ids,
                int(pairs.clean_ids.shape[1]))

    clean_logits, m_clean, m_corr = iv.baselines(adapter, pairs, metric, ctx.max_rows)
    per_prompt = iv.sweep(adapter, pairs, kind, source, g, metric, base, clean_logits, ctx.max_rows)
    patched = per_prompt.mean(1)
    clean_mean, corr_mean = m_clean.mean().item(), m_corr.mean().item()
    effect = metrics.normalise(patched, clean_mean, corr_mean)

    cols = iv.table_columns(word, g, positions)
    cols.update(effect=effect.tolist(), patched=patched.tolist())
    shape = g.shape
    return Artifact(
        tensors={"effect": effect.float().view(shape).contiguous(), "patched": patched.float().view(shape).contiguous(),
                 "per_prompt": per_prompt.float().view(*shape, pairs.n).contiguous(),
                 "clean": m_clean.float(), "corrupted": m_corr.float()},
        tables={"result": pl.DataFrame(cols)},
        data={"component": word, "site": iv.component(word).kind, "direction": direction, "metric": metric,
              "positions": positions, "axes": g.axes, "shape": shape,
              "clean_mean": clean_mean, "corrupted_mean": corr_mean, "chart": iv.chart_hints(g),
              "headline": [{"label": f"{metric}, clean", "value": clean_mean},
                           {"label": f"{metric}, corrupted", "value": corr_mean,
                            "detail": "effect = (patched - corrupted) / (clean - corrupted)"}, {"label": "direction", "value": direction}],},
    )
