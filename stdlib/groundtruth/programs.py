"""The RASP programs behind `tracr-xproportion` and `tracr-reverse`, compiled with tracr, and what
they compute written as plain Python (which is what the tests hold the shipped models to).

Compiling needs tracr (`pip install -e '.[groundtruth]'`: `tracr-pypi` and JAX); nothing else here
does, and the shipped models run without it.

- xproportion (the ACDC paper's tracr-xproportion; tracr's `make_frac_prevs`): at every position,
  the fraction of the tokens so far that are "x". Vocabulary {w, x, y, z}. Causal as written
  (it selects keys at or before the query). The unembedding reads the numerical output with
  weight 10 into the logit of "x": logit(x) = 10 * fraction, every other logit 0.
- reverse, causal form (the ACDC paper's tracr-reverse is `Aggregate(Select(indices, length -
  indices - 1, EQ), tokens)`, which needs the length, i.e. bidirectional attention). Written
  causally as a continuation task: the prompt is `x_1 .. x_n | y_1 .. y_k` and every position
  from the separator on predicts the next reversed token, y_{k+1} = x_{n-k}::

      sep_pos  = Aggregate(Select(tokens, tokens, key == "|"), indices)       # attention
      opp_idx  = SequenceMap(lambda s, i: 2 * s - i - 1, sep_pos, indices)     # MLP
      reverse  = Aggregate(Select(indices, opp_idx, EQ), tokens)               # attention

  Vocabulary {a, b, c, d, e} and "|"; positions before the separator are not part of the task.
  The unembedding reads the categorical output with weight 10 into the matching token's logit.

RASP indices count from the first token after BOS (the compiled model's position p is index p-1).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np

from mechstudy.stdlib.groundtruth.craft import Crafted, Head, Layer, Mlp

BOS, PAD, UNK = "<bos>", "<pad>", "<unk>"
SEP = "|"
LOGIT = 10.0
XPROP_VOCAB = ("w", "x", "y", "z")
XPROP_MAX_LEN = 10
REVERSE_VOCAB = ("a", "b", "c", "d", "e")
REVERSE_MAX_LEN = 12


# ---- what the programs compute, in plain Python ---------------------------------------------
def frac_prevs(tokens: Sequence[str], target: str = "x") -> list[float]:
    """xproportion: the fraction of tokens[:i+1] equal to `target`, for every i.

    >>> frac_prevs(["a", "x", "b", "x"])
    [0.0, 0.5, 0.3333333333333333, 0.5]
    """
    out, hits = [], 0
    for i, t in enumerate(tokens):
        hits += t == target
        out.append(hits / (i + 1))
    return out


def reverse_causal(tokens: Sequence[str], sep: str = SEP) -> list[str | None]:
    """Causal reverse: at every position from the (first) separator on, the next token of the
    reversed input, x_{n-k} after `x_1 .. x_n | y_1 .. y_k`; None before the separator and once
    the input is used up.

    >>> reverse_causal(["a", "b", "c", "|", "c", "b"])
    [None, None, None, 'c', 'b', 'a']
    """
    if sep not in tokens:
        return [None] * len(tokens)
    s = list(tokens).index(sep)
    out: list[str | None] = []
    for i in range(len(tokens)):
        j = 2 * s - i - 1
        out.append(tokens[j] if i >= s and 0 <= j < s else None)
    return out


# ---- the RASP programs (tracr) --------------------------------------------------------------
def xproportion_program() -> Any:
    from tracr.compiler.lib import make_frac_prevs
    from tracr.rasp import rasp

    is_x = rasp.numerical(rasp.Map(lambda t: t == "x", rasp.tokens)).named("is_x")
    return make_frac_prevs(is_x).named("frac_prevs")


def reverse_program(max_len: int = REVERSE_MAX_LEN) -> Any:
    from tracr.rasp import rasp

    find_sep = rasp.Select(rasp.tokens, rasp.tokens, lambda k, q: k == SEP).named("find_sep")
    sep_pos = rasp.categorical(rasp.Aggregate(find_sep, rasp.indices)).named("sep_pos")

    def opp(s: int, i: int) -> int:
        j = 2 * s - i - 1
        return j if 0 <= j < max_len else 0  # out of range only before the separator (not part of the task)

    opp_idx = rasp.categorical(rasp.SequenceMap(opp, sep_pos, rasp.indices)).named("opp_idx")
    flip = rasp.Select(rasp.indices, opp_idx, rasp.Comparison.EQ).named("flip")
    return rasp.categorical(rasp.Aggregate(flip, rasp.tokens)).named("reverse")


def compile_tracr(program: Any, vocab: Sequence[str], max_len: int) -> Any:
    """tracr's compiled model (causal attention, BOS "<bos>", pad "<pad>")."""
    from tracr.compiler import compiling

    return compiling.compile_rasp_to_model(program, vocab=set(vocab), max_seq_len=max_len, causal=True,
                                           compiler_bos=BOS, compiler_pad=PAD)


def stable_label(label: str) -> str:
    """tracr suffixes every SOp's name with a process-wide counter ("opp_idx_3:5"), which changes
    with what was built before; the residual labels drop it ("opp_idx:5").

    >>> stable_label("opp_idx_3:5"), stable_label("frac_prevs_1"), stable_label("indices:10")
    ('opp_idx:5', 'frac_prevs', 'indices:10')
    """
    return re.sub(r"^([A-Za-z][A-Za-z_]*?)_\d+(?=:|$)", r"\1", label)


def from_tracr(model: Any, name: str, output: str, numerical_token: str | None = None,
               meta: dict | None = None) -> Crafted:
    """A tracr `AssembledTransformerModel` as a `Crafted`: the same matrices over tracr's residual
    labels, attention scale 1/sqrt(key_size), plus an unembedding that reads the program's output
    (`output`, its label) with weight LOGIT: categorical values into the logits of the tokens of the
    same name, a numerical value into the logit of `numerical_token`."""
    p = {k: {kk: np.asarray(vv, dtype=np.float64) for kk, vv in v.items()} for k, v in model.params.items()}
    cfg = model.model_config
    labels = [stable_label(str(lab)) for lab in model.residual_labels]
    output = stable_label(output)
    enc = model.input_encoder.encoding_map
    vocab = [t for t, _ in sorted(enc.items(), key=lambda kv: kv[1])] + [UNK]
    if vocab[:2] != [BOS, PAD]:
        raise ValueError(f"unexpected tracr token order {vocab[:2]}")
    tok = np.concatenate([p["token_embed"]["embeddings"], np.zeros((1, len(labels)))])
    pos = p["pos_embed"]["embeddings"]
    k, H = cfg.key_size, cfg.num_heads
    layers = []
    for i in range(cfg.num_layers):
        a = f"transformer/layer_{i}/"
        heads = []
        for h in range(H):
            cols = slice(h * k, (h + 1) * k)
            heads.append(Head(p[a + "attn/query"]["w"][:, cols], p[a + "attn/key"]["w"][:, cols],
                              p[a + "attn/value"]["w"][:, cols], p[a + "attn/linear"]["w"][cols],
                              p[a + "attn/query"]["b"][cols], p[a + "attn/key"]["b"][cols],
                              p[a + "attn/value"]["b"][cols]))
        mlp = Mlp(p[a + "mlp/linear_1"]["w"], p[a + "mlp/linear_1"]["b"], p[a + "mlp/linear_2"]["w"],
                  p[a + "mlp/linear_2"]["b"])
        layers.append(Layer(heads, mlp, p[a + "attn/linear"]["b"]))
    unembed = np.zeros((len(labels), len(vocab)))
    if numerical_token is not None:
        unembed[labels.index(output), vocab.index(numerical_token)] = LOGIT
    else:
        for j, lab in enumerate(labels):
            if lab.startswith(output + ":"):
                unembed[j, vocab.index(lab.split(":", 1)[1])] = LOGIT
    return Crafted(name, labels, vocab, tok, pos, layers, unembed, BOS, PAD, UNK, 1.0 / float(np.sqrt(k)),
                   dict(meta or {}))


def build_xproportion() -> tuple[Crafted, Any]:
    """(the crafted tracr-xproportion, tracr's own model) — needs tracr."""
    program = xproportion_program()
    model = compile_tracr(program, XPROP_VOCAB, XPROP_MAX_LEN)
    meta = {"construction": "tracr (tracr-pypi) compile of make_frac_prevs(tokens == 'x'), causal=True",
            "task_tokens": list(XPROP_VOCAB),
            "program": "frac_prevs = numerical Aggregate(Select(indices, indices, LEQ), numerical Map(t == 'x', tokens))",
            "output": "logit('x') = 10 * fraction of x so far; every other logit 0",
            "roles": {"m0": "is_x = (token == 'x')", "a1.h0": "frac_prevs: mean of is_x over positions <= query",
                      "a0.h0": "empty", "m1": "empty"}}
    return from_tracr(model, "tracr-xproportion", program.label, numerical_token="x", meta=meta), model


def build_reverse() -> tuple[Crafted, Any]:
    """(the crafted tracr-reverse, tracr's own model) — needs tracr."""
    program = reverse_program()
    model = compile_tracr(program, REVERSE_VOCAB + (SEP,), REVERSE_MAX_LEN)
    meta = {"construction": "tracr (tracr-pypi) compile of the causal reverse program, causal=True",
            "task_tokens": list(REVERSE_VOCAB) + [SEP],
            "program": "sep_pos = Aggregate(Select(tokens, tokens, k == '|'), indices); "
                       "opp_idx = SequenceMap(2*s - i - 1, sep_pos, indices); "
                       "reverse = Aggregate(Select(indices, opp_idx, EQ), tokens)",
            "output": "logit(token) = 10 where token is the program's output; 0 elsewhere",
            "roles": {"a0.h0": "sep_pos: finds the separator, copies its index", "m0": "opp_idx = 2*sep_pos - i - 1",
                      "a1.h0": "reverse: copies the token at opp_idx", "m1": "empty"}}
    return from_tracr(model, "tracr-reverse", program.label, meta=meta), model
