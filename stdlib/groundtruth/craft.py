"""A transformer written down as matrices over named residual dimensions, and its exact GPT-2 form.

`Crafted` is the construction as designed (by hand, or read from a tracr-compiled model): a
residual stream whose dimensions have names ("tokens:a", "indices:3", "prev:t07" ...), token and
position embeddings, per layer a list of attention heads (W_Q, W_K, W_V: [d, k], W_O: [k, d],
biases) and an MLP (ReLU), and an unembedding [d, V]. There is no layer norm, as in tracr.

`to_gpt2` writes it as an ordinary Hugging Face `GPT2LMHeadModel` (learned absolute positions,
`activation_function="relu"`, causal attention, `scale_attn_weights=False` with the scale folded
into W_Q, untied unembedding), so the stdlib's GPT-2 table runs it with no adapter change and no
JAX. GPT-2's layer norms are made an exact identity:

- one extra residual dimension, "mean_zero", holds minus the sum of the others in every write
  (token and position embeddings, each head's W_O rows, the attention bias, the MLP's output
  rows and bias), so every residual vector, and every sum of writes a patching method builds,
  has mean exactly 0 and LN's centring changes nothing; nothing reads "mean_zero";
- `layer_norm_epsilon` = 2**40 and LN weights 2**20, biases 0: the denominator sqrt(var + 2**40)
  is 2**20 (var, at most a few hundred here, is below float32's resolution at 2**40), so
  LN(x) = x * 2**20 / 2**20 = x. Both factors are powers of two, so the scaling is exact.

`forward64` is the independent, norm-free float64 forward of a `Crafted` (no GPT-2 weights, no
hooks); the tests hold the shipped GPT-2 checkpoints to it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

LN_EPS = float(2 ** 40)
LN_GAIN = float(2 ** 20)
MEAN_ZERO = "mean_zero"


@dataclass
class Head:
    """One attention head: scores = (x W_Q + b_Q)(x W_K + b_K)^T * scale, out = softmax @ (x W_V + b_V) W_O."""

    wq: np.ndarray  # [d, k]
    wk: np.ndarray  # [d, k]
    wv: np.ndarray  # [d, k]
    wo: np.ndarray  # [k, d]
    bq: np.ndarray | None = None
    bk: np.ndarray | None = None
    bv: np.ndarray | None = None

    @property
    def k(self) -> int:
        return self.wq.shape[1]


@dataclass
class Mlp:
    """relu(x W_in + b_in) W_out + b_out."""

    w_in: np.ndarray  # [d, m]
    b_in: np.ndarray  # [m]
    w_out: np.ndarray  # [m, d]
    b_out: np.ndarray  # [d]


@dataclass
class Layer:
    heads: list[Head]
    mlp: Mlp | None = None
    attn_bias: np.ndarray | None = None  # [d], written by the layer's attention as a whole


@dataclass
class Crafted:
    """A norm-free transformer over named residual dimensions (see the module docstring).

    `tokens` are the vocabulary in id order; `special` the tokens that never vary between a
    task's prompts (BOS, pad, unk); `scale` multiplies every attention score (tracr's
    1/sqrt(key_size); 1 for hand-wired heads).
    """

    name: str
    labels: list[str]
    tokens: list[str]
    token_embed: np.ndarray  # [V, d]
    pos_embed: np.ndarray  # [P, d]
    layers: list[Layer]
    unembed: np.ndarray  # [d, V]
    bos: str
    pad: str
    unk: str
    scale: float = 1.0
    meta: dict = field(default_factory=dict)

    @property
    def d(self) -> int:
        return len(self.labels)

    @property
    def n_heads(self) -> int:
        return max(len(layer.heads) for layer in self.layers)

    @property
    def d_mlp(self) -> int:
        return max([layer.mlp.w_in.shape[1] for layer in self.layers if layer.mlp is not None] or [1])

    def dim(self, label: str) -> int:
        return self.labels.index(label)

    def token_id(self, tok: str) -> int:
        return self.tokens.index(tok)


def forward64(c: Crafted, ids: torch.Tensor) -> torch.Tensor:
    """Logits [B, S, V] of the crafted model in float64: embeddings, causal heads, ReLU MLPs,
    unembedding; no norm, no hooks, nothing from GPT-2."""
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731
    ids = torch.as_tensor(ids, dtype=torch.long)
    s = ids.shape[1]
    x = t(c.token_embed)[ids] + t(c.pos_embed)[:s][None]
    causal = torch.ones(s, s, dtype=torch.bool).tril()
    for layer in c.layers:
        out = torch.zeros_like(x)
        for h in layer.heads:
            zero = np.zeros(h.k)
            q = x @ t(h.wq) + t(h.bq if h.bq is not None else zero)
            k = x @ t(h.wk) + t(h.bk if h.bk is not None else zero)
            v = x @ t(h.wv) + t(h.bv if h.bv is not None else zero)
            scores = (q @ k.transpose(-1, -2)) * c.scale
            scores = scores.masked_fill(~causal, float("-inf"))
            out = out + torch.softmax(scores, -1) @ v @ t(h.wo)
        if layer.attn_bias is not None:
            out = out + t(layer.attn_bias)
        x = x + out
        if layer.mlp is not None:
            m = layer.mlp
            x = x + torch.relu(x @ t(m.w_in) + t(m.b_in)) @ t(m.w_out) + t(m.b_out)
    return x @ t(c.unembed)


def _mean_zero(rows: np.ndarray) -> np.ndarray:
    """Rows [..., d] -> [..., d + 1] with the last entry minus the sum of the others."""
    rows = np.asarray(rows, dtype=np.float64)
    return np.concatenate([rows, -rows.sum(-1, keepdims=True)], axis=-1)


def gpt2_dims(c: Crafted) -> tuple[int, int]:
    """(n_embd, d_head): the residual plus "mean_zero", padded so the heads fit and divide it."""
    n_heads = c.n_heads
    k_max = max(h.k for layer in c.layers for h in layer.heads)
    d = max(c.d + 1, n_heads * k_max)
    d = int(math.ceil(d / n_heads) * n_heads)
    return d, d // n_heads


def gpt2_state(c: Crafted) -> tuple[dict, dict[str, torch.Tensor]]:
    """(GPT2Config kwargs, state dict in float32) of the crafted model; see the module docstring."""
    D, dh = gpt2_dims(c)
    nd, V, P, H, M = c.d, len(c.tokens), c.pos_embed.shape[0], c.n_heads, c.d_mlp

    def resid(rows: np.ndarray) -> np.ndarray:  # [..., d] -> [..., D]: mean-zero, then zero padding
        z = _mean_zero(rows)
        pad = np.zeros(z.shape[:-1] + (D - nd - 1,))
        return np.concatenate([z, pad], axis=-1)

    def read(w: np.ndarray) -> np.ndarray:  # [d, k] -> [D, k]: nothing reads mean_zero or padding
        return np.concatenate([w, np.zeros((D - nd, w.shape[1]))], axis=0)

    sd: dict[str, np.ndarray] = {
        "transformer.wte.weight": resid(c.token_embed),
        "transformer.wpe.weight": resid(c.pos_embed),
        "lm_head.weight": read(c.unembed).T,
        "transformer.ln_f.weight": np.full(D, LN_GAIN),
        "transformer.ln_f.bias": np.zeros(D),
    }
    for i, layer in enumerate(c.layers):
        p = f"transformer.h.{i}."
        w_attn, b_attn = np.zeros((D, 3 * D)), np.zeros(3 * D)
        w_proj = np.zeros((D, D))
        for h, head in enumerate(layer.heads):
            for j, (w, b, s) in enumerate(((head.wq, head.bq, c.scale), (head.wk, head.bk, 1.0), (head.wv, head.bv, 1.0))):
                cols = slice(j * D + h * dh, j * D + h * dh + head.k)
                w_attn[:, cols] = read(w) * s
                if b is not None:
                    b_attn[cols] = np.asarray(b) * s
            w_proj[h * dh: h * dh + head.k] = resid(head.wo)
        sd[p + "attn.c_attn.weight"], sd[p + "attn.c_attn.bias"] = w_attn, b_attn
        sd[p + "attn.c_proj.weight"] = w_proj
        sd[p + "attn.c_proj.bias"] = resid(layer.attn_bias if layer.attn_bias is not None else np.zeros(nd))
        w_fc, b_fc, w_out, b_out = np.zeros((D, M)), np.zeros(M), np.zeros((M, D)), np.zeros(D)
        if layer.mlp is not None:
            m = layer.mlp.w_in.shape[1]
            w_fc[:, :m], b_fc[:m] = read(layer.mlp.w_in), layer.mlp.b_in
            w_out[:m] = resid(layer.mlp.w_out)
            b_out = resid(layer.mlp.b_out)
        sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"] = w_fc, b_fc
        sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"] = w_out, b_out
        for ln in ("ln_1", "ln_2"):
            sd[p + ln + ".weight"], sd[p + ln + ".bias"] = np.full(D, LN_GAIN), np.zeros(D)
    config = dict(
        vocab_size=V, n_positions=P, n_embd=D, n_layer=len(c.layers), n_head=H, n_inner=M,
        activation_function="relu", layer_norm_epsilon=LN_EPS, scale_attn_weights=False,
        tie_word_embeddings=False, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=c.token_id(c.bos), eos_token_id=c.token_id(c.bos), pad_token_id=c.token_id(c.pad),
    )
    return config, {k: torch.tensor(v, dtype=torch.float32) for k, v in sd.items()}


def tokenizer_of(c: Crafted):
    """A word-level `PreTrainedTokenizerFast` over `c.tokens` (ids in order; words split on spaces)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(c.tokens)}, unk_token=c.unk))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=c.bos, eos_token=c.bos, pad_token=c.pad,
                                   unk_token=c.unk, model_max_length=int(c.pos_embed.shape[0]))


def save(c: Crafted, directory: str | Path) -> Path:
    """Write the GPT-2 form of `c` (config.json, model.safetensors in float32, tokenizer files) and
    `crafted.json` (the residual labels and the construction's metadata) into `directory`."""
    from transformers import GPT2Config, GPT2LMHeadModel

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config, state = gpt2_state(c)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(**config))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.endswith(".attn.bias") and not k.endswith("masked_bias")]:
        raise RuntimeError(f"GPT-2 state mismatch: missing {missing}, unexpected {unexpected}")
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer_of(c).save_pretrained(directory)
    save_crafted(c, directory)
    return directory


def save_crafted(c: Crafted, directory: Path) -> None:
    """The construction itself, in its own basis: `crafted.safetensors` (float64 matrices) and
    `crafted.json` (residual labels, vocabulary, layout, metadata). `load_crafted` reads it back."""
    from safetensors.torch import save_file

    tensors = {"token_embed": c.token_embed, "pos_embed": c.pos_embed, "unembed": c.unembed}
    layout = []
    for i, layer in enumerate(c.layers):
        heads = []
        for h, head in enumerate(layer.heads):
            for k in ("wq", "wk", "wv", "wo", "bq", "bk", "bv"):
                if getattr(head, k) is not None:
                    tensors[f"{i}.{h}.{k}"] = getattr(head, k)
            heads.append(h)
        if layer.mlp is not None:
            for k in ("w_in", "b_in", "w_out", "b_out"):
                tensors[f"{i}.mlp.{k}"] = getattr(layer.mlp, k)
        if layer.attn_bias is not None:
            tensors[f"{i}.attn_bias"] = layer.attn_bias
        layout.append({"heads": len(heads), "mlp": layer.mlp is not None, "attn_bias": layer.attn_bias is not None})
    save_file({k: torch.tensor(np.asarray(v), dtype=torch.float64).contiguous() for k, v in tensors.items()},
              str(directory / "crafted.safetensors"))
    info = {"name": c.name, "residual": list(c.labels), "gpt2_residual": list(c.labels) + [MEAN_ZERO],
            "tokens": list(c.tokens), "bos": c.bos, "pad": c.pad, "unk": c.unk, "scale": c.scale,
            "layers": layout, "meta": c.meta}
    (directory / "crafted.json").write_text(json.dumps(info, indent=1) + "\n")


def load_crafted(directory: str | Path) -> Crafted:
    """The `Crafted` saved beside a model by `save` (no tracr needed)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    info = json.loads((directory / "crafted.json").read_text())
    t = {k: v.numpy() for k, v in load_file(str(directory / "crafted.safetensors")).items()}
    layers = []
    for i, lay in enumerate(info["layers"]):
        heads = [Head(**{k: t.get(f"{i}.{h}.{k}") for k in ("wq", "wk", "wv", "wo", "bq", "bk", "bv")})
                 for h in range(lay["heads"])]
        mlp = Mlp(*(t[f"{i}.mlp.{k}"] for k in ("w_in", "b_in", "w_out", "b_out"))) if lay["mlp"] else None
        layers.append(Layer(heads, mlp, t.get(f"{i}.attn_bias")))
    return Crafted(info["name"], info["residual"], info["tokens"], t["token_embed"], t["pos_embed"], layers,
                   t["unembed"], info["bos"], info["pad"], info["unk"], info["scale"], info["meta"])
