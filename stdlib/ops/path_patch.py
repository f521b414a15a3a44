"""`patch path from heads in layer 2 to heads in layer 3 of m on ioi with logit_diff`: path patching.

Path patching (Wang et al., 2022) measures how much of a sender's effect flows into chosen
receivers directly, with every other path held fixed. For each sender (one variant: a head, a
layer's whole attention, or an MLP; at all positions or per position):

1. run the base prompts with the sender's activation taken from the source run and every other
   attention head frozen to its base-run output (z) at every layer; MLPs are recomputed, as in
   Wang et al. (`freeze_mlps=true` freezes them too); read the receivers' inputs there;
2. run the base prompts again with only the receivers' inputs (their q, k and v, or just the one
   named) replaced by the values read in step 1, at the receiver positions, and everything else
   computed normally; measure the metric.

With no receiver (`patch path from heads in all layers of m on ioi` or `... to logits`), the
metric is read from step 1 itself: the sender's effect on the logits through the direct path (and
through the MLPs when they are not frozen), with every other head frozen.

Direction: noising (default, as in Wang et al.) runs the clean prompts with senders from the
corrupted run; denoising the reverse. Effect = (m - m_corrupted) / (m_clean - m_corrupted), as for
`patch`: with noising, 1 = the path does not matter and lower values mark important paths. The
raw metric is reported as `patched`.

Statement parts: `from COMPONENT [INDEX] [in LAYERS] [at POSITIONS]` with COMPONENT any kind that
writes to the residual stream (the vocabulary's `residual_write`): heads (each head a variant;
`heads [0, 3]` sweeps those), attn (a layer's whole attention output) or mlp, default all layers
and all positions at once (`at every position` sweeps positions too); and `to COMPONENT [INDEX]
in LAYERS [at POSITIONS]` with COMPONENT heads (their q, k and v; under grouped-query attention
the key/value heads those query heads read), q, k or v (the vocabulary's `attn_input`; k and v
indices are key/value heads), or logits; positions there are one set patched at once (all,
last, or a list).
Both steps of every (sender, prompt) row run batched, `ctx.max_rows` rows per forward.
"""

from __future__ import annotations

from typing import Any

import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib import interventions as iv
from mechstudy.stdlib import metrics
from mechstudy.stdlib.datasets import Pairs
from mechstudy.stdlib.interventions import ALL, LAST
from mechstudy.stdlib.models.base import Adapter, Edit
from mechstudy.stdlib.models.batching import chunks
from mechstudy.stdlib.models.sites import Site, component, words

SENDERS = words(lambda k: k.per_layer and k.residual_write)
ATTN_INPUTS = words(lambda k: k.per_layer and k.attn_input)
RECEIVERS = ("heads", *ATTN_INPUTS, "logits")


def receiver_kinds(word: str) -> tuple[str, ...]:
    """The site kinds a receiver word reads: heads -> their q, k and v; q, k, v -> themselves."""
    if word == "heads":
        return tuple(component(w).kind.name for w in ATTN_INPUTS)
    return (component(word).kind.name,)


def sender_of(params: dict) -> dict:
    s = dict(params["sender"] or {})
    word = s.get("component", "heads")
    if word not in SENDERS:
        raise ValueError(f"a path's sender is one of {', '.join(SENDERS)}, not {word!r}")
    return {"component": word, "layers": s.get("layers", "all"), "positions": s.get("positions", "all"),
            "index": s.get("component_index")}


def receiver_of(params: dict) -> dict | None:
    r = params["receiver"]
    if not r or r.get("component") == "logits":
        return None
    word = r.get("component", "heads")
    if word not in RECEIVERS:
        raise ValueError(f"a path's receiver is one of {', '.join(RECEIVERS)}, not {word!r}")
    return {"component": word, "layers": r.get("layers", "all"), "positions": r.get("positions", "all"),
            "index": r.get("component_index")}


def _pos_mask(spec_pos: Any, apos: torch.Tensor, width: int) -> torch.Tensor:
    """[B, S] bool of a receiver position set: "all", "last" or a list of positions."""
    ar = torch.arange(width, device=apos.device)[None]
    if spec_pos == "all":
        return torch.ones(apos.shape[0], width, dtype=torch.bool, device=apos.device)
    if spec_pos == "last":
        return ar == apos[:, None]
    pos = torch.tensor([int(x) for x in spec_pos], dtype=torch.long, device=apos.device)
    return (ar[..., None] == pos).any(-1).expand(apos.shape[0], width)


def receiver_units(adapter: Adapter, word: str, index: list[int] | None, kind: str) -> torch.Tensor:
    """[units of `kind`] bool: the receiver's heads of that kind. For `heads`, `index` names query
    heads, and a key/value kind takes the key/value heads they read (h // group under GQA)."""
    n = Site(0, kind).spec.n_units(adapter.dims)
    chosen = list(range(adapter.n_heads if word == "heads" else n)) if index is None else list(index)
    if word == "heads" and n != adapter.n_heads:
        chosen = sorted({h // (adapter.n_heads // n) for h in chosen})
    out = torch.zeros(n, dtype=torch.bool)
    out[torch.tensor(chosen, dtype=torch.long)] = True
    return out


def path_sweep(adapter: Adapter, pairs: Pairs, g: iv.Grid, send_kind: str, source: dict[int, torch.Tensor],
               base_z: dict[int, torch.Tensor], base_mlp: dict[int, torch.Tensor] | None, recv: dict | None,
               metric: str, base: str, clean_logits: torch.Tensor, max_rows: int = 32) -> torch.Tensor:
    """Metric of every (sender variant, prompt) row, float64 [V, N] (steps 1-2 of the module doc)."""
    dev = adapter.device
    n, v = pairs.n, len(g)
    ids_all, mask_all, apos_all = pairs.ids(base).to(dev), pairs.attention_mask.to(dev), pairs.answer_pos.to(dev)
    var_layer, var_unit, var_pos = g.layer.to(dev), g.unit.to(dev), g.pos.to(dev)
    per_unit = Site(0, send_kind).spec.unit is not None
    units = torch.arange(Site(0, send_kind).spec.n_units(adapter.dims), device=dev)
    source = {l: source[l].to(dev) for l in torch.unique(var_layer).tolist()}
    base_z = {l: z.to(dev) for l, z in base_z.items()}
    base_mlp = {l: a.to(dev) for l, a in base_mlp.items()} if base_mlp is not None else None
    if recv is not None:
        r_sites = [(Site(l, k), receiver_units(adapter, recv["component"], recv["index"], k).to(dev))
                   for l in recv["layers"] for k in receiver_kinds(recv["component"])]
    out = torch.empty(v * n, dtype=torch.float64)
    for rows in chunks(v * n, max_rows):
        rows = rows.to(dev)
        vi, p = rows // n, rows % n
        width = int(apos_all[p].max()) + 1
        ids, mask, apos = ids_all[p, :width], mask_all[p, :width], apos_all[p]
        ar = torch.arange(width, device=dev)
        vpos = var_pos[vi][:, None]
        at_pos = (vpos == ALL) | ((vpos == LAST) & (ar[None] == apos[:, None])) | (ar[None] == vpos)  # [B, S]
        edits = []
        for l in range(adapter.n_layers):  # freeze: every head (and MLP) as in the base run
            edits.append(Edit(Site(l, "z"), base_z[l][p, :width]))
            if base_mlp is not None:
                edits.append(Edit(Site(l, "mlp_out"), base_mlp[l][p, :width]))
        for l in torch.unique(var_layer[vi]).tolist():  # then the sender, from the source run
            m = at_pos & (var_layer[vi] == l)[:, None]
            if per_unit:
                vu = var_unit[vi][:, None]
                m = m[:, :, None] & ((vu == -1) | (units[None] == vu))[:, None, :]
            edits.append(Edit(Site(l, send_kind), source[l][p, :width], mask=m[..., None]))
        if recv is None:
            logits = adapter.forward(ids, mask, edits=edits, logits_at=apos).logits
        else:
            acts = adapter.forward(ids, mask, edits=edits, capture=[s for s, _ in r_sites], logits=False).acts
            at = _pos_mask(recv["positions"], apos, width)
            patched = [Edit(s, acts[s], mask=(at[:, :, None] & heads[None, None, :])[..., None]) for s, heads in r_sites]
            logits = adapter.forward(ids, mask, edits=patched, logits_at=apos).logits
        out[rows.cpu()] = metrics.compute(metric, logits, pairs.data, p, iv.at_rows(clean_logits, p)).cpu()
    return out.view(v, n)


def runs(direction: str) -> tuple[str, str]:
    """(the run senders come from, the run everything else is frozen to)."""
    return ("corrupted", "clean") if direction == "noising" else ("clean", "corrupted")


def captures(params: dict) -> dict[str, tuple[str, str]]:
    """Capture inputs: name -> (site kind, clean | corrupted)."""
    which, base = runs(params["direction"])
    out = {"base_z": ("z", base), "source": (component(sender_of(params)["component"]).kind.name, which)}
    if params["freeze_mlps"]:
        out["base_mlp"] = ("mlp_out", base)
    return out


def _plan(params: dict, b: Any) -> Any:
    keyed = {**params, **iv.plan_captures(b, params, captures(params)), "baseline": iv.plan_baseline(b, params)}
    if receiver_of(params) is None:
        keyed["receiver"] = None  # `to logits` and no `to` at all are one computation, one node
    return b.node("path_patch", keyed)


@spec.operator(
    "path_patch",
    version=2,
    verb="patch",
    components=tuple(dict.fromkeys(("path", *SENDERS, *RECEIVERS))),
    params=[
        Param("component", str, "path", choices=("path",), doc="the word `path`"),
        Param("sender", dict, choices=SENDERS, doc="`from heads|attn|mlp [in LAYERS] [at POSITIONS]`"),
        Param("receiver", dict, None, choices=RECEIVERS,
              doc="`to heads|q|k|v [in LAYERS] [at POSITIONS]`, or `to logits` (the default)"),
        Param("model", spec.MODEL),
        Param("dataset", spec.DATASET),
        Param("metric", spec.METRIC, "logit_diff", doc="logit_diff, prob, kl, loss or prob_diff"),
        Param("direction", str, "noising", choices=("denoising", "noising"),
              doc="noising (Wang et al.): corrupted senders into the clean run; denoising the reverse"),
        Param("freeze_mlps", bool, False, doc="freeze MLP outputs too in step 1 (default: recomputed)"),
    ],
    output="table",
    plan=_plan,
    uses_model=True,
    default_chart="heatmap",
    requires=frozenset({"corrupted"}),
    model_features=frozenset({"causal", "lm_head"}),
    example="patch path from heads in layer 0 to heads in layer 1 of m on ioi with logit_diff",
)
def run(inputs: dict[str, Artifact], params: dict, ctx: Any) -> Artifact:
    """Path patching: each sender's effect through the receivers' q/k/v (or the logits), others frozen."""
    adapter = ctx.model(inputs["model"])
    dataset = inputs["dataset"]
    pairs = Pairs.of(dataset)
    metric, direction = params["metric"], params["direction"]
    base = runs(direction)[1]
    send, recv = sender_of(params), receiver_of(params)
    acts = {name: iv.read_or_capture(inputs, name, adapter, dataset, kind, which, ctx.max_rows)
            for name, (kind, which) in captures(params).items()}
    word = send["component"]
    unit_ids = iv.units(word, adapter, send["index"])
    if recv is not None:
        if recv["positions"] == "each":
            raise ValueError("a path's receivers are patched at one set of positions (all, last or a list), "
                             "not at every position separately")
        recv = {**recv, "layers": list(range(adapter.n_layers)) if recv["layers"] == "all" else list(recv["layers"])}
        if recv["index"] is not None:  # in range: query heads for `heads` and q, key/value heads for k, v
            iv.units(recv["component"], adapter, recv["index"])
    g = iv.grid(word, send["layers"], send["positions"], adapter.n_layers, unit_ids, int(pairs.clean_ids.shape[1]))
    clean_logits, m_clean, m_corr = iv.read_baselines(inputs, adapter, pairs, metric, ctx.max_rows)
    per_prompt = path_sweep(adapter, pairs, g, component(word).kind.name, acts["source"], acts["base_z"],
                            acts.get("base_mlp"), recv, metric, base, clean_logits, ctx.max_rows)
    return iv.sweep_result(word, g, send["positions"], per_prompt, m_clean, m_corr, "patched",
                           {"sender": send, "receiver": recv or {"component": "logits"}, "direction": direction,
                            "metric": metric, "freeze_mlps": bool(params["freeze_mlps"])},
                           headline={"direction": direction})
