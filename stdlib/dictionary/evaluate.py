"""Evaluating a dictionary on held-out text: reconstruction, sparsity, feature density, and the
model's next-token loss with the dictionary spliced in.

Per token (real tokens only):
    mse  = ||y^ - y||^2;  fvu = sum ||y^ - y||^2 / sum ||y - mean y||^2 (over all evaluated tokens)
    l0   = features active;  density_f = fraction of tokens where feature f is active
    dead = density 0 on the evaluated tokens;  dense = density > DENSE (a tenth of all tokens)
Language-model loss (mean next-token cross-entropy over real positions whose next token is real):
    clean (no edit), spliced (the written site replaced by the reconstruction, everywhere), zero (the
    written site replaced by zeros); recovered = (zero - spliced) / (zero - clean); kl = KL(clean ||
    spliced) of the next-token distributions, in nats.
The reconstruction is computed from the clean run's activations (a crosscoder's every layer too),
then written in one patched forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from mechstudy.stdlib.models.base import Edit
from mechstudy.stdlib.models.batching import chunks, trimmed
from mechstudy.stdlib.models.sites import Site

DENSE = 0.1


@dataclass
class Sites:
    """Where a dictionary reads (inputs, concatenated) and writes (outputs, split in order)."""

    inputs: list[Site]
    outputs: list[Site]


def _flat(a: torch.Tensor) -> torch.Tensor:
    return a.flatten(2)  # [B, S, ...] -> [B, S, width]


def _ce(logits: torch.Tensor, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-position next-token cross-entropy [B, S-1] (float64), zero where not valid."""
    lp = torch.log_softmax(logits[:, :-1].double(), -1)
    nll = -lp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    return nll * valid


@torch.no_grad()
def splice_eval(adapter: Any, sae: Any, sites: Sites, ids: torch.Tensor, mask: torch.Tensor, max_rows: int,
                progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """Sums over the rows of (ids, mask) [N, S]; see the module docstring for what they mean."""
    F = sae.shape.width
    fired = torch.zeros(F, dtype=torch.float64)
    acc = {k: 0.0 for k in ("se", "ss", "l0", "tokens", "ce_clean", "ce_spliced", "ce_zero", "kl", "pred")}
    sum_y = None
    sum_y2 = 0.0
    blocks = list(chunks(ids.shape[0], max_rows))
    for bi, rows in enumerate(blocks):
        i, m = trimmed(ids, mask, rows)
        real = m.bool()
        out = adapter.forward(i, m, capture=sorted(set(sites.inputs + sites.outputs)))
        x = torch.cat([_flat(out.acts[s]) for s in sites.inputs], -1).float()
        y = torch.cat([_flat(out.acts[s]) for s in sites.outputs], -1).float()
        f = sae.encode(x)
        y_hat = sae.decode(f)
        yr, yh, fr = y[real], y_hat[real], f[real]
        acc["se"] += float((yh - yr).pow(2).sum())
        sum_y = yr.double().sum(0) if sum_y is None else sum_y + yr.double().sum(0)
        sum_y2 += float(yr.double().pow(2).sum())
        acc["l0"] += float((fr > 0).sum())
        fired += (fr > 0).double().sum(0)
        acc["tokens"] += int(real.sum())
        valid = (real[:, :-1] & real[:, 1:]).double()
        edits, zero, a = [], [], 0
        for s in sites.outputs:
            w = out.acts[s].shape[2:]
            n = int(torch.tensor(w).prod()) if len(w) else 1
            edits.append(Edit(s, y_hat[..., a:a + n].reshape(out.acts[s].shape).to(adapter.dtype)))
            zero.append(Edit(s, torch.zeros((), dtype=adapter.dtype)))
            a += n
        clean = out.logits
        spliced = adapter.forward(i, m, edits=edits).logits
        zeroed = adapter.forward(i, m, edits=zero).logits
        acc["ce_clean"] += float(_ce(clean, i, valid).sum())
        acc["ce_spliced"] += float(_ce(spliced, i, valid).sum())
        acc["ce_zero"] += float(_ce(zeroed, i, valid).sum())
        lp, lq = torch.log_softmax(clean[:, :-1].double(), -1), torch.log_softmax(spliced[:, :-1].double(), -1)
        acc["kl"] += float(((lp.exp() * (lp - lq)).sum(-1) * valid).sum())
        acc["pred"] += float(valid.sum())
        if progress is not None:
            progress(bi + 1, len(blocks), "batches")
    n, p = max(acc["tokens"], 1), max(acc["pred"], 1)
    total_var = sum_y2 - float((sum_y.pow(2)).sum()) / n if sum_y is not None else 0.0
    density = fired / n
    ce = {k: acc[f"ce_{k}"] / p for k in ("clean", "spliced", "zero")}
    gap = ce["zero"] - ce["clean"]
    return {
        "tokens": int(acc["tokens"]), "mse": acc["se"] / n, "fvu": acc["se"] / total_var if total_var > 0 else float("nan"),
        "l0": acc["l0"] / n, "dead_fraction": float((density == 0).double().mean()),
        "dense_fraction": float((density > DENSE).double().mean()),
        "ce_clean": ce["clean"], "ce_spliced": ce["spliced"], "ce_zero": ce["zero"],
        "ce_recovered": (ce["zero"] - ce["spliced"]) / gap if gap != 0 else float("nan"),
        "kl": acc["kl"] / p, "density": density,
    }
