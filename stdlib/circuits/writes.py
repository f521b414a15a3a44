"""Each component's write to the residual stream, computed through the native modules.

The z site is the input of the attention output projection, which is linear, so head h writes
``W_O(z with every other head zeroed) - W_O(0)`` (the projection's bias belongs to no head and is
written by the layer as a whole). Works for every architecture whose table maps z, grouped-query
attention included (z is per query head). Nothing here knows an architecture by name.
"""

from __future__ import annotations

from typing import Any

import torch


def head_outputs(adapter: Any, layer: int, z: torch.Tensor) -> torch.Tensor:
    """Each head's write to the residual stream, bias excluded.

    Args:
        z: [..., H, d_head], the layer's z (the input of its attention output projection).

    Returns:
        [..., H, d_model]; summed over heads plus the projection's bias it is `attn_out`.
    """
    proj = adapter.module(adapter.point("z").module, layer)
    n_heads = z.shape[-2]
    eye = torch.eye(n_heads, dtype=z.dtype, device=z.device)
    # blocks[..., h, g*d_head + j] = (h == g) * z[..., g, j]: head h alone, the others zeroed.
    blocks = (eye[:, :, None] * z[..., None, :, :]).flatten(-2)
    # .forward, not __call__: this may run inside the projection's own hooks, which must not fire.
    return proj.forward(blocks) - proj.forward(torch.zeros_like(blocks[..., :1, :]))


def attn_bias(adapter: Any, layer: int, like: torch.Tensor) -> torch.Tensor:
    """The attention output projection's bias (what it writes for z = 0), [d_model]."""
    proj = adapter.module(adapter.point("z").module, layer)
    width = adapter.n_heads * adapter.d_head
    return proj.forward(torch.zeros(width, dtype=like.dtype, device=like.device))


def require_residual_stream(adapter: Any, what: str) -> None:
    """A clear error for models whose stream is not a sum of writes (post-LN encoders); the checker
    refuses such statements first (`model_features`), this guards direct calls."""
    if "residual_stream" not in adapter.info.features or adapter.table.final_norm is None:
        raise LookupError(f"{what} needs a pre-norm residual stream ending in a final norm; "
                          f"{adapter.table.arch} models do not have one")
