"""Batched interventions shared by `patch`, `ablate` and `path_patch`: planning their shared capture
nodes, reading captures, variant grids, one sweep that writes a per-prompt value into one
component per variant, and the result table they all report.

A statement's component word names a site kind (`sites.component`: heads -> z, neurons ->
mlp_post, resid -> resid_pre, ...) and the kind's record says everything else: what one variant
inside a layer is (a head, a key/value head, a neuron, or the whole site), the default positions,
how a value is written. Nothing here restates the vocabulary.

A pattern cannot be written inside HF's eager attention (no module sees it before it multiplies
the values), so patching head h's pattern rows to P is done exactly through its output instead
(the kind's `write` is "z"): z[q, h] = sum_k P[h, q, k] v[k, h], with v the run's own values at
that layer, which no edit of the same variant changes (everything a variant edits lies at or
after its layer's attention).

Every (variant, prompt) pair is one row; rows go through the model `max_rows` at a time with one
Edit per layer present in the chunk whose mask picks each row's (position, unit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

from mechstudy.engine.spec import Artifact
from mechstudy.stdlib import metrics
from mechstudy.stdlib.datasets import Pairs
from mechstudy.stdlib.models.base import REPLAY_KINDS, Adapter, Edit, Resume
from mechstudy.stdlib.models.batching import capture_dataset, chunks
from mechstudy.stdlib.models.sites import Site, component, default_positions, words  # noqa: F401 (re-exported)
from mechstudy.stdlib.ops import baseline as _baseline, capture as _capture  # noqa: F401 (the nodes planned here)

ALL, LAST = -1, -2  # position codes of a variant (>= 0: an absolute position)

# ---- planning ------------------------------------------------------------------------------


def plan_captures(b: Any, params: Mapping[str, Any], needs: Mapping[str, tuple[str, str]]) -> dict[str, Any]:
    """The shared `capture` nodes a statement reads: input name -> node, for `needs` mapping input
    names to (site kind, "clean" | "corrupted"). Every statement that needs the same activations of
    the same model on the same dataset gets the same node."""
    m, d = params["model"], params["dataset"]
    return {name: b.node("capture", {"site": kind, "which": which, "model": m, "dataset": d})
            for name, (kind, which) in needs.items()}


def plan_baseline(b: Any, params: Mapping[str, Any]) -> Any:
    """The shared `baseline` node of a statement: the metric on the clean and corrupted prompts of
    its model and dataset (one node per model, dataset and metric, whatever reads it)."""
    return b.node("baseline", {"model": params["model"], "dataset": params["dataset"],
                               "metric": params.get("metric") or "logit_diff"})


def plan_sweep(op: str, params: Mapping[str, Any], b: Any, needs: Mapping[str, tuple[str, str]]) -> Any:
    """The plan of a sweep statement (patch, ablate ...): its captures and its baseline, then its
    node, keyed with its positions spelled out (the component's default when none were given, so
    `patch heads` and `patch heads at all positions` are one node)."""
    keyed = {**params, **plan_captures(b, params, needs), "baseline": plan_baseline(b, params)}
    if "component" in params:
        keyed["positions"] = default_positions(params["component"], params.get("positions"))
    return b.node(op, keyed)


def resume_captures(params: Mapping[str, Any], base: str) -> dict[str, tuple[str, str]]:
    """The captures a sweep resumes its variants from (`sweep`'s `resume` and `replay`): the base
    run's resid_pre at every layer, and its z when the written kind lies after the attention's
    z (REPLAY_KINDS: the patched layer's attention is then not recomputed either). Nothing when
    no block can be skipped (every variant at layer 0 of a kind the attention computes)."""
    kind = write_kind(params["component"])
    replay = kind in REPLAY_KINDS
    layers = params.get("layers", "all")
    if not replay and layers not in (None, "all") and max(int(l) for l in layers) == 0:
        return {}
    return {"resume": ("resid_pre", base), **({"replay": ("z", base)} if replay else {})}


def read_or_capture(inputs: Mapping[str, Artifact], name: str, adapter: Adapter, dataset: Artifact, kind: str,
                    which: str, max_rows: int) -> dict[int, torch.Tensor]:
    """layer -> activation [N, ...] of one site kind on the clean or corrupted prompts: from the
    capture input `name` when the plan provided it, else captured now (an op run directly)."""
    art = inputs.get(name)
    named = art.tensors if art is not None else capture_dataset(adapter, dataset, kind, which, max_rows)
    return {l: torch.as_tensor(named[Site(l, kind).name]) for l in range(adapter.n_layers)}


# ---- the variant grid ----------------------------------------------------------------------


def units(word: str, adapter: Adapter, index: Sequence[int] | None) -> list[int]:
    """The units swept inside each layer: heads, key/value heads, neurons (all, or `index`), or
    [-1] (the whole site)."""
    kind = component(word).kind
    if kind.unit is None:
        if index:
            raise ValueError(f"component {word!r} takes no index")
        return [-1]
    n = kind.n_units(adapter.dims)
    out = list(range(n)) if index in (None, (), []) else [int(i) for i in index]
    bad = [i for i in out if not 0 <= i < n]
    if bad:
        raise ValueError(f"{kind.unit} {bad[0]} out of range: the model has {n} per layer for {word}")
    return out


@dataclass(frozen=True)
class Grid:
    """Variants, layer-major, then position, then unit, so `x.view(shape)` is the heatmap."""

    layer: torch.Tensor  # [V]
    unit: torch.Tensor  # [V] head / neuron, -1 = the whole site
    pos: torch.Tensor  # [V] ALL, LAST or >= 0
    axes: list[str]
    shape: list[int]

    def __len__(self) -> int:
        return int(self.layer.shape[0])


def grid(word: str, layers: Any, positions: Any, n_layers: int, unit_ids: list[int], width: int) -> Grid:
    """The sweep of one statement.

    >>> g = grid("heads", [1], "all", n_layers=2, unit_ids=[0, 1, 2, 3], width=10)
    >>> g.axes, g.shape, g.layer.tolist(), g.unit.tolist(), g.pos.tolist()
    (['layer', 'head'], [1, 4], [1, 1, 1, 1], [0, 1, 2, 3], [-1, -1, -1, -1])
    >>> grid("resid", "all", [3, 5], n_layers=2, unit_ids=[-1], width=10).pos.tolist()
    [3, 5, 3, 5]
    """
    lays = list(range(n_layers)) if layers in (None, "all") else [int(l) for l in layers]
    bad = [l for l in lays if not 0 <= l < n_layers]
    if bad:
        raise ValueError(f"layer {bad[0]} out of range: the model has {n_layers} layers")
    positions = default_positions(word, positions)
    if positions == "all":
        pos, pos_axis = [ALL], False
    elif positions == "last":
        pos, pos_axis = [LAST], False
    elif positions == "each":
        pos, pos_axis = list(range(width)), True
    else:
        pos, pos_axis = [int(p) for p in positions], True  # past every prompt's end: a no-op column
        if any(p < 0 for p in pos):
            raise ValueError(f"positions must be >= 0, got {pos}")
    unit = component(word).unit
    rows = [(l, p, u) for l in lays for p in pos for u in unit_ids]
    t = torch.tensor(rows, dtype=torch.long).view(-1, 3)
    axes = ["layer"] + (["position"] if pos_axis else []) + ([unit] if unit else [])
    shape = [len(lays)] + ([len(pos)] if pos_axis else []) + ([len(unit_ids)] if unit else [])
    return Grid(t[:, 0], t[:, 2], t[:, 1], axes, shape)


def pattern_as_z(pattern: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """z [N, S, H, d_head] that a head outputs with attention `pattern` [N, H, S, S] over values
    `v` [N, S, H, d_head] (eager attention: z = pattern @ v, per head; under grouped-query
    attention `v` must already be per query head)."""
    return torch.einsum("nhqk,nkhd->nqhd", pattern.to(v.dtype), v)


def values_per_query_head(v: torch.Tensor, n_heads: int) -> torch.Tensor:
    """v [N, S, KV, d_head] per key/value head -> [N, S, H, d_head] per query head (query head h
    reads key/value head h // (H / KV), as HF's repeat_kv)."""
    return v.repeat_interleave(n_heads // v.shape[2], dim=2) if v.shape[2] != n_heads else v


def write_kind(word: str) -> str:
    """The site kind a component's values are written at (a pattern is written through z)."""
    kind = component(word).kind
    return kind.name if kind.write == "self" else kind.write


def source_values(word: str, acts: dict[int, torch.Tensor], values: dict[int, torch.Tensor] | None,
                  n_heads: int) -> dict[int, torch.Tensor]:
    """What is written for a component, from its activations (a pattern becomes z = P @ v with the
    base run's values)."""
    if component(word).kind.name != "pattern":
        return acts
    return {l: pattern_as_z(p, values_per_query_head(values[l], n_heads)) for l, p in acts.items()}


# ---- the sweep -------------------------------------------------------------------------------


def rows(ctx: Any, pairs: Pairs) -> int:
    """Rows per forward of a sweep over `pairs`: the context's budget (`Context.rows_for`) for
    prompts of their mean length (chunks hold prompts of similar lengths, see `row_chunks`)."""
    return ctx.rows_for(int(pairs.attention_mask.sum(1).float().mean().ceil()))


def row_chunks(g: Grid, lengths: torch.Tensor, max_rows: int, by_layer: bool,
               sort: bool = True) -> list[tuple[int | None, torch.Tensor]]:
    """The (variant, prompt) rows of a sweep (row r = variant r // N, prompt r % N) in forward-sized
    chunks: [(layer or None, row ids)]. Rows are ordered by prompt length inside each chunk
    group, so a chunk trimmed to its longest prompt carries little padding; with `by_layer` a chunk
    holds one layer's variants only (so it can resume there, see `sweep`).

    >>> g = grid("heads", "all", "all", n_layers=2, unit_ids=[0, 1], width=4)
    >>> [(l, r.tolist()) for l, r in row_chunks(g, torch.tensor([3, 2]), 3, by_layer=True)]
    [(0, [1, 3, 0]), (0, [2]), (1, [5, 7, 4]), (1, [6])]
    """
    n = int(lengths.shape[0])
    rows = torch.arange(len(g) * n)
    length = lengths[rows % n]
    groups = [(int(l), rows[g.layer[rows // n] == l]) for l in torch.unique(g.layer).tolist()] if by_layer \
        else [(None, rows)]
    out = []
    for layer, members in groups:
        if sort:
            members = members[torch.argsort(length[members], stable=True)]
        out.extend((layer, members[i:i + max(1, int(max_rows))]) for i in range(0, len(members), max(1, int(max_rows))))
    return out


@torch.no_grad()
def sweep(adapter: Adapter, pairs: Pairs, kind: str, source: dict[int, torch.Tensor], g: Grid, metric: str,
          base: str, clean_logits: torch.Tensor, max_rows: int = 32,
          progress: Callable[[int, int], None] | None = None,
          resume: Mapping[int, torch.Tensor] | None = None,
          replay: Mapping[int, torch.Tensor] | None = None, plain: bool = False) -> torch.Tensor:
    """Metric of every (variant, prompt) row, float64 [V, N].

    Args:
        kind: the site kind written ("z", "q", "k", "v", "mlp_post", "resid_pre", ...).
        source: layer -> [N, S, ...] the value prompt i's rows get at that layer (full width; may
            be an expanded view, e.g. a mean).
        g: the variants; `unit` picks a unit of the kind's unit axis (head, key/value head or
            neuron), -1 everything.
        base: "clean" or "corrupted": the prompts every row runs.
        clean_logits: [N, V] clean answer logits (kl; None for a metric that does not read them).
        progress: called with (rows done, rows) after each chunk.
        resume: layer -> [N, S, d_model] the base run's resid_pre (zero-padded captures are
            fine): a variant patched at layer L then runs blocks L .. n-1 only, from the base
            run's residual at L (blocks before L are the base run's, unchanged by any edit at or
            after L). None runs every block.
        replay: layer -> [N, S, heads, d_head] the base run's z, with `resume`, for a kind in
            REPLAY_KINDS: the patched layer's attention is then its output projection of z
            (the base run's q, k, v and pattern are the patched run's there).
        plain: none of the shortcuts (rows in order, every block, full answer logits per chunk):
            the reference the shortcuts are tested and benchmarked against.
    """
    dev = adapter.device
    n, v = pairs.n, len(g)
    spec = Site(0, kind).spec
    ids_all, mask_all, apos_all = pairs.ids(base).to(dev), pairs.attention_mask.to(dev), pairs.answer_pos.to(dev)
    var_layer, var_unit, var_pos = g.layer.to(dev), g.unit.to(dev), g.pos.to(dev)
    n_units = spec.n_units(adapter.dims) if spec.unit else 0
    unit_ids = torch.arange(n_units, device=dev)
    neuron = spec.unit == "neuron"  # the unit is the last axis: no trailing axis to broadcast over
    source = {l: source[l].to(dev) for l in torch.unique(var_layer).tolist()}  # once, not per chunk
    by_layer = resume is not None and adapter.can_resume and not plain
    if by_layer:
        resume = {l: resume[l].to(dev) for l in torch.unique(var_layer).tolist()}
        replay = None if replay is None or kind not in REPLAY_KINDS or not adapter.can_replay else \
            {l: replay[l].to(dev) for l in torch.unique(var_layer).tolist()}
    out = torch.empty(v * n, dtype=torch.float64)
    # Logits only at the answer positions, unembedded many rows at a time, when the model's logits
    # are its unembedding of the final norm's output (every causal table with a final norm).
    unembed = _Unembed(adapter, pairs, metric, clean_logits, out, unembed_rows(adapter)) \
        if "ln_final" in adapter.table.points and adapter.model.get_output_embeddings() is not None and not plain \
        else None
    done = 0
    for start, rows in row_chunks(g, pairs.answer_pos, max_rows, by_layer, sort=not plain):
        rows = rows.to(dev)
        vi, p = rows // n, rows % n
        width = int(apos_all[p].max()) + 1  # trim the chunk to its longest prompt
        apos, ar = apos_all[p], torch.arange(width, device=dev)
        vpos = var_pos[vi][:, None]
        at_pos = (vpos == ALL) | ((vpos == LAST) & (ar[None] == apos[:, None])) | (ar[None] == vpos)  # [B, S]
        edits = []
        for layer in torch.unique(var_layer[vi]).tolist():
            m = at_pos & (var_layer[vi] == layer)[:, None]
            if n_units:
                vu = var_unit[vi][:, None]
                m = m[:, :, None] & ((vu == -1) | (unit_ids[None] == vu))[:, None, :]  # [B, S, U]
            value = source[layer][p, :width]
            edits.append(Edit(Site(layer, kind), value, mask=m if neuron else m[..., None]))
        at = None if start is None else \
            Resume(start, resume[start][p, :width], None if replay is None else replay[start][p, :width])
        if unembed is None:
            logits = adapter.forward(ids_all[p, :width], mask_all[p, :width], edits=edits, logits_at=apos,
                                     resume=at, only_at=None if plain else apos).logits
            out[rows.cpu()] = metrics.compute(metric, logits, pairs.data, p, at_rows(clean_logits, p)).cpu()
        else:
            h = adapter.forward(ids_all[p, :width], mask_all[p, :width], edits=edits, capture=[FINAL], logits=False,
                                resume=at, only_at=apos).acts[FINAL]
            unembed.add(rows, h[torch.arange(len(rows), device=dev), apos])
        done += len(rows)
        if progress is not None:
            progress(done, v * n)
    if unembed is not None:
        unembed.flush()
    return out.view(v, n)


FINAL = Site(None, "ln_final")


def at_rows(clean_logits: torch.Tensor | None, p: torch.Tensor) -> torch.Tensor | None:
    """The clean logits of prompts `p` (on p's device), or None when there are none."""
    return None if clean_logits is None else clean_logits.to(p.device)[p]


class _Unembed:
    """Answer-position logits of many rows at once: forwards stop at the final norm, and its
    outputs go through the model's own unembedding `rows` at a time (a [32, d] x [d, vocab]
    product reads the whole unembedding for little arithmetic; hundreds of rows share one read)."""

    def __init__(self, adapter: Adapter, pairs: Pairs, metric: str, clean_logits: torch.Tensor, out: torch.Tensor,
                 rows: int) -> None:
        self.adapter, self.pairs, self.metric, self.clean, self.out, self.rows = adapter, pairs, metric, clean_logits, out, rows
        self.ids: list[torch.Tensor] = []
        self.states: list[torch.Tensor] = []
        self.held = 0

    def add(self, rows: torch.Tensor, states: torch.Tensor) -> None:
        self.ids.append(rows)
        self.states.append(states)
        self.held += len(rows)
        if self.held >= self.rows:
            self.flush()

    def flush(self) -> None:
        if not self.ids:
            return
        rows, states = torch.cat(self.ids), torch.cat(self.states)
        self.ids, self.states, self.held = [], [], 0
        p = rows % self.pairs.n
        narrow = metrics.columns(self.metric, self.pairs.data, p) if self.adapter.can_unembed_columns else None
        if narrow is not None:  # a metric that reads a few tokens' logits (logit_diff): only those columns
            cols, data = narrow
            values = metrics.compute(self.metric, self.adapter.unembed(states, normed=True, columns=cols), data)
        else:
            clean = at_rows(self.clean, p) if metrics.METRIC_FNS[self.metric].needs_clean else None
            values = metrics.compute(self.metric, self.adapter.unembed(states, normed=True), self.pairs.data, p, clean)
        self.out[rows.cpu()] = values.cpu()


def unembed_rows(adapter: Adapter) -> int:
    """How many rows' final states one unembedding product takes (CPU: enough to make it
    compute-bound; a GPU: more, memory allowing)."""
    return 1024 if adapter.device.type == "cuda" else 256


def baselines(adapter: Adapter, pairs: Pairs, metric: str, max_rows: int) -> tuple[torch.Tensor, ...]:
    """(clean logits [N, V], metric on clean [N], metric on corrupted [N]) on the CPU."""
    from mechstudy.stdlib.ops.baseline import baselines as compute

    return compute(adapter, pairs, metric, max_rows)


def read_baselines(inputs: Mapping[str, Artifact], adapter: Adapter, pairs: Pairs, metric: str,
                   max_rows: int) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """(clean logits [N, V] or None when the metric does not read them, metric on clean [N], on
    corrupted [N]): from the shared `baseline` input when the plan provided it, else computed now."""
    art = inputs.get("baseline")
    if art is None:
        return baselines(adapter, pairs, metric, max_rows)
    t = art.tensors
    clean_logits = torch.as_tensor(t["clean_logits"]) if "clean_logits" in t else None
    return clean_logits, torch.as_tensor(t["clean"]).double(), torch.as_tensor(t["corrupted"]).double()


# ---- the result --------------------------------------------------------------------------


def table_columns(word: str, g: Grid, positions: Any) -> dict[str, list]:
    """The variant columns of a result table: layer, position (swept, or its one value), unit."""
    cols: dict[str, Any] = {"layer": g.layer.tolist()}
    unit = component(word).unit
    if "position" in g.axes:
        cols["position"] = g.pos.tolist()
    elif unit is None:
        cols["position"] = [positions] * len(g)  # one column: "all" or "last"
    if unit:
        cols[unit] = g.unit.tolist()
    return cols


def key_columns(word: str, positions: Any) -> tuple[str, ...]:
    """The key columns `table_columns` gives a statement's result table, from its params alone (for
    the checker: `compare` joins results on these). A position written as a word is one column of
    that word, told apart from a swept (numbered) position.

    >>> key_columns("heads", None), key_columns("resid", "each"), key_columns("attn", "last")
    (('layer', 'head'), ('layer', 'position'), ('layer', 'position=last'))
    """
    unit = component(word).unit
    positions = default_positions(word, positions)
    cols = ["layer"]
    if positions not in ("all", "last"):
        cols.append("position")
    elif unit is None:
        cols.append(f"position={positions}")
    if unit:
        cols.append(unit)
    return tuple(cols)


def chart_hints(g: Grid) -> dict:
    """Heatmap hints: facet by position when a per-unit grid is also swept over positions; the
    neuron axis on x."""
    hints: dict[str, Any] = {}
    if len(g.axes) == 3:
        hints["facet"] = "position"
    if "neuron" in g.axes:
        hints["x"] = "neuron"
    return hints


def sweep_result(word: str, g: Grid, positions: Any, per_prompt: torch.Tensor, m_clean: torch.Tensor,
                 m_corr: torch.Tensor, raw: str, data: Mapping[str, Any], extra: Mapping[str, Any] = (),
                 headline: Mapping[str, Any] = ()) -> Artifact:
    """The artifact every sweep reports.

    `effect` = (m - m_corrupted) / (m_clean - m_corrupted) on means over prompts; `raw` names the
    raw metric column ("patched", "ablated"); `extra` adds table columns computed from the raw
    means (name -> function of them). Tensors: effect and raw in the grid's shape, per_prompt
    [*shape, N], the clean and corrupted metric per prompt. data["headline"] (what the report shows
    beside the chart) holds the baselines and the convention, then `headline`'s label -> value items.
    """
    import polars as pl

    raw_mean = per_prompt.mean(1)
    clean_mean, corr_mean = m_clean.mean().item(), m_corr.mean().item()
    effect = metrics.normalise(raw_mean, clean_mean, corr_mean)
    cols = table_columns(word, g, positions)
    cols.update({"effect": effect.tolist(), raw: raw_mean.tolist()})
    cols.update({k: fn(raw_mean, clean_mean).tolist() for k, fn in dict(extra).items()})
    shape = g.shape
    return Artifact(
        tensors={"effect": effect.float().view(shape).contiguous(), raw: raw_mean.float().view(shape).contiguous(),
                 "per_prompt": per_prompt.float().view(*shape, per_prompt.shape[1]).contiguous(),
                 "clean": m_clean.float(), "corrupted": m_corr.float()},
        tables={"result": pl.DataFrame(cols)},
        data={**data, "axes": g.axes, "shape": shape, "clean_mean": clean_mean, "corrupted_mean": corr_mean,
              "chart": chart_hints(g),
              "headline": [{"label": f"{data['metric']}, clean", "value": clean_mean},
                           {"label": f"{data['metric']}, corrupted", "value": corr_mean,
                            "detail": f"effect = ({raw} - corrupted) / (clean - corrupted)"},
                           *({"label": k, "value": v} for k, v in dict(headline).items())]},
    )
