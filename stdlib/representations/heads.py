"""Per-head attention scores from attention patterns, and per-position losses for the in-context
learning score.

For patterns A [N, H, S, S] (query, key) over token ids [N, S] with a mask of real tokens, each
score is the mean over the (row, query) pairs it is defined on:

- ``previous_token``: A[q, q-1], queries q >= 1;
- ``first_token``: A[q, 0] (the first token, usually BOS), queries q >= 1;
- ``self``: A[q, q], queries q >= 1;
- ``duplicate_token``: the attention on earlier positions holding the query's own token, over
  queries whose token occurred before;
- ``prefix_matching``: the attention on positions just after an earlier occurrence of the query's
  token (the token an induction head attends to, Olsson et al. 2022), over queries whose token
  occurred before at a position k with k + 1 < q.

On repeated random tokens ``[BOS][r_1..r_n][r_1..r_n]`` prefix matching is the attention from r_i's
second occurrence to r_{i+1}'s first, the usual induction score.

>>> A = torch.zeros(1, 1, 4, 4); A[0, 0, 1, 0] = A[0, 0, 2, 1] = 1; A[0, 0, 3, 2] = 1; A[0, 0, 0, 0] = 1
>>> s = head_scores(A, torch.tensor([[9, 5, 6, 5]]), torch.ones(1, 4, dtype=torch.bool))
>>> s["previous_token"].item(), s["prefix_matching"].item(), s["duplicate_token"].item()
(1.0, 1.0, 0.0)
"""

from __future__ import annotations

import torch

SCORES = ("previous_token", "first_token", "self", "duplicate_token", "prefix_matching")


def targets(ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Bool [N, S, S] (query, key) masks of what each score reads, and [N, S] masks of the queries
    it is defined on (`<name>_q`)."""
    N, S = ids.shape
    real = mask.bool()
    q = torch.arange(S)[:, None]
    k = torch.arange(S)[None, :]
    pair = real[:, :, None] & real[:, None, :]
    same = (ids[:, :, None] == ids[:, None, :]) & pair & (k < q)  # [N, q, k]: an earlier occurrence at k
    nxt = torch.zeros_like(same)
    nxt[:, :, 1:] = same[:, :, :-1] & (k[:, 1:] < q)  # key k+1 follows an earlier occurrence, and k+1 < q
    later = real & (torch.arange(S)[None] >= 1)
    out = {
        "previous_token": (k == q - 1)[None] & pair, "first_token": (k == 0)[None] & pair,
        "self": (k == q)[None] & pair, "duplicate_token": same, "prefix_matching": nxt,
    }
    qs = {"previous_token": later, "first_token": later, "self": later,
          "duplicate_token": same.any(-1), "prefix_matching": nxt.any(-1)}
    return {**out, **{f"{name}_q": v for name, v in qs.items()}}


def head_scores(pattern: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each score per head [H] (NaN when no query qualifies), from one layer's pattern [N, H, S, S]."""
    t = targets(ids, mask)
    A = pattern.double()
    out = {}
    for name in SCORES:
        w = (A * t[name][:, None]).sum(-1)  # [N, H, S]
        qm = t[f"{name}_q"][:, None].double()  # [N, 1, S]
        n = qm.sum()
        out[name] = (w * qm).sum((0, 2)) / n if n > 0 else torch.full((A.shape[1],), float("nan"), dtype=torch.float64)
    return out


ANSWER_SCORES = ("to_io", "to_s1", "to_s2")


def answer_attention(pattern: torch.Tensor, ids: torch.Tensor, read_pos: torch.Tensor, io_id: torch.Tensor,
                     s_id: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per head [H], the attention from the position a prompt is read at (IOI: the answer position)
    to the indirect object's mentions (``to_io``), the subject's first mention (``to_s1``) and its
    last one before the read position (``to_s2``), averaged over the prompts where that token occurs
    before the read position and S occurs at least twice for ``to_s2`` (NaN when none does).

    >>> A = torch.zeros(1, 1, 5, 5); A[0, 0, 4] = torch.tensor([0.0, 0.1, 0.2, 0.7, 0.0])
    >>> r = answer_attention(A, torch.tensor([[0, 7, 8, 7, 9]]), torch.tensor([4]), torch.tensor([8]), torch.tensor([7]))
    >>> [round(r[k].item(), 2) for k in ANSWER_SCORES]
    [0.2, 0.1, 0.7]
    """
    N, H, S, _ = pattern.shape
    rows = pattern.double()[torch.arange(N), :, read_pos]  # [N, H, key]
    before = torch.arange(S)[None] < read_pos[:, None]
    at_io = (ids == io_id[:, None]) & before
    at_s = (ids == s_id[:, None]) & before
    first = at_s & (at_s.cumsum(1) == 1)
    last = at_s & (at_s.cumsum(1) == at_s.sum(1, keepdim=True)) & (at_s.sum(1, keepdim=True) >= 2)
    out = {}
    for name, where in (("to_io", at_io), ("to_s1", first), ("to_s2", last)):
        ok = where.any(1)
        w = (rows * where[:, None].double()).sum(-1)  # [N, H]
        out[name] = w[ok].mean(0) if ok.any() else torch.full((H,), float("nan"), dtype=torch.float64)
    return out


def accumulate(total: dict[str, torch.Tensor], counts: dict[str, float], pattern: torch.Tensor, ids: torch.Tensor,
               mask: torch.Tensor) -> None:
    """Add one chunk's sums (per head) and query counts to running totals (for chunked datasets)."""
    t = targets(ids, mask)
    A = pattern.double()
    for name in SCORES:
        qm = t[f"{name}_q"][:, None].double()
        s = ((A * t[name][:, None]).sum(-1) * qm).sum((0, 2))
        total[name] = total.get(name, 0) + s
        counts[name] = counts.get(name, 0.0) + float(qm.sum())


def token_losses(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss [N, S-1] in nats of predicting token p+1 at position p, bool [N, S-1] where both are real)."""
    lp = torch.log_softmax(logits.double(), -1)
    nll = -lp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
    ok = mask[:, :-1].bool() & mask[:, 1:].bool()
    return torch.where(ok, nll, torch.zeros((), dtype=nll.dtype)), ok


def icl_positions(width: int) -> tuple[list[int], list[int]]:
    """The early and late prediction positions of the in-context learning score for rows of `width`
    tokens: bands around 50/512 and 500/512 of the row (Olsson et al. compare the 50th and the 500th
    token of 512), each max(1, width // 20) positions wide.

    >>> icl_positions(512)
    ([37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61], [486, 487, 488, 489, 490, 491, 492, 493, 494, 495, 496, 497, 498, 499, 500, 501, 502, 503, 504, 505, 506, 507, 508, 509, 510])
    """
    last = width - 2  # the last position that predicts a token
    w = max(1, width // 20)

    def band(centre: float) -> list[int]:
        lo = min(max(0, round(centre) - w // 2), max(0, last - w + 1))
        return list(range(lo, min(last, lo + w - 1) + 1))

    return band(49 / 511 * last), band(499 / 511 * last)
