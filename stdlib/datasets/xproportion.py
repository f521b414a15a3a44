"""`xproportion`: the ACDC paper's tracr-xproportion task, for the compiled model `tracr-xproportion`.

A prompt is BOS and `length` tokens drawn uniformly from {w, x, y, z}; the model's answer at the
last position is the fraction of the tokens that are "x" (its logit of "x" is 10 times that
fraction, every other logit 0). The corrupted prompt is an independent draw whose fraction differs
(ACDC: another random sequence). Metrics read the last position: `logit_diff` is
logit(x) - logit(w) = 10 * fraction (``io_id`` = x, ``s_id`` = w), `kl` compares the
next-token distributions. ACDC's paper scores every position with an MSE; here one position per
prompt, the one that reads all the others.

Tensors besides the pairs: ``frac`` and ``frac_corrupted`` [N] (what the program computes), and
``ids`` (= clean_ids). No model was trained on anything, so every prompt is held out.
"""

from __future__ import annotations

import random
from typing import Any

import polars as pl
import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib.datasets import tokenizer_of

VOCAB = ("w", "x", "y", "z")


def token_ids(tokenizer: Any, words: tuple[str, ...] | list[str]) -> list[int]:
    """Ids of whole-word tokens; ValueError naming the missing ones (the model is not the task's)."""
    ids = tokenizer.convert_tokens_to_ids(list(words))
    missing = [w for w, i in zip(words, ids) if i is None or i == tokenizer.unk_token_id]
    if missing:
        raise ValueError(f"the model's vocabulary lacks {', '.join(map(repr, missing))}: this dataset is for the "
                         "ground-truth models (zoo \"tracr-xproportion\", \"tracr-reverse\")")
    return list(ids)


def generate(tokenizer: Any, n: int = 32, length: int = 6, seed: int = 0) -> Artifact:
    if n < 1 or length < 1:
        raise ValueError("xproportion: n and length must be at least 1")
    limit = getattr(tokenizer, "model_max_length", 10 ** 6)
    if length + 1 > limit:
        raise ValueError(f"xproportion: length {length} + BOS exceeds the model's {limit} positions")
    ids = dict(zip(VOCAB, token_ids(tokenizer, VOCAB)))
    bos = tokenizer.bos_token_id
    rng = random.Random(seed)
    rows, clean, corrupted = [], [], []
    for i in range(n):
        a = [rng.choice(VOCAB) for _ in range(length)]
        while True:
            b = [rng.choice(VOCAB) for _ in range(length)]
            if b.count("x") != a.count("x"):
                break
        clean.append([bos] + [ids[t] for t in a])
        corrupted.append([bos] + [ids[t] for t in b])
        rows.append({"row": i, "clean": " ".join(a), "corrupted": " ".join(b),
                     "frac": a.count("x") / length, "frac_corrupted": b.count("x") / length})
    clean_ids = torch.tensor(clean, dtype=torch.long)
    tensors = {
        "clean_ids": clean_ids, "ids": clean_ids.clone(),
        "corrupted_ids": torch.tensor(corrupted, dtype=torch.long),
        "attention_mask": torch.ones_like(clean_ids),
        "answer_pos": torch.full((n,), length, dtype=torch.long),
        "io_id": torch.full((n,), ids["x"], dtype=torch.long),
        "s_id": torch.full((n,), ids["w"], dtype=torch.long),
        "frac": torch.tensor([r["frac"] for r in rows], dtype=torch.float64),
        "frac_corrupted": torch.tensor([r["frac_corrupted"] for r in rows], dtype=torch.float64),
    }
    data = {"n": n, "length": length, "seed": seed, "padding": "none", "max_len": length + 1,
            "answer": "logit(x) - logit(w) = 10 * fraction of x (tracr-xproportion's unembedding)"}
    return Artifact(tensors=tensors, tables={"prompts": pl.DataFrame(rows)}, data=data)


def _fits(length: int, info: Any) -> None:
    """Prompts of `length` tokens (plus BOS where the generator adds one) fit the model's context
    (checked by `study check`)."""
    tokens = length + 1
    if info.n_ctx and tokens > info.n_ctx:
        raise spec.OptionError(f"prompts of {tokens} tokens are longer than its {info.n_ctx} positions", "length",
                               f"length={info.n_ctx - 1} at most")


@spec.dataset(
    "xproportion",
    version=1,
    params=[
        Param("n", int, 32, minimum=1, ceiling=10_000, doc="number of clean/corrupted pairs"),
        Param("length", int, 6, minimum=1, doc="tokens after BOS (tracr-xproportion takes up to 10)"),
        Param("seed", int, 0, minimum=0, doc="sampling seed"),
    ],
    provides=frozenset({"answers", "corrupted"}),
    needs_model=True,
    fits=lambda p, info: _fits(p["length"], info),
)
def run(inputs: dict, params: dict, ctx: Any) -> Artifact:
    """tracr-xproportion: random w/x/y/z sequences; the answer is the fraction of x (read at the last position)."""
    tok = tokenizer_of(inputs["model"], ctx)
    return generate(tok, **{k: params[k] for k in ("n", "length", "seed") if k in params})
