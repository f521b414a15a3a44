"""GPT-NeoX / Pythia (HF `GPTNeoXForCausalLM`): where each TransformerLens site lives.

Block `gpt_neox.layers.{l}` is pre-norm with rotary positions. With `use_parallel_residual`
(the default, and every Pythia model) attention and MLP both read the block's input::

    attn_out   = attention(input_layernorm(resid_pre))            attention -> dense(z)
    mlp_out    = mlp(post_attention_layernorm(resid_pre))         mlp -> dense_h_to_4h -> act (mlp_post)
    resid_post = resid_pre + attn_out + mlp_out

and without it the block is sequential like GPT-2 (the MLP reads `resid_pre + attn_out`).

resid_mid is defined the same way in both cases: ``resid_mid = resid_pre + attn_out``, the
residual stream after the attention contribution, so ``resid_post = resid_mid + mlp_out`` always
holds. What differs is who reads it. Sequential: the MLP does, and resid_mid is read on the input
of `post_attention_layernorm`. Parallel: NOTHING in the block reads it (the MLP reads resid_pre),
no module ever holds it, so the adapter reads it as the sum of resid_pre and attn_out (see
`ArchTable.parallel`); editing it (written through attn_out, as for GPT-2) changes resid_post and
every later layer, but not this layer's MLP. (TransformerLens' hook_resid_mid does not fire in
parallel blocks; this is the quantity its sequential blocks call resid_mid.) Circuit methods see
the difference too: in a parallel block the MLP is not downstream of the same layer's heads.

q, k and v are parts of `attention.query_key_value`'s output, which holds, for each head in turn,
[q_h | k_h | v_h] (`HookPoint.part` with `per_head`), before the rotary embedding.

>>> NEOX.points["z"].module.format(layer=3), NEOX.parallel({}), NEOX.parallel({"use_parallel_residual": False})
('gpt_neox.layers.3.attention.dense', True, False)
"""

from __future__ import annotations

from typing import Any, Mapping

from mechstudy.engine.spec import ModelInfo
from mechstudy.stdlib.models.sites import ArchTable, HookPoint, register_arch

BLOCK = "gpt_neox.layers.{layer}"
LN_F = "gpt_neox.final_layer_norm"


def _parallel(cfg: Mapping[str, Any]) -> bool:
    # HF's GPTNeoXConfig default is True, so a config.json without the key is parallel.
    return bool(cfg.get("use_parallel_residual", True))


def _info(cfg: Mapping[str, Any]) -> ModelInfo:
    return ModelInfo(
        arch="neox",
        n_layers=int(cfg["num_hidden_layers"]),
        n_heads=int(cfg["num_attention_heads"]),
        d_model=int(cfg["hidden_size"]),
        d_vocab=int(cfg["vocab_size"]),
        n_ctx=int(cfg.get("max_position_embeddings") or 0) or None,
        d_mlp=int(cfg["intermediate_size"]),
        parallel=_parallel(cfg),
        features=frozenset({"causal", "lm_head", "residual_stream"}),
    )


NEOX = register_arch(
    ArchTable(
        model_types=("gpt_neox",),
        arch="neox",
        info=_info,
        attention=BLOCK + ".attention",
        attn_norm=BLOCK + ".input_layernorm",
        mlp_norm=BLOCK + ".post_attention_layernorm",
        final_norm=LN_F,
        parallel=_parallel,
        points={
            "resid_pre": HookPoint(BLOCK, "input"),
            # Sequential blocks: read where the MLP's layer norm sees it. Parallel blocks: read as a
            # sum by the adapter. Both: written through attn_out.
            "resid_mid": HookPoint(BLOCK + ".post_attention_layernorm", "input", write_via=("attn_out", "resid_pre")),
            "resid_post": HookPoint(BLOCK, "output"),
            "attn_out": HookPoint(BLOCK + ".attention", "output", index=0),
            "mlp_out": HookPoint(BLOCK + ".mlp", "output"),
            "z": HookPoint(BLOCK + ".attention.dense", "input", split_heads=True),
            "pattern": HookPoint(BLOCK + ".attention", "output", index=1, writable=False, eager_only=True),
            "mlp_post": HookPoint(BLOCK + ".mlp.act", "output"),
            "q": HookPoint(BLOCK + ".attention.query_key_value", "output", split_heads=True, part=(0, 3), per_head=True),
            "k": HookPoint(BLOCK + ".attention.query_key_value", "output", split_heads=True, part=(1, 3), per_head=True),
            "v": HookPoint(BLOCK + ".attention.query_key_value", "output", split_heads=True, part=(2, 3), per_head=True),
            "ln_final": HookPoint(LN_F, "output"),
            "ln_final_scale": HookPoint(LN_F, "input", writable=False, derive="norm_scale"),
            "logits": HookPoint("lm_head", "output", writable=False),
        },
    )
)
