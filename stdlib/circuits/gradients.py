"""Metric gradients at sites and at the component graph's receiver inputs, by autograd.

Everything runs on the native HF modules through the adapter: a gradient at a site is the gradient
of an `Edit` that adds a zero leaf tensor there (so the forward is unchanged, bit for bit, and the
leaf's gradient is d metric / d activation), and each row's metric only depends on that row, so the
gradient of the summed metric holds every prompt's own gradient in its row.

A receiver's input gradient is a vector-Jacobian product inside the recorded graph:

- head (L, h): ``d metric / d z_L[:, :, h]`` pulled back to resid_pre L through the layer norm and
  head h's q, k and v only, i.e. the gradient at head h's private copy of its input;
- MLP L: ``d metric / d mlp_out_L`` pulled back to what the MLP reads (resid_mid L in a
  sequential block, resid_pre L in a parallel one) through the MLP's norm and the MLP only (the
  residual branch is not on that path);
- logits: ``d metric / d resid_post`` of the last layer (only the final norm and unembedding follow).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from mechstudy.stdlib.models.base import Edit
from mechstudy.stdlib.models.sites import Site


def attn_in_name(layer: int) -> str:
    return f"blocks.{layer}.hook_attn_in"


def mlp_in_name(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_in"


def logits_in_name(n_layers: int) -> str:
    return Site(n_layers - 1, "resid_post").name


def _leaf(adapter: Any, site: Site, batch: int, seq: int) -> torch.Tensor:
    return torch.zeros(adapter.shape(site, batch, seq), dtype=adapter.dtype, device=adapter.device,
                       requires_grad=True)


def _input_edits(input_value: torch.Tensor | None) -> list[Edit]:
    # Integrated gradients: the embeddings (resid_pre 0) replaced by a point on the path.
    return [] if input_value is None else [Edit(Site(0, "resid_pre"), input_value)]


Score = Callable[[torch.Tensor], torch.Tensor]  # answer-position logits [B, V] -> metric [B]


def site_gradients(adapter: Any, ids: torch.Tensor, mask: torch.Tensor | None, answer_pos: torch.Tensor,
                   score: Score, kind: str,
                   input_value: torch.Tensor | None = None) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """d metric_i / d activation at every layer's `kind` site, on this batch.

    Args:
        ids, mask: [B, S]; answer_pos: [B].
        score: the differentiable per-row metric of the answer-position logits (`scores.scorer`).
        kind: a writable site kind.
        input_value: [B, S, d_model] to replace the embeddings with (None: the real ones).

    Returns:
        ({layer: [B, S, ...] gradient, the site's shape}, metric values [B] float64, detached).
    """
    b, width = ids.shape
    leaves = {layer: _leaf(adapter, Site(layer, kind), b, width) for layer in range(adapter.n_layers)}
    edits = _input_edits(input_value) + [Edit(Site(l, kind), leaf, mode="add") for l, leaf in leaves.items()]
    out = adapter.forward(ids, mask, edits=edits, logits_at=answer_pos, grad=True)
    values = score(out.logits)
    grads = torch.autograd.grad(values.sum(), list(leaves.values()), allow_unused=True)
    return ({l: (g if g is not None else torch.zeros_like(leaves[l])).detach() for l, g in zip(leaves, grads)},
            values.detach())


def receiver_gradients(adapter: Any, ids: torch.Tensor, mask: torch.Tensor | None, answer_pos: torch.Tensor,
                       score: Score,
                       input_value: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """d metric_i / d (each receiver's private input) on this batch; see the module docstring.

    Returns:
        ({attn_in_name(L): [B, S, H, d_model], mlp_in_name(L): [B, S, d_model],
          logits_in_name(n_layers): [B, S, d_model]}, metric values [B] float64, detached).
    """
    n, b, width = adapter.n_layers, ids.shape[0], ids.shape[1]
    lz = [_leaf(adapter, Site(l, "z"), b, width) for l in range(n)]
    lm = [_leaf(adapter, Site(l, "mlp_out"), b, width) for l in range(n)]
    # Zero leaves at resid_pre make every layer's input part of the graph even when the
    # embeddings were replaced by a constant (integrated gradients) or parameters are frozen.
    lp = [_leaf(adapter, Site(l, "resid_pre"), b, width) for l in range(n)]
    last = _leaf(adapter, Site(n - 1, "resid_post"), b, width)
    edits = _input_edits(input_value)
    for l in range(n):
        edits += [Edit(Site(l, "resid_pre"), lp[l], mode="add"), Edit(Site(l, "z"), lz[l], mode="add"),
                  Edit(Site(l, "mlp_out"), lm[l], mode="add")]
    edits.append(Edit(Site(n - 1, "resid_post"), last, mode="add"))
    mlp_reads = "resid_pre" if adapter.parallel else "resid_mid"
    capture = list(dict.fromkeys(Site(l, k) for l in range(n) for k in ("resid_pre", "z", mlp_reads, "mlp_out")))
    out = adapter.forward(ids, mask, capture=capture, edits=edits, logits_at=answer_pos, grad=True)
    values = score(out.logits)
    g = torch.autograd.grad(values.sum(), lz + lm + [last], retain_graph=True)
    gz, gm, g_last = g[:n], g[n : 2 * n], g[-1]
    grads: dict[str, torch.Tensor] = {}
    for l in range(n):
        z, pre = out.acts[Site(l, "z")], out.acts[Site(l, "resid_pre")]
        per_head = []
        for h in range(adapter.n_heads):
            only_h = torch.zeros_like(gz[l])
            only_h[:, :, h] = gz[l][:, :, h]
            per_head.append(torch.autograd.grad(z, pre, grad_outputs=only_h, retain_graph=True)[0])
        grads[attn_in_name(l)] = torch.stack(per_head, dim=2).detach()
        mlp_out, mid = out.acts[Site(l, "mlp_out")], out.acts[Site(l, mlp_reads)]
        grads[mlp_in_name(l)] = torch.autograd.grad(mlp_out, mid, grad_outputs=gm[l], retain_graph=True)[0].detach()
    grads[logits_in_name(n)] = g_last.detach()
    return grads, values.detach()
