"""`induction`: repeated random tokens, the standard probe for induction heads (Olsson et al., 2022).

A sequence is ``[BOS][r_1 .. r_L][r_1 .. r_L]``: L distinct tokens drawn uniformly from the model's
vocabulary (special tokens never), then the same L tokens again. In the second copy a model with
induction heads predicts each r_{i+1} from the earlier "r_i r_{i+1}", which it cannot do in the
first copy. `ids` holds these full sequences (for losses and attention scores over both halves, with
`first_half` / `second_half` their positions); the clean/corrupted pairs that every metric and
patching operator read stop one token short:

- clean ``[BOS] r_1 .. r_L r_1 .. r_{L-1}``: the next token is r_L (``io_id``), known only by
  copying from position L of the first copy, with the prompt's last token as the answer position;
- corrupted, ``corrupt="first_half"`` (default): ``[BOS] q_1 .. q_L r_1 .. r_{L-1}``, the first copy
  replaced by L fresh tokens, so nothing can be copied: like IOI's ABC corruption, the corrupted
  run carries no information about the answer. ``s_id`` is q_L, the token in r_L's slot;
- corrupted, ``corrupt="answer"``: ``[BOS] r_1 .. r_{L-1} q_L r_1 .. r_{L-1}``, only the first
  occurrence of the answer replaced, so the corrupted run has an induction answer of its own,
  ``s_id`` = q_L, and clean and corrupted differ in one token.

Either way the clean prompts, `io_id` and `s_id` are the same (r and q are drawn together, 2L
distinct tokens per sequence), `logit_diff` is logit(r_L) - logit(q_L), and every row has the same
length, so a position means the same thing in every prompt (no padding; `attention_mask` is all ones).
The default length 20 is a copy offset the zoo model ``attn2`` never saw in training (it holds out
multiples of 10), and it fits the context of every model here.

``tokens="words"`` draws r and q from the one-token words of the stdlib's word lists instead of the
whole vocabulary: a model trained on a small corpus (the zoo's ``small``) never read most ids of its
byte-level vocabulary, whose embeddings stay untrained, and its induction heads are measured on
tokens it has read.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

import polars as pl
import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib.datasets import tokenizer_of

CORRUPTIONS = ("first_half", "answer")
TOKEN_SETS = ("all", "words")


def candidate_tokens(tokenizer: Any, vocab_min: int | None = None, vocab_max: int | None = None,
                     limit: int | None = None) -> list[int]:
    """Token ids in [vocab_min, vocab_max) that are not special tokens (BOS, EOS, pad, unk, ...).

    vocab_max defaults to the tokenizer's length, capped at `limit` (the model's vocabulary, which
    a tokenizer with added tokens can exceed)."""
    lo = 0 if vocab_min is None else vocab_min
    hi = len(tokenizer) if vocab_max is None else vocab_max
    if limit is not None:
        hi = min(hi, limit)
    special = set(tokenizer.all_special_ids)
    return [t for t in range(max(lo, 0), hi) if t not in special]


def word_tokens(tokenizer: Any) -> list[int]:
    """Ids of the one-token words of the stdlib's word lists (IOI names, places and objects,
    Greater-Than nouns, the zoo corpus's filler words), each with its leading space, in this
    tokenizer: tokens a model trained on text has read, unlike many ids of a byte-level vocabulary."""
    from mechstudy.stdlib.zoo import corpus as zc

    return zc.one_token_words(lambda text: tokenizer.encode(text, add_special_tokens=False))


def bos_id(tokenizer: Any) -> int:
    tid = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if tid is None:
        raise ValueError("induction: the tokenizer has no BOS or EOS token; use prepend_bos=false")
    return int(tid)


def generate(tokenizer: Any, n: int = 32, length: int = 20, seed: int = 0, vocab_min: int | None = None,
             vocab_max: int | None = None, prepend_bos: bool = True, corrupt: str = "first_half",
             limit: int | None = None, tokens: str = "all") -> Artifact:
    """Build `n` repeated-token sequences and their clean/corrupted prompts (see the module docstring).

    Args:
        limit: the model's vocabulary size; token ids at or above it are never drawn.
    """
    if n < 1:
        raise ValueError("induction: n must be at least 1")
    if length < 2:
        raise ValueError(f"induction: length must be at least 2 (got {length})")
    if corrupt not in CORRUPTIONS:
        raise ValueError(f"induction: corrupt must be one of {', '.join(CORRUPTIONS)}; got {corrupt!r}")
    if tokens not in TOKEN_SETS:
        raise ValueError(f"induction: tokens must be one of {', '.join(TOKEN_SETS)}; got {tokens!r}")
    cands = candidate_tokens(tokenizer, vocab_min, vocab_max, limit)
    if tokens == "words":
        allowed = set(cands)
        cands = [t for t in word_tokens(tokenizer) if t in allowed]
    if len(cands) < 2 * length:
        what = "one-token words" if tokens == "words" else "non-special tokens"
        raise ValueError(f"induction: only {len(cands)} {what} in [{vocab_min}, {vocab_max}); "
                         f"length={length} needs {2 * length} distinct ones")
    rng = random.Random(seed)
    head = [bos_id(tokenizer)] if prepend_bos else []
    b, L = len(head), length
    full, clean, corrupted, rows = [], [], [], []
    for i in range(n):
        toks = rng.sample(cands, 2 * L)  # distinct: each r_i occurs once per copy, q shares none of them
        r, q = toks[:L], toks[L:]
        first = q if corrupt == "first_half" else r[:-1] + [q[-1]]
        full.append(head + r + r)
        clean.append(head + r + r[:-1])
        corrupted.append(head + first + r[:-1])
        rows.append({"row": i, "tokens": r, "answer": r[-1], "wrong": q[-1],
                     "answer_text": tokenizer.decode([r[-1]]), "wrong_text": tokenizer.decode([q[-1]])})
    clean_ids = torch.tensor(clean, dtype=torch.long)
    width = clean_ids.shape[1]
    tensors = {
        "clean_ids": clean_ids,
        "corrupted_ids": torch.tensor(corrupted, dtype=torch.long),
        "attention_mask": torch.ones_like(clean_ids),
        "answer_pos": torch.full((n,), width - 1, dtype=torch.long),
        "io_id": torch.tensor([row["answer"] for row in rows], dtype=torch.long),
        "s_id": torch.tensor([row["wrong"] for row in rows], dtype=torch.long),
        "ids": torch.tensor(full, dtype=torch.long),
        "first_half": torch.arange(b, b + L),
        "second_half": torch.arange(b + L, b + 2 * L),
    }
    data = {"n": n, "length": L, "seed": seed, "prepend_bos": prepend_bos, "corrupt": corrupt,
            "vocab_min": vocab_min, "vocab_max": vocab_max, "tokens": tokens, "candidates": len(cands), "padding": "none",
            "max_len": int(width)}
    return Artifact(tensors=tensors, tables={"prompts": pl.DataFrame(rows)}, data=data)


def second_half_targets(ids: torch.Tensor, second_half: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions, targets) of the second copy's predictable tokens: the logits at position p
    predict ids[:, p + 1], for p = second_half[0] .. second_half[-1] - 1 (targets r_2 .. r_L).

    >>> ids = torch.tensor([[0, 5, 6, 7, 5, 6, 7]])
    >>> pos, tgt = second_half_targets(ids, [4, 5, 6])
    >>> pos.tolist(), tgt.tolist()
    ([4, 5], [[6, 7]])
    """
    pos = torch.as_tensor(list(second_half))[:-1]
    return pos, ids[:, pos + 1]


def _fits(p: dict, info: Any) -> None:
    """What `study check` can tell from the model's config: the sequences fit its context, and the
    token range holds 2 * length distinct ids (special tokens, which `candidate_tokens` also skips,
    are the tokenizer's and are left to the run)."""
    L, lo, hi = p["length"], p.get("vocab_min") or 0, p.get("vocab_max")
    tokens = 1 + 2 * L if p.get("prepend_bos", True) else 2 * L
    if info.n_ctx and tokens > info.n_ctx:
        raise spec.OptionError(f"sequences of {tokens} tokens (1 + 2 * length) are longer than its {info.n_ctx} "
                               "positions", "length", f"length={(info.n_ctx - 1) // 2} at most")
    top = min(hi, info.d_vocab) if hi is not None else info.d_vocab
    if hi is not None and hi > info.d_vocab:
        raise spec.OptionError(f"vocab_max={hi} is past its vocabulary of {info.d_vocab} tokens", "vocab_max",
                               f"vocab_max={info.d_vocab} at most")
    if top - lo < 2 * L:
        raise spec.OptionError(f"token ids {lo}..{top - 1} hold {max(0, top - lo)} tokens; length={L} needs "
                               f"{2 * L} distinct ones", "vocab_min" if p.get("vocab_min") else "length")


@spec.dataset(
    "induction",
    version=1,
    params=[
        Param("n", int, 32, minimum=1, ceiling=10_000, doc="number of sequences"),
        Param("length", int, 20, minimum=2, ceiling=100_000, doc="random tokens per copy (L); sequences are 1 + 2L tokens with BOS"),
        Param("seed", int, 0, minimum=0, doc="sampling seed"),
        Param("vocab_min", int, None, minimum=0, doc="smallest token id drawn (default 0; special tokens never)"),
        Param("vocab_max", int, None, minimum=1, doc="token ids drawn are below this (default: the model's vocabulary)"),
        Param("prepend_bos", bool, True, doc="start every sequence with the BOS (else EOS) token"),
        Param("tokens", str, "all", choices=TOKEN_SETS,
              doc="all: any non-special id; words: the one-token words of the stdlib's word lists (names, places, nouns)"),
        Param("corrupt", str, "first_half", choices=CORRUPTIONS,
              doc="first_half: fresh first copy (nothing to copy); answer: replace only the answer's first occurrence"),
    ],
    provides=frozenset({"answers", "corrupted", "repeated"}),
    needs_model=True,
    fits=lambda p, info: _fits(p, info),
)
def run(inputs: dict, params: dict, ctx: Any) -> Artifact:
    """Repeated random tokens [BOS][r][r] and clean/corrupted prompts whose answer is found only by induction."""
    model = inputs["model"]
    tok = tokenizer_of(model, ctx)
    limit = (model.data.get("info") or {}).get("d_vocab")
    keys = ("n", "length", "seed", "vocab_min", "vocab_max", "prepend_bos", "corrupt", "tokens")
    return generate(tok, **{k: params[k] for k in keys if k in params}, limit=limit)
