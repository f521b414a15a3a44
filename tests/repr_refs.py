"""Slow, obviously correct references for the representation operators' tests (loops, no vectorising)."""

from __future__ import annotations

import torch

from mechstudy.stdlib.representations import heads as hs


def reference_scores(A: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, list[float]]:
    """Every score of every head by explicit loops over rows and queries."""
    N, H, S, _ = A.shape
    out = {name: [] for name in hs.SCORES}
    for h in range(H):
        acc = {name: [] for name in hs.SCORES}
        for n in range(N):
            L = int(mask[n].sum())
            for q in range(L):
                if q >= 1:
                    acc["previous_token"].append(float(A[n, h, q, q - 1]))
                    acc["first_token"].append(float(A[n, h, q, 0]))
                    acc["self"].append(float(A[n, h, q, q]))
                earlier = [k for k in range(q) if ids[n, k] == ids[n, q]]
                if earlier:
                    acc["duplicate_token"].append(sum(float(A[n, h, q, k]) for k in earlier))
                after = sorted({k + 1 for k in earlier if k + 1 < q})
                if after:
                    acc["prefix_matching"].append(sum(float(A[n, h, q, j]) for j in after))
        for name in hs.SCORES:
            out[name].append(sum(acc[name]) / len(acc[name]) if acc[name] else float("nan"))
    return out
