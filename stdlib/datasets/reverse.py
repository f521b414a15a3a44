"""`reverse`: the causal form of the ACDC paper's tracr-reverse, for the compiled model `tracr-reverse`.

A sequence is ``BOS x_1 .. x_n | y_1 .. y_k`` with x drawn from {a, b, c, d, e} and y the first k
tokens of x reversed (teacher forcing); the answer at the last position is y_{k+1} = x_{n-k}.
Every prompt has `length` tokens (BOS included), so n varies with k = length - 2 - n, from
n = ceil((length - 1) / 2) (the last reversed token is next) to length - 2 (the separator is last).
The corrupted prompt is an independent draw whose separator sits elsewhere (a different n) and
whose answer differs, so a prompt pair differs in where the input ends as well as in its tokens:
every part of the program (finding the separator, the opposite index, the copy) matters to it.

The ACDC paper's reverse reads its own length with bidirectional attention and scores every
position with an MSE on 6 permutations of (0, 1, 2); a causal model cannot know the length before
the input ends, hence the separator, and here one position per prompt is scored.
``io_id`` is the answer, ``s_id`` the corrupted prompt's; tensors ``n_input`` and ``sep_pos``.
"""

from __future__ import annotations

import math
import random
from typing import Any

import polars as pl
import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib.datasets import tokenizer_of
from mechstudy.stdlib.datasets.xproportion import token_ids

VOCAB = ("a", "b", "c", "d", "e")
SEP = "|"


def sample(rng: random.Random, length: int, not_n: int | None = None) -> tuple[list[str], str, int]:
    """(tokens after BOS, the answer, n) for one prompt of `length` tokens with BOS."""
    lo, hi = math.ceil((length - 1) / 2), length - 2
    n = rng.choice([m for m in range(lo, hi + 1) if m != not_n])
    x = [rng.choice(VOCAB) for _ in range(n)]
    k = length - 2 - n
    return x + [SEP] + x[::-1][:k], x[n - k - 1], n


def generate(tokenizer: Any, n: int = 32, length: int = 10, seed: int = 0) -> Artifact:
    if n < 1:
        raise ValueError("reverse: n must be at least 1")
    if length < 4:
        raise ValueError("reverse: length must be at least 4 (BOS, two tokens to reverse, the separator)")
    limit = getattr(tokenizer, "model_max_length", 10 ** 6)
    if length > limit:
        raise ValueError(f"reverse: length {length} exceeds the model's {limit} positions")
    ids = dict(zip(VOCAB + (SEP,), token_ids(tokenizer, VOCAB + (SEP,))))
    bos = tokenizer.bos_token_id
    rng = random.Random(seed)
    rows, clean, corrupted = [], [], []
    for i in range(n):
        a, ans, na = sample(rng, length)
        while True:
            b, bns, nb = sample(rng, length, not_n=na)
            if bns != ans:
                break
        clean.append([bos] + [ids[t] for t in a])
        corrupted.append([bos] + [ids[t] for t in b])
        rows.append({"row": i, "clean": " ".join(a), "corrupted": " ".join(b), "answer": ans,
                     "corrupted_answer": bns, "n_input": na, "n_input_corrupted": nb})
    clean_ids = torch.tensor(clean, dtype=torch.long)
    tensors = {
        "clean_ids": clean_ids, "ids": clean_ids.clone(),
        "corrupted_ids": torch.tensor(corrupted, dtype=torch.long),
        "attention_mask": torch.ones_like(clean_ids),
        "answer_pos": torch.full((n,), length - 1, dtype=torch.long),
        "io_id": torch.tensor([ids[r["answer"]] for r in rows], dtype=torch.long),
        "s_id": torch.tensor([ids[r["corrupted_answer"]] for r in rows], dtype=torch.long),
        "n_input": torch.tensor([r["n_input"] for r in rows], dtype=torch.long),
        "sep_pos": torch.tensor([r["n_input"] + 1 for r in rows], dtype=torch.long),
    }
    data = {"n": n, "length": length, "seed": seed, "padding": "none", "max_len": length}
    return Artifact(tensors=tensors, tables={"prompts": pl.DataFrame(rows)}, data=data)


def _fits(length: int, info: Any) -> None:
    """Prompts of `length` tokens (plus BOS where the generator adds one) fit the model's context
    (checked by `study check`)."""
    tokens = length + 0
    if info.n_ctx and tokens > info.n_ctx:
        raise spec.OptionError(f"prompts of {tokens} tokens are longer than its {info.n_ctx} positions", "length",
                               f"length={info.n_ctx - 0} at most")


@spec.dataset(
    "reverse",
    version=1,
    params=[
        Param("n", int, 32, minimum=1, ceiling=10_000, doc="number of clean/corrupted pairs"),
        Param("length", int, 10, minimum=4, doc="tokens per prompt, BOS included (tracr-reverse takes up to 13)"),
        Param("seed", int, 0, minimum=0, doc="sampling seed"),
    ],
    provides=frozenset({"answers", "corrupted"}),
    needs_model=True,
    fits=lambda p, info: _fits(p["length"], info),
)
def run(inputs: dict, params: dict, ctx: Any) -> Artifact:
    """Causal reverse: `x_1 .. x_n | y_1 .. y_k`, the answer is the next reversed token x_{n-k}."""
    tok = tokenizer_of(inputs["model"], ctx)
    return generate(tok, **{k: params[k] for k in ("n", "length", "seed") if k in params})
