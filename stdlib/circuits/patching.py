"""Sender outputs, and a forward in which chosen edges of the component graph carry corrupted values.

Removing the edge u -> v (ACDC) gives receiver v the input it has in the current run with sender u's
output swapped for u's output on the corrupted prompts::

    input_v = resid(current run) + sum over removed (u -> v) of (a_u(corrupted) - a_u(current))

The residual stream of the HF model is, by construction, the sum of every sender's actual output
(plus biases), so this is exactly "every edge carries the current value except the removed ones".
Receivers get their private inputs through pre-hooks on native modules: the final norm (logits),
the MLP's norm (only the MLP reads it; in a parallel block its input is the block's input) and,
for a head, its layer's attention module run again, natively, on the norm of the head's own input
(one extra attention call for all of a layer's patched heads, stacked along the batch), of which
only head h's z is kept. That works for every architecture the tables describe (fused or separate
q/k/v projections, rotary or learned positions, grouped-query attention: a head's private input
then also feeds a private copy of the key/value head it reads). Nothing of the forward is
re-implemented.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from mechstudy.stdlib.circuits.graph import ComponentGraph
from mechstudy.stdlib.circuits.writes import head_outputs
from mechstudy.stdlib.models.batching import chunks, trimmed
from mechstudy.stdlib.models.sites import Site


@dataclass
class Senders:
    """Every sender's output on some prompts: input [N, S, D], heads[L] [N, S, H, D], mlps[L] [N, S, D].
    Zero at padded positions."""

    input: torch.Tensor
    heads: list[torch.Tensor]
    mlps: list[torch.Tensor]

    def of(self, c: Any) -> torch.Tensor:
        """[N, S, D] output of a sender `Component`."""
        if c.kind == "input":
            return self.input
        if c.kind == "head":
            return self.heads[c.layer][:, :, c.head]
        return self.mlps[c.layer]

    def take(self, rows: torch.Tensor, width: int, device: Any = None) -> "Senders":
        def cut(t: torch.Tensor) -> torch.Tensor:
            return t[rows, :width].to(device) if device is not None else t[rows, :width]

        return Senders(cut(self.input), [cut(t) for t in self.heads], [cut(t) for t in self.mlps])

    def stacked(self) -> torch.Tensor:
        """[U, N, S, D] in the graph's sender order (input, then per layer heads and MLP)."""
        parts = [self.input[None]]
        for h, m in zip(self.heads, self.mlps):
            parts += [h.permute(2, 0, 1, 3), m[None]]
        return torch.cat(parts)


def sender_outputs(adapter: Any, ids: torch.Tensor, mask: torch.Tensor | None, max_rows: int = 32) -> Senders:
    """Every sender's output on these prompts (chunked forwards), on the CPU, in float32 or the
    model's dtype."""
    n, width = ids.shape
    n_layers = adapter.n_layers
    sites = [Site(0, "resid_pre")] + [Site(l, k) for l in range(n_layers) for k in ("z", "mlp_out")]
    emb = torch.zeros(n, width, adapter.d_model, dtype=adapter.dtype)
    heads = [torch.zeros(n, width, adapter.n_heads, adapter.d_model, dtype=adapter.dtype) for _ in range(n_layers)]
    mlps = [torch.zeros(n, width, adapter.d_model, dtype=adapter.dtype) for _ in range(n_layers)]
    with torch.no_grad():
        for rows in chunks(n, max_rows):
            i, m = trimmed(ids, mask, rows)
            acts = adapter.capture(i, m, sites)
            w = i.shape[1]
            emb[rows, :w] = acts[Site(0, "resid_pre")].cpu()
            for l in range(n_layers):
                heads[l][rows, :w] = head_outputs(adapter, l, acts[Site(l, "z")]).cpu()
                mlps[l][rows, :w] = acts[Site(l, "mlp_out")].cpu()
    if mask is not None:
        real = mask.bool()
        emb = emb * real[:, :, None]
        heads = [h * real[:, :, None, None] for h in heads]
        mlps = [m * real[:, :, None] for m in mlps]
    return Senders(emb, heads, mlps)


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args: tuple, kwargs: dict, new: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (new, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": new}


def _repeat_rows(value: Any, batch: int, k: int) -> Any:
    """Attention call arguments for k stacked copies of a batch: per-row tensors (first axis the
    batch, at least 2-D: masks, position embeddings, position ids) repeated k times; the rest kept."""
    if isinstance(value, torch.Tensor):
        return value.repeat(k, *([1] * (value.ndim - 1))) if value.ndim >= 2 and value.shape[0] == batch else value
    if isinstance(value, tuple):
        return tuple(_repeat_rows(v, batch, k) for v in value)
    return value


def patched_logits(adapter: Any, graph: ComponentGraph, ids: torch.Tensor,
                   mask: torch.Tensor | None, answer_pos: torch.Tensor,
                   removed: Mapping[int, Sequence[int]], corrupted: Senders) -> torch.Tensor:
    """Logits [B, V] at `answer_pos` with the edges in `removed` (receiver index -> sender indices)
    carrying `corrupted` (sender outputs for exactly these rows, width >= the batch's) values."""
    removed = {v: list(us) for v, us in removed.items() if us}
    table, n_layers, n_heads = adapter.table, adapter.n_layers, adapter.n_heads
    dev = adapter.device
    width = ids.shape[1]
    corrupted = Senders(corrupted.input[:, :width].to(dev), [h[:, :width].to(dev) for h in corrupted.heads],
                        [m[:, :width].to(dev) for m in corrupted.mlps])
    senders = [graph.senders[u] for us in removed.values() for u in us]
    need_heads = {c.layer for c in senders if c.kind == "head"}
    need_mlps = {c.layer for c in senders if c.kind == "mlp"}
    cur: dict[str, Any] = {"pre": {}, "heads": {}, "mlps": {}, "call": {}}
    inner: dict[str, Any] = {"on": False, "z": None}

    def current(c: Any) -> torch.Tensor:
        if c.kind == "input":
            return cur["pre"][0]
        if c.kind == "head":
            return cur["heads"][c.layer][:, :, c.head]
        return cur["mlps"][c.layer]

    def delta(v: int) -> torch.Tensor:
        return sum(corrupted.of(graph.senders[u]) - current(graph.senders[u]) for u in removed[v])

    hooks: list[tuple[torch.nn.Module, str, Any]] = []
    head_receivers: dict[int, list[int]] = {}
    for v in removed:
        r = graph.receivers[v]
        if r.kind == "head":
            head_receivers.setdefault(r.layer, []).append(v)

    for layer in range(n_layers):
        def keep_pre(mod, args, kwargs, layer=layer):
            if not inner["on"]:
                cur["pre"][layer] = _hidden(args, kwargs)

        hooks.append((adapter.module(adapter.point("resid_pre").module, layer), "pre", keep_pre))
        if layer in head_receivers:
            def keep_call(mod, args, kwargs, layer=layer):
                if not inner["on"]:
                    cur["call"][layer] = (args, kwargs)

            hooks.append((adapter.module(table.attention, layer), "pre", keep_call))
        if layer in need_heads or layer in head_receivers:
            def at_z(mod, args, kwargs, layer=layer):
                z = _hidden(args, kwargs)
                if inner["on"]:  # a private attention run of this layer: hand its z over
                    inner["z"] = z
                    return None
                vs = head_receivers.get(layer)
                if not vs:
                    if layer in need_heads:
                        cur["heads"][layer] = head_outputs(adapter, layer, z.unflatten(-1, (n_heads, -1)))
                    return None
                # Each patched head runs the layer's attention on the norm of its own input; all of
                # them at once, stacked along the batch. Only its own head's z is kept.
                batch, k = z.shape[0], len(vs)
                x = torch.cat([cur["pre"][layer] + delta(v) for v in vs])  # [k*B, S, D]
                a_args, a_kwargs = cur["call"][layer]
                normed = adapter.module(table.attn_norm, layer).forward(x)
                a_args = tuple(_repeat_rows(a, batch, k) for a in a_args)
                a_kwargs = {n: _repeat_rows(a, batch, k) for n, a in a_kwargs.items()}
                a_args, a_kwargs = _with_hidden(a_args, a_kwargs, normed)
                inner["on"] = True
                try:
                    adapter.module(table.attention, layer).forward(*a_args, **a_kwargs)
                finally:
                    inner["on"] = False
                fresh = inner["z"].unflatten(-1, (n_heads, -1)).unflatten(0, (k, batch))  # [k, B, S, H, dh]
                out = z.unflatten(-1, (n_heads, -1)).clone()
                for i, v in enumerate(vs):
                    h = graph.receivers[v].head
                    out[:, :, h] = fresh[i, :, :, h]
                if layer in need_heads:  # as senders, the heads write what they computed in this run
                    cur["heads"][layer] = head_outputs(adapter, layer, out)
                return _with_hidden(args, kwargs, out.flatten(-2))

            hooks.append((adapter.module(adapter.point("z").module, layer), "pre", at_z))
        if layer in need_mlps:
            def keep_mlp(mod, args, output, layer=layer):
                if not inner["on"]:
                    cur["mlps"][layer] = output[0] if isinstance(output, tuple) else output

            hooks.append((adapter.module(adapter.point("mlp_out").module, layer), "out", keep_mlp))
        v_mlp = graph.receiver_index(f"m{layer}")
        if v_mlp in removed:
            def mlp_in(mod, args, kwargs, v=v_mlp):
                return _with_hidden(args, kwargs, _hidden(args, kwargs) + delta(v))

            hooks.append((adapter.module(table.mlp_norm, layer), "pre", mlp_in))
    v_out = graph.receiver_index("logits")
    if v_out in removed:
        def final_in(mod, args, kwargs):
            return _with_hidden(args, kwargs, _hidden(args, kwargs) + delta(v_out))

        hooks.append((adapter.module(table.final_norm), "pre", final_in))

    with adapter._lock, torch.no_grad():
        handles = [m.register_forward_pre_hook(fn, with_kwargs=True) if kind == "pre" else m.register_forward_hook(fn)
                   for m, kind, fn in hooks]
        try:
            return adapter.forward(ids, mask, logits_at=answer_pos).logits
        finally:
            for h in handles:
                h.remove()


def run_patched(adapter: Any, graph: ComponentGraph, ids: torch.Tensor,
                mask: torch.Tensor | None, answer_pos: torch.Tensor, removed: Mapping[int, Sequence[int]],
                corrupted: Senders, max_rows: int = 32) -> torch.Tensor:
    """`patched_logits` over a whole dataset in chunks of `max_rows` rows: [N, V] in the model's dtype."""
    out = []
    for rows in chunks(ids.shape[0], max_rows):
        i, m = trimmed(ids, mask, rows)
        part = corrupted.take(rows, i.shape[1])
        out.append(patched_logits(adapter, graph, i, m, answer_pos[rows], removed, part))
    return torch.cat(out)
