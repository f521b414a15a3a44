"""Llama family (HF `LlamaForCausalLM`, and Mistral / Qwen2, whose decoder layers carry the same
module names): where each TransformerLens site lives on the native modules.

Block `model.layers.{l}` is pre-norm and sequential (RMSNorm, rotary positions, SwiGLU MLP)::

    resid_mid  = resid_pre + self_attn(input_layernorm(resid_pre))        self_attn -> o_proj(z)
    resid_post = resid_mid + mlp(post_attention_layernorm(resid_mid))
    mlp(x)     = down_proj(act_fn(gate_proj(x)) * up_proj(x))            mlp_post = down_proj's input
    logits     = lm_head(norm(resid_post of the last block))

Grouped-query attention (`num_key_value_heads` < `num_attention_heads`): the query heads are
grouped, `num_attention_heads / num_key_value_heads` query heads sharing one key/value head
(query head h reads key/value head `h // group`). `z`, `q` and `pattern` are per QUERY head, which
is what the model computes per head: `z` is the input of `o_proj` split into `num_attention_heads`
heads of `head_dim`, and `pattern` is [B, num_attention_heads, S, S]. `k` and `v` are per
KEY/VALUE head (`k_proj`/`v_proj`'s outputs split into `num_key_value_heads` heads, as
TransformerLens' GQA hook_k / hook_v): patching k head g changes every query head of group g.
q is before the rotary embedding (as TransformerLens' hook_q; rotation happens inside attention).

`head_dim` is read from config.json when present (some checkpoints set it apart from
`hidden_size / num_attention_heads`); the z shape follows it.

>>> d_head({"hidden_size": 4096, "num_attention_heads": 32}), d_head({"hidden_size": 1024,
...     "num_attention_heads": 16, "head_dim": 128})
(128, 128)
"""

from __future__ import annotations

from typing import Any, Mapping

from mechstudy.engine.spec import ModelInfo
from mechstudy.stdlib.models.sites import ArchTable, HookPoint, register_arch

BLOCK = "model.layers.{layer}"
NORM = "model.norm"


def d_head(cfg: Mapping[str, Any]) -> int:
    """Per-head width: config `head_dim` when set, else hidden_size / num_attention_heads."""
    return int(cfg.get("head_dim") or int(cfg["hidden_size"]) // int(cfg["num_attention_heads"]))


def _info(cfg: Mapping[str, Any]) -> ModelInfo:
    n_heads = int(cfg["num_attention_heads"])
    return ModelInfo(
        arch="llama",
        n_layers=int(cfg["num_hidden_layers"]),
        n_heads=n_heads,
        d_model=int(cfg["hidden_size"]),
        d_vocab=int(cfg["vocab_size"]),
        n_ctx=int(cfg.get("max_position_embeddings") or 0) or None,
        d_head=d_head(cfg),
        n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
        d_mlp=int(cfg["intermediate_size"]),
        features=frozenset({"causal", "lm_head", "residual_stream"}),
    )


LLAMA = register_arch(
    ArchTable(
        model_types=("llama", "mistral", "qwen2"),
        arch="llama",
        info=_info,
        attention=BLOCK + ".self_attn",
        attn_norm=BLOCK + ".input_layernorm",
        mlp_norm=BLOCK + ".post_attention_layernorm",
        final_norm=NORM,
        points={
            "resid_pre": HookPoint(BLOCK, "input"),
            "resid_mid": HookPoint(BLOCK + ".post_attention_layernorm", "input", write_via=("attn_out", "resid_pre")),
            "resid_post": HookPoint(BLOCK, "output"),
            "attn_out": HookPoint(BLOCK + ".self_attn", "output", index=0),
            "mlp_out": HookPoint(BLOCK + ".mlp", "output"),
            "z": HookPoint(BLOCK + ".self_attn.o_proj", "input", split_heads=True),
            "pattern": HookPoint(BLOCK + ".self_attn", "output", index=1, writable=False, eager_only=True),
            "mlp_post": HookPoint(BLOCK + ".mlp.down_proj", "input"),
            "q": HookPoint(BLOCK + ".self_attn.q_proj", "output", split_heads=True),
            "k": HookPoint(BLOCK + ".self_attn.k_proj", "output", split_heads=True),
            "v": HookPoint(BLOCK + ".self_attn.v_proj", "output", split_heads=True),
            "ln_final": HookPoint(NORM, "output"),
            "ln_final_scale": HookPoint(NORM, "input", writable=False, derive="norm_scale"),
            "logits": HookPoint("lm_head", "output", writable=False),
        },
    )
)
