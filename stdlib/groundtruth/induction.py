"""`induction-handwired`: a two-layer induction circuit written by hand, plus live distractors.

Vocabulary: `<|endoftext|>` (BOS and EOS), `<pad>`, `<unk>`, then the words `t00` .. `t47`.
Residual dimensions (all one-hot, named): tokens:W and pos:P (the embeddings, plus `one`, 1 at
every position), prev:W (written by the previous-token head), out:W (read by the unembedding),
s1:i and s2:i (distractor scratch space).

The circuit (Olsson et al.'s induction mechanism, K-composition):

- a0.h0, previous-token head: query pos:i, key pos:j shifted by one, so position i attends to
  i - 1 (score 40 against 0); its value copies tokens:W into prev:W.
- a1.h0, induction head: query tokens:W at i, key prev:W at j (score 40 when the token before j
  is the current token); its value copies tokens:W at j into out:W.
- the unembedding reads out:W with weight 10 (logit 10 for the copied token).

Distractors (live: their activations depend on the tokens, and their weights connect them, but
nothing they write reaches the logits except a constant):

- a0.h1, BOS head: attends to BOS from everywhere and writes 0.5 into out:<|endoftext|> (a
  constant end-of-text logit of 5; it reads only the BOS token and `one`, which every prompt
  shares, so no prompt pair can change it).
- m0: 16 ReLU units reading tokens:W and prev:W (so a0.h0 -> m0 is a real connection), writing s1.
- a1.h1: query from s1, key and value from tokens:W, writes s2.
- m1: reads s1, s2 and tokens:W, writes s2. Nothing reads s2.

So the true circuit, the edges through which a prompt's tokens reach the logits, is
input -> a0.h0 (values), a0.h0 -> a1.h0 (keys), input -> a1.h0 (queries and values),
a1.h0 -> logits. The distractor weights are seeded (numpy, seed 0) and rounded to 1/16.
"""

from __future__ import annotations

import numpy as np

from mechstudy.stdlib.groundtruth.craft import Crafted, Head, Layer, Mlp

BOS, PAD, UNK = "<|endoftext|>", "<pad>", "<unk>"
N_WORDS, N_POS, SCRATCH, D_MLP = 48, 64, 8, 16
STRENGTH, LOGIT, BOS_WRITE = 40.0, 10.0, 0.5
NAME = "induction-handwired"


def words() -> list[str]:
    return [f"t{i:02d}" for i in range(N_WORDS)]


def build(seed: int = 0) -> Crafted:
    """The hand-wired induction model (deterministic)."""
    ws = words()
    vocab = [BOS, PAD, UNK] + ws
    seen = [BOS] + ws  # tokens with a residual dimension
    labels = ([f"tokens:{w}" for w in seen] + [f"pos:{p}" for p in range(N_POS)] + ["one"]
              + [f"prev:{w}" for w in seen] + [f"out:{w}" for w in seen]
              + [f"s1:{i}" for i in range(SCRATCH)] + [f"s2:{i}" for i in range(SCRATCH)])
    at = {lab: i for i, lab in enumerate(labels)}
    d = len(labels)
    rng = np.random.default_rng(seed)

    def rand(*shape: int) -> np.ndarray:
        return np.round(rng.normal(0.0, 0.5, size=shape) * 16) / 16

    tok_embed = np.zeros((len(vocab), d))
    for w in seen:
        tok_embed[vocab.index(w), at[f"tokens:{w}"]] = 1.0
    pos_embed = np.zeros((N_POS, d))
    for p in range(N_POS):
        pos_embed[p, at[f"pos:{p}"]] = 1.0
        pos_embed[p, at["one"]] = 1.0

    # a0.h0: previous-token head (k = positions; values use the first len(seen) columns)
    k0 = N_POS
    prev = Head(*(np.zeros((d, k0)) for _ in range(3)), np.zeros((k0, d)))
    for p in range(N_POS):
        prev.wq[at[f"pos:{p}"], p] = STRENGTH
        if p + 1 < N_POS:
            prev.wk[at[f"pos:{p}"], p + 1] = 1.0
    for i, w in enumerate(seen):
        prev.wv[at[f"tokens:{w}"], i] = 1.0
        prev.wo[i, at[f"prev:{w}"]] = 1.0
    # a0.h1: BOS head
    bos = Head(np.zeros((d, 1)), np.zeros((d, 1)), np.zeros((d, 1)), np.zeros((1, d)))
    bos.wq[at["one"], 0] = STRENGTH
    bos.wk[at[f"tokens:{BOS}"], 0] = 1.0
    bos.wv[at[f"tokens:{BOS}"], 0] = 1.0
    bos.wo[0, at[f"out:{BOS}"]] = BOS_WRITE
    # a1.h0: induction head (k = the words)
    ind = Head(*(np.zeros((d, N_WORDS)) for _ in range(3)), np.zeros((N_WORDS, d)))
    for i, w in enumerate(ws):
        ind.wq[at[f"tokens:{w}"], i] = STRENGTH
        ind.wk[at[f"prev:{w}"], i] = 1.0
        ind.wv[at[f"tokens:{w}"], i] = 1.0
        ind.wo[i, at[f"out:{w}"]] = 1.0

    def rows(prefixes: tuple[str, ...], width: int) -> np.ndarray:
        """[d, width]: random rows for the dimensions whose label starts with a prefix, else 0."""
        w = np.zeros((d, width))
        for lab, i in at.items():
            if lab.startswith(prefixes) and lab != f"tokens:{BOS}" and lab != f"prev:{BOS}":
                w[i] = rand(width)
        return w

    def cols(prefix: str, w: np.ndarray) -> np.ndarray:
        """[k, d]: w [k, SCRATCH] placed in the columns prefix:0 .. prefix:7."""
        out = np.zeros((w.shape[0], d))
        out[:, [at[f"{prefix}:{i}"] for i in range(SCRATCH)]] = w
        return out

    m0 = Mlp(rows(("tokens:", "prev:"), D_MLP), rand(D_MLP), cols("s1", rand(D_MLP, SCRATCH)), np.zeros(d))
    side = Head(rows(("s1:",), SCRATCH), rows(("tokens:",), SCRATCH), rows(("tokens:",), SCRATCH),
                cols("s2", rand(SCRATCH, SCRATCH)))
    m1 = Mlp(rows(("s1:", "s2:", "tokens:"), D_MLP), rand(D_MLP), cols("s2", rand(D_MLP, SCRATCH)), np.zeros(d))

    unembed = np.zeros((d, len(vocab)))
    for w in seen:
        unembed[at[f"out:{w}"], vocab.index(w)] = LOGIT
    meta = {
        "construction": "hand-wired (stdlib/groundtruth/induction.py)",
        "task_tokens": ws,
        "program": "next token = the token that followed the previous occurrence of the current token",
        "roles": {"a0.h0": "previous-token head", "a0.h1": "BOS head (constant end-of-text logit)",
                  "a1.h0": "induction head", "a1.h1": "distractor (writes s2, never read)",
                  "m0": "distractor (writes s1)", "m1": "distractor (writes s2, never read)"},
    }
    return Crafted(NAME, labels, vocab, tok_embed, pos_embed,
                   [Layer([prev, bos], m0), Layer([ind, side], m1)], unembed, BOS, PAD, UNK, 1.0, meta)


def expected_next(seq: list[int], words_from: int = 3) -> list[int | None]:
    """What the circuit predicts after each position of a token-id sequence: the token that
    followed the latest earlier occurrence of the current token, None when it has not occurred
    (ids below `words_from` are special and never copied)."""
    out: list[int | None] = []
    for i, t in enumerate(seq):
        hit = None
        for j in range(i - 1, -1, -1):
            if seq[j] == t and seq[j + 1] >= words_from:
                hit = seq[j + 1]
                break
        out.append(hit if t >= words_from else None)
    return out
