"""Text generation through the adapter, with edits (steering vectors, patched states): greedy and
seeded sampling.

Each step is one forward of the whole sequence so far through the native HF modules with the
edits applied (no key/value cache: what an edit changes at a position is recomputed every step,
and the models here are small). Rows of one call share a prompt length, so no padding is needed;
a caller generates one prompt at a time with every variant (condition x seed) as a row.

Sampling is reproducible per row: row r draws from its own `torch.Generator` seeded with
`seeds[r]`, so a row's continuation does not depend on which other rows share its batch.
`temperature` divides the logits; `top_k` > 0 keeps only the k most likely tokens.

>>> logits = torch.tensor([[0.0, 5.0, 1.0], [0.0, 5.0, 1.0]])
>>> sample_next(logits, [None, torch.Generator().manual_seed(0)], top_k=1).tolist()   # top_k=1 is greedy too
[1, 1]
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch


def sample_next(logits: torch.Tensor, gens: Sequence[torch.Generator | None], temperature: float = 1.0,
                top_k: int = 0) -> torch.Tensor:
    """Next token ids [B] from logits [B, V]: argmax where a row's generator is None, else a draw
    from softmax(logits / temperature) (restricted to the top_k) with that row's generator."""
    out = logits.argmax(-1)
    for r, g in enumerate(gens):
        if g is None:
            continue
        z = logits[r].double() / max(float(temperature), 1e-6)
        if top_k > 0:
            kth = z.topk(min(top_k, z.shape[-1])).values[-1]
            z = z.masked_fill(z < kth, -torch.inf)
        out[r] = torch.multinomial(torch.softmax(z, -1).cpu(), 1, generator=g)[0]
    return out


def generate(adapter: Any, prompt: Sequence[int], steps: int, seeds: Sequence[int | None],
             edits: Callable[[int], list] = lambda width: [], temperature: float = 1.0, top_k: int = 0,
             edits_at: Callable[[torch.Tensor], list] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Continue one prompt in len(seeds) rows for `steps` tokens.

    Args:
        prompt: token ids of the prompt.
        seeds: per row, None for greedy decoding or an int seed for sampling.
        edits: width -> the adapter Edits for a [rows, width] forward (e.g. steering added to some
            rows at every position).
        edits_at: or ids [rows, width] -> the Edits, for edits that depend on the tokens so far
            (e.g. a dictionary feature clamped: stdlib/ops/clamp.py).

    Returns:
        (tokens [rows, steps] generated, first_logits [rows, V] the logits after the prompt).
    """
    rows = len(seeds)
    ids = torch.tensor([list(prompt)] * rows, dtype=torch.long)
    gens = [None if s is None else torch.Generator().manual_seed(int(s)) for s in seeds]
    first = None
    out = []
    if edits_at is not None:
        edits = lambda width: edits_at(ids)  # noqa: E731  (reads `ids` as it grows)
    with torch.no_grad():
        for _ in range(steps):
            w = ids.shape[1]
            logits = adapter.forward(ids, None, edits=edits(w), logits_at=torch.full((rows,), w - 1)).logits.float().cpu()
            if first is None:
                first = logits
            nxt = sample_next(logits, gens, temperature, top_k)
            out.append(nxt)
            ids = torch.cat([ids, nxt[:, None]], 1)
    if first is None:  # steps == 0
        w = ids.shape[1]
        first = adapter.forward(ids, None, edits=edits(w), logits_at=torch.full((rows,), w - 1)).logits.float().cpu()
    return (torch.stack(out, 1) if out else torch.zeros(rows, 0, dtype=torch.long)), first
