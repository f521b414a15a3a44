"""Measured behaviours of causal language models, read straight off Hugging Face forwards.

Induction (attn2, and mini's repeats): on ``[BOS][r_1..r_n][r_1..r_n]``

- prefix-matching score of a head: mean attention from the second copy's r_i (position n + i) to the
  token after r_i's first occurrence (position i + 1), over i = 1..n;
- previous-token score: mean attention from each position p >= 1 to p - 1;
- repeated-half loss: mean next-token loss on the second copy (targets r_2..r_n) against the first
  (targets r_1..r_n).

Tasks (mini), on the held-out sets of `evalsets`: IOI logit difference ``logit(IO) - logit(S)`` at the
last position and the share of prompts where it is positive; Greater-Than probability difference
``sum_{yy > YY} p(yy) - sum_{yy <= YY} p(yy)``; top-1 accuracy among a candidate set (factual recall,
sentiment, next day/month). Single-head ablation replaces one head's output by zero (or by its mean
over the prompts) just before the attention output projection and reports the change of a metric.

Models run on CPU in eval mode with eager attention; prompts of different lengths are left-padded
with an attention mask and explicit position ids, so padding never changes a number.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch

# ------------------------------------------------------------------------------------- induction


@torch.no_grad()
def attention_patterns(model: Any, ids: torch.Tensor) -> torch.Tensor:
    """Attention weights of every head: [layers, batch, heads, query, key]."""
    return torch.stack(model(input_ids=ids, output_attentions=True).attentions)


@torch.no_grad()
def induction_scores(model: Any, seqs: torch.Tensor) -> dict[str, Any]:
    """Prefix-matching and previous-token scores [layers][heads] and the per-half losses.

    Args:
        seqs: [batch, 1 + 2n] sequences ``[BOS][r][r]`` (see `corpus.repeated_random_tokens`).
    """
    n = (seqs.shape[1] - 1) // 2
    out = model(input_ids=seqs, output_attentions=True)
    pat = torch.stack(out.attentions)  # [L, B, H, Q, K]
    q = torch.arange(n + 1, 2 * n + 1)
    prefix = pat[:, :, :, q, q - n + 1].mean(dim=(1, 3))
    p = torch.arange(1, 2 * n + 1)
    prev = pat[:, :, :, p, p - 1].mean(dim=(1, 3))
    logp = out.logits.float().log_softmax(-1)
    nll = -logp[:, :-1].gather(-1, seqs[:, 1:, None])[..., 0]  # nll[:, t] predicts token t + 1
    return {
        "prefix_matching": prefix.tolist(),
        "previous_token": prev.tolist(),
        "loss_first_half": nll[:, :n].mean().item(),  # targets r_1..r_n
        "loss_repeated_half": nll[:, n + 1 :].mean().item(),  # targets r_2..r_n of the copy
    }


def best_head(scores: Sequence[Sequence[float]], layer: int | None = None) -> tuple[int, int, float]:
    """(layer, head, score) of the highest score, optionally within one layer."""
    cands = [(lay, h, s) for lay, row in enumerate(scores) for h, s in enumerate(row) if layer in (None, lay)]
    return max(cands, key=lambda c: c[2])


# ------------------------------------------------------------------------------ prompts -> logits


@torch.no_grad()
def last_logits(model: Any, prompts: Sequence[Sequence[int]], batch: int = 64) -> torch.Tensor:
    """Logits at each prompt's last token, [n_prompts, vocab]; prompts left-padded in batches."""
    rows = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i : i + batch]
        width = max(len(p) for p in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for r, p in enumerate(chunk):
            ids[r, width - len(p) :] = torch.tensor(p)
            mask[r, width - len(p) :] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        rows.append(model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1].float())
    return torch.cat(rows)


def ioi_metrics(logits: torch.Tensor, io: Sequence[int], s: Sequence[int]) -> dict[str, float]:
    """Mean logit difference IO - S and the share of prompts with IO above S."""
    diff = logits[torch.arange(len(io)), list(io)] - logits[torch.arange(len(s)), list(s)]
    return {"logit_diff": diff.mean().item(), "io_over_s": (diff > 0).float().mean().item()}


def greater_than_metrics(logits: torch.Tensor, start_yy: Sequence[int], yy_tokens: Sequence[int]) -> dict[str, float]:
    """Probability difference (Hanna et al.) with yy_tokens[i] the token of the suffix f"{i:02d}"."""
    probs = logits.softmax(-1)[:, list(yy_tokens)]  # [n, 100]
    later = torch.arange(100)[None, :] > torch.tensor(list(start_yy))[:, None]
    diff = (probs * later).sum(-1) - (probs * ~later).sum(-1)
    return {"prob_diff": diff.mean().item(), "positive_share": (diff > 0).float().mean().item(),
            "mass_on_years": probs.sum(-1).mean().item()}


def choice_accuracy(logits: torch.Tensor, answers: Sequence[int], candidates: Sequence[int]) -> dict[str, float]:
    """Top-1 accuracy among `candidates` (and over the whole vocabulary); chance is 1/len(candidates)."""
    cand = torch.tensor(list(candidates))
    picked = cand[logits[:, cand].argmax(-1)]
    answers_t = torch.tensor(list(answers))
    return {"accuracy": (picked == answers_t).float().mean().item(),
            "top1_vocab": (logits.argmax(-1) == answers_t).float().mean().item(),
            "chance": 1.0 / len(cand)}


# ------------------------------------------------------------------------------------- ablations


def attention_out_proj(model: Any, layer: int) -> torch.nn.Module:
    """The module whose input is the concatenation of one layer's head outputs (z)."""
    if hasattr(model, "transformer"):  # GPT-2
        return model.transformer.h[layer].attn.c_proj
    if hasattr(model, "gpt_neox"):  # GPT-NeoX (zoo small)
        return model.gpt_neox.layers[layer].attention.dense
    return model.model.layers[layer].self_attn.o_proj  # Llama


@contextlib.contextmanager
def head_replaced(model: Any, layer: int, head: int, value: torch.Tensor | None) -> Iterator[None]:
    """Within the block, head `head` of `layer` outputs `value` ([d_head], zero when None)."""
    d_head = model.config.hidden_size // model.config.num_attention_heads
    sl = slice(head * d_head, (head + 1) * d_head)

    def pre_hook(module: Any, args: tuple) -> tuple:
        z = args[0].clone()
        z[..., sl] = 0.0 if value is None else value
        return (z, *args[1:])

    handle = attention_out_proj(model, layer).register_forward_pre_hook(pre_hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def mean_head_outputs(model: Any, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
    """Each head's output z averaged over every real token of `prompts`: [layers, d_model]."""
    n_layers = model.config.num_hidden_layers
    sums = [torch.zeros(model.config.hidden_size) for _ in range(n_layers)]
    count = sum(len(p) for p in prompts)
    handles = []
    for layer in range(n_layers):
        def pre_hook(module: Any, args: tuple, layer: int = layer) -> None:
            sums[layer] += args[0].reshape(-1, args[0].shape[-1]).sum(0)
        handles.append(attention_out_proj(model, layer).register_forward_pre_hook(pre_hook))
    try:
        for p in prompts:  # one at a time: no padding enters the mean
            model(input_ids=torch.tensor([list(p)]))
    finally:
        for h in handles:
            h.remove()
    return torch.stack(sums) / count


def head_ablation_table(model: Any, prompts: Sequence[Sequence[int]], io: Sequence[int], s: Sequence[int],
                        mode: str = "zero") -> list[dict[str, float]]:
    """IOI logit difference with each single head ablated ("zero" or "mean"), one row per head."""
    base = ioi_metrics(last_logits(model, prompts), io, s)["logit_diff"]
    means = mean_head_outputs(model, prompts) if mode == "mean" else None
    d_head = model.config.hidden_size // model.config.num_attention_heads
    rows = []
    for layer in range(model.config.num_hidden_layers):
        for head in range(model.config.num_attention_heads):
            value = None if means is None else means[layer, head * d_head : (head + 1) * d_head]
            with head_replaced(model, layer, head, value):
                m = ioi_metrics(last_logits(model, prompts), io, s)
            rows.append({"layer": layer, "head": head, "logit_diff": round(m["logit_diff"], 4),
                         "effect": round(m["logit_diff"] - base, 4), "io_over_s": round(m["io_over_s"], 4)})
    return rows
