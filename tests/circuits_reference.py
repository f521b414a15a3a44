"""Slow, obviously correct transformers for the circuit tests, written from the weights in float64:
GPT-2, GPT-NeoX (parallel or sequential blocks, partial rotary) and Llama (RMSNorm, rotary,
SwiGLU, grouped-query attention).

Each computes the component graph explicitly: every receiver's input is a sum over its parents
(each parent's clean output, or its corrupted output when the edge is removed) plus the biases
written before it, and each head runs on its own input (its q, and the k and v of the key/value
head it reads, all from that input). Nothing here uses hooks, the adapter or the code under test;
the only things read from the HF model are its weights, config numbers and the rotary inverse
frequencies (a constant buffer). Only right-padded batches are read at real positions, so a
causal mask is all attention needs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


def rope(x: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on the first 2 * len(inv_freq) dims of x [B, S, d] (the rest pass through)."""
    pos = torch.arange(x.shape[1], dtype=torch.float64)
    freqs = pos[:, None] * inv_freq.double()[None]
    emb = torch.cat([freqs, freqs], dim=-1)
    r = emb.shape[-1]
    rot = x[..., :r] * emb.cos() + rotate_half(x[..., :r]) * emb.sin()
    return torch.cat([rot, x[..., r:]], dim=-1)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    s = q @ k.transpose(-1, -2) * scale
    n = q.shape[1]
    s = s.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(s, -1) @ v


class RefModel:
    """The component graph over an architecture's pieces (subclasses give the pieces)."""

    parallel = False  # attention and MLP both read the block's input

    def __init__(self, hf_model) -> None:
        self.w = {k: v.detach().double().clone() for k, v in hf_model.state_dict().items()}
        self.cfg = hf_model.config

    # ---- pieces (subclasses) ------------------------------------------------------------
    def embed(self, ids): ...
    def head_z(self, layer, h, x): ...
    def head_out(self, layer, h, z): ...
    def attn_bias(self, layer): ...
    def mlp(self, layer, x): ...
    def final_norm(self, x): ...
    def w_u(self): ...
    def final_norm_affine(self):
        """(gain, bias or None, centres the input) of the final norm."""

    def final_scale(self, x):
        """What the final norm divides x by."""

    def unembed(self, x):
        return self.final_norm(x) @ self.w_u().T

    # ---- the graph ----------------------------------------------------------------------
    def senders(self):
        out = ["input"]
        for l in range(self.L):
            out += [f"a{l}.h{h}" for h in range(self.H)] + [f"m{l}"]
        return out

    def receivers(self):
        out = []
        for l in range(self.L):
            out += [f"a{l}.h{h}" for h in range(self.H)] + [f"m{l}"]
        return out + ["logits"]

    def parents(self, r):
        s = self.senders()
        if r == "logits":
            return s
        layer = int(r[1:].split(".")[0])
        mlp = r.startswith("m")
        cut = 1 + layer * (self.H + 1) + (self.H if mlp and not self.parallel else 0)
        return s[:cut]

    def run(self, ids, removed=(), corrupted=None, eps=None, input_value=None):
        """Full logits [B, S, V] and every sender's output, with the edges in `removed` ((sender,
        receiver) names) carrying `corrupted[sender]`; `eps[receiver]` is added to that receiver's
        input (for gradients); `input_value` replaces the embeddings."""
        removed, eps = set(removed), eps or {}
        out = {"input": self.embed(ids) if input_value is None else input_value}
        biases = []  # attention biases written so far

        def inp(r):
            x = sum(corrupted[u] if (u, r) in removed else out[u] for u in self.parents(r))
            x = x + sum(biases) if biases else x
            return x + eps[r] if r in eps else x

        for l in range(self.L):
            for h in range(self.H):
                r = f"a{l}.h{h}"
                out[r] = self.head_out(l, h, self.head_z(l, h, inp(r)))
            if self.parallel:  # the MLP reads the block's input: not this layer's attention bias
                out[f"m{l}"] = self.mlp(l, inp(f"m{l}"))
                biases.append(self.attn_bias(l))
            else:
                biases.append(self.attn_bias(l))
                out[f"m{l}"] = self.mlp(l, inp(f"m{l}"))
        return self.unembed(inp("logits")), out


def layer_norm(x, weight, bias, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * weight + bias


class RefGPT2(RefModel):
    def __init__(self, hf_model) -> None:
        super().__init__(hf_model)
        cfg = self.cfg
        self.L, self.H, self.D = cfg.n_layer, cfg.n_head, cfg.n_embd
        self.dh = self.D // self.H
        self.eps = cfg.layer_norm_epsilon

    def ln(self, x, name):
        return layer_norm(x, self.w[f"{name}.weight"], self.w[f"{name}.bias"], self.eps)

    def embed(self, ids):
        pos = torch.arange(ids.shape[1])
        return self.w["transformer.wte.weight"][ids] + self.w["transformer.wpe.weight"][pos][None]

    def head_z(self, layer, h, x):
        """z of head h of `layer` when its input (before ln_1) is x [B, S, D]: [B, S, dh]."""
        p = f"transformer.h.{layer}"
        y = self.ln(x, f"{p}.ln_1")
        W, b = self.w[f"{p}.attn.c_attn.weight"], self.w[f"{p}.attn.c_attn.bias"]
        cols = lambda part: slice(part * self.D + h * self.dh, part * self.D + (h + 1) * self.dh)  # noqa: E731
        q, k, v = (y @ W[:, cols(i)] + b[cols(i)] for i in range(3))
        return causal_attention(q, k, v, 1 / math.sqrt(self.dh))

    def head_out(self, layer, h, z):
        W = self.w[f"transformer.h.{layer}.attn.c_proj.weight"]
        return z @ W[h * self.dh : (h + 1) * self.dh]

    def attn_bias(self, layer):
        return self.w[f"transformer.h.{layer}.attn.c_proj.bias"]

    def mlp(self, layer, x):
        p = f"transformer.h.{layer}"
        y = self.ln(x, f"{p}.ln_2")
        hdn = F.gelu(y @ self.w[f"{p}.mlp.c_fc.weight"] + self.w[f"{p}.mlp.c_fc.bias"], approximate="tanh")
        return hdn @ self.w[f"{p}.mlp.c_proj.weight"] + self.w[f"{p}.mlp.c_proj.bias"]

    def final_norm(self, x):
        return self.ln(x, "transformer.ln_f")

    def w_u(self):
        return self.w["transformer.wte.weight"]

    def final_norm_affine(self):
        return self.w["transformer.ln_f.weight"], self.w["transformer.ln_f.bias"], True

    def final_scale(self, x):
        return ((x - x.mean(-1, keepdim=True)) ** 2).mean(-1).add(self.eps).sqrt()


class RefNeoX(RefModel):
    """GPT-NeoX: LayerNorms, partial rotary, fused per-head [q|k|v], parallel or sequential blocks."""

    def __init__(self, hf_model) -> None:
        super().__init__(hf_model)
        cfg = self.cfg
        self.L, self.H, self.D = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size
        self.dh = self.D // self.H
        self.eps = cfg.layer_norm_eps
        self.parallel = bool(cfg.use_parallel_residual)
        self.inv_freq = hf_model.gpt_neox.rotary_emb.inv_freq.detach().double()
        self.act = {"gelu": lambda t: F.gelu(t), "gelu_new": lambda t: F.gelu(t, approximate="tanh")}[cfg.hidden_act]

    def ln(self, x, name):
        return layer_norm(x, self.w[f"{name}.weight"], self.w[f"{name}.bias"], self.eps)

    def embed(self, ids):
        return self.w["gpt_neox.embed_in.weight"][ids]

    def head_z(self, layer, h, x):
        p = f"gpt_neox.layers.{layer}"
        y = self.ln(x, f"{p}.input_layernorm")
        W, b = self.w[f"{p}.attention.query_key_value.weight"], self.w[f"{p}.attention.query_key_value.bias"]
        base = 3 * h * self.dh  # head h's block is [q_h | k_h | v_h]
        q, k, v = (y @ W[base + i * self.dh: base + (i + 1) * self.dh].T + b[base + i * self.dh: base + (i + 1) * self.dh]
                   for i in range(3))
        return causal_attention(rope(q, self.inv_freq), rope(k, self.inv_freq), v, 1 / math.sqrt(self.dh))

    def head_out(self, layer, h, z):
        W = self.w[f"gpt_neox.layers.{layer}.attention.dense.weight"]
        return z @ W[:, h * self.dh : (h + 1) * self.dh].T

    def attn_bias(self, layer):
        return self.w[f"gpt_neox.layers.{layer}.attention.dense.bias"]

    def mlp(self, layer, x):
        p = f"gpt_neox.layers.{layer}"
        y = self.ln(x, f"{p}.post_attention_layernorm")
        hdn = self.act(y @ self.w[f"{p}.mlp.dense_h_to_4h.weight"].T + self.w[f"{p}.mlp.dense_h_to_4h.bias"])
        return hdn @ self.w[f"{p}.mlp.dense_4h_to_h.weight"].T + self.w[f"{p}.mlp.dense_4h_to_h.bias"]

    def final_norm(self, x):
        return self.ln(x, "gpt_neox.final_layer_norm")

    def w_u(self):
        return self.w["lm_head.weight"]

    def final_norm_affine(self):
        return self.w["gpt_neox.final_layer_norm.weight"], self.w["gpt_neox.final_layer_norm.bias"], True

    def final_scale(self, x):
        return ((x - x.mean(-1, keepdim=True)) ** 2).mean(-1).add(self.eps).sqrt()


class RefLlama(RefModel):
    """Llama / Mistral / Qwen2: RMSNorm, rotary, SwiGLU, grouped-query attention (query head h reads
    key/value head h // (H / KV)), optional q/k/v biases, no output bias."""

    def __init__(self, hf_model) -> None:
        super().__init__(hf_model)
        cfg = self.cfg
        self.L, self.H, self.D = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size
        self.dh = getattr(cfg, "head_dim", None) or self.D // self.H
        self.kv = cfg.num_key_value_heads or self.H
        self.eps = cfg.rms_norm_eps
        self.inv_freq = hf_model.model.rotary_emb.inv_freq.detach().double()

    def rms(self, x, name):
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.w[f"{name}.weight"]

    def proj(self, y, name, head):
        W = self.w[f"{name}.weight"][head * self.dh:(head + 1) * self.dh]
        b = self.w.get(f"{name}.bias")
        out = y @ W.T
        return out + b[head * self.dh:(head + 1) * self.dh] if b is not None else out

    def embed(self, ids):
        return self.w["model.embed_tokens.weight"][ids]

    def head_z(self, layer, h, x):
        p = f"model.layers.{layer}"
        y = self.rms(x, f"{p}.input_layernorm")
        g = h // (self.H // self.kv)
        q = self.proj(y, f"{p}.self_attn.q_proj", h)
        k = self.proj(y, f"{p}.self_attn.k_proj", g)
        v = self.proj(y, f"{p}.self_attn.v_proj", g)
        return causal_attention(rope(q, self.inv_freq), rope(k, self.inv_freq), v, self.dh ** -0.5)

    def head_out(self, layer, h, z):
        W = self.w[f"model.layers.{layer}.self_attn.o_proj.weight"]
        return z @ W[:, h * self.dh : (h + 1) * self.dh].T

    def attn_bias(self, layer):
        return torch.zeros(self.D, dtype=torch.float64)

    def mlp(self, layer, x):
        p = f"model.layers.{layer}.mlp"
        y = self.rms(x, f"model.layers.{layer}.post_attention_layernorm")
        hdn = F.silu(y @ self.w[f"{p}.gate_proj.weight"].T) * (y @ self.w[f"{p}.up_proj.weight"].T)
        return hdn @ self.w[f"{p}.down_proj.weight"].T

    def final_norm(self, x):
        return self.rms(x, "model.norm")

    def w_u(self):
        return self.w["lm_head.weight"]

    def final_norm_affine(self):
        return self.w["model.norm.weight"], None, False

    def final_scale(self, x):
        return x.pow(2).mean(-1).add(self.eps).sqrt()


REFS = {"gpt2": RefGPT2, "neox": RefNeoX, "llama": RefLlama}


def reference(adapter) -> RefModel:
    """The reference of a loaded adapter's architecture."""
    return REFS[adapter.table.arch](adapter.model)


def answer_logits(logits, ds):
    t = ds.tensors
    return logits[torch.arange(logits.shape[0]), t["answer_pos"]]


def metric(name, logits, ds, clean_logits=None):
    """Per-prompt metric from answer-position logits [N, V] (float64)."""
    t = ds.tensors
    rows = torch.arange(logits.shape[0])
    if name == "logit_diff":
        return logits[rows, t["io_id"]] - logits[rows, t["s_id"]]
    if name == "prob":
        return torch.softmax(logits, -1)[rows, t["io_id"]]
    p = torch.log_softmax(clean_logits, -1)
    return (p.exp() * (p - torch.log_softmax(logits, -1))).sum(-1)
