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

Components (the site vocabulary, `stdlib/models/sites.py`): heads = attn.hook_z per head; q per
head; k and v per key/value head (fewer than heads under grouped-query attention);
pattern per head (query rows; written exactly through z = pattern @ v); neurons = mlp.hook_post
per neuron (`neurons 10..20 in layer 2`); resid / resid_pre, resid_mid, resid_post; attn /
attn_out = hook_attn_out; mlp / mlp_out = hook_mlp_out. Defaults: per-head and per-neuron
components at all positions at once, the others at each position.

Activations are captured once per (model, dataset, site kind, clean or corrupted) by a shared
`capture` node; a pattern patch also reads the base run's values (a `v` capture).
"""

from __future__ import annotations

from typing import Any

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib import interventions as iv
from mechstudy.stdlib.datasets import Pairs
from mechstudy.stdlib.models.sites import component, words

COMPONENTS = words(lambda k: k.per_layer and k.write is not None)


def runs(direction: str) -> tuple[str, str]:
    """(the run whose activations are patched in, the run they are patched into)."""
    return ("clean", "corrupted") if direction == "denoising" else ("corrupted", "clean")


def captures(params: dict) -> dict[str, tuple[str, str]]:
    """Input name -> (site kind, clean | corrupted) of the captures a patch statement reads."""
    which, base = runs(params["direction"])
    kind = component(params["component"]).kind.name
    out = {"source": (kind, which)}
    if kind == "pattern":  # z = pattern @ v needs the values of the run being patched
        out["values"] = ("v", base)
    return {**out, **iv.resume_captures(params, base)}


@spec.operator(
    "patch",
    version=2,
    verb="patch",
    components=COMPONENTS,
    params=[
        Param("component", str, choices=COMPONENTS, doc="what to patch"),
        Param("component_index", list, None, minimum=0, nonempty=True, doc="heads or neurons to sweep (`neurons 10..20`); default all"),
        Param("layers", spec.LAYERS, "all", doc="layers to sweep"),
        Param("positions", spec.POSITIONS, None, doc="default: all (per head / neuron), each (the others)"),
        Param("model", spec.MODEL),
        Param("dataset", spec.DATASET),
        Param("metric", spec.METRIC, "logit_diff", doc="logit_diff, prob, kl, loss or prob_diff"),
        Param("direction", str, "denoising", choices=("denoising", "noising"),
              doc="denoising: clean into corrupted; noising: corrupted into clean"),
    ],
    output="table",
    plan=lambda params, b: iv.plan_sweep("patch", params, b, captures(params)),
    uses_model=True,
    default_chart="heatmap",
    requires=frozenset({"corrupted"}),
    model_features=frozenset({"causal", "lm_head"}),
    result_keys=lambda p: iv.key_columns(p["component"], p.get("positions")),
    example="patch heads in all layers of m on ioi with logit_diff",
)
def run(inputs: dict[str, Artifact], params: dict, ctx: Any) -> Artifact:
    """Activation patching of heads, q/k/v, patterns, neurons, resid, attn or mlp: effect and raw metric."""
    adapter = ctx.model(inputs["model"])
    dataset = inputs["dataset"]
    pairs = Pairs.of(dataset)
    word, metric, direction = params["component"], params["metric"], params["direction"]
    which, base = runs(direction)
    acts = {name: iv.read_or_capture(inputs, name, adapter, dataset, kind, w, ctx.max_rows)
            for name, (kind, w) in captures(params).items()}
    source = iv.source_values(word, acts["source"], acts.get("values"), adapter.n_heads)
    positions = iv.default_positions(word, params["positions"])
    unit_ids = iv.units(word, adapter, params["component_index"])
    g = iv.grid(word, params["layers"], positions, adapter.n_layers, unit_ids, int(pairs.clean_ids.shape[1]))
    clean_logits, m_clean, m_corr = iv.read_baselines(inputs, adapter, pairs, metric, ctx.max_rows)
    per_prompt = iv.sweep(adapter, pairs, iv.write_kind(word), source, g, metric, base, clean_logits,
                          iv.rows(ctx, pairs), resume=acts.get("resume"), replay=acts.get("replay"))
    return iv.sweep_result(word, g, positions, per_prompt, m_clean, m_corr, "patched",
                           {"component": word, "site": component(word).kind.name, "direction": direction,
                            "metric": metric, "positions": positions}, headline={"direction": direction})
