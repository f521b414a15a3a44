"""GPT-2 (HF `GPT2LMHeadModel`): where each TransformerLens site lives on the native modules.

Block `transformer.h.{l}` computes, with no re-implementation on our side::

    resid_mid  = resid_pre + attn(ln_1(resid_pre))          attn -> c_proj(z) -> attn_out
    resid_post = resid_mid + mlp(ln_2(resid_mid))           mlp  -> c_fc -> act (mlp_post) -> c_proj
    logits     = lm_head(ln_f(resid_post of the last block))

so z is the input of `attn.c_proj` ([B, S, d_model] viewed as [B, S, H, d_head]), q, k and v are the
thirds of `attn.c_attn`'s output (viewed the same way), the pattern is element 1 of the attention
module's output (eager attention returns the probabilities), and resid_mid is read on the input of
`ln_2` but written through attn_out (see HookPoint.write_via).

>>> GPT2.points["z"].module.format(layer=3), GPT2.final_norm
('transformer.h.3.attn.c_proj', 'transformer.ln_f')
"""

from __future__ import annotations

from typing import Any, Mapping

from mechstudy.engine.spec import ModelInfo
from mechstudy.stdlib.models.sites import ArchTable, HookPoint, register_arch

BLOCK = "transformer.h.{layer}"
LN_F = "transformer.ln_f"


def _info(cfg: Mapping[str, Any]) -> ModelInfo:
    d_model = int(cfg["n_embd"])
    return ModelInfo(
        arch="gpt2",
        n_layers=int(cfg["n_layer"]),
        n_heads=int(cfg["n_head"]),
        d_model=d_model,
        d_vocab=int(cfg["vocab_size"]),
        n_ctx=int(cfg.get("n_positions") or cfg.get("n_ctx") or 0) or None,
        d_mlp=int(cfg.get("n_inner") or 4 * d_model),
        features=frozenset({"causal", "lm_head", "residual_stream"}),
    )


GPT2 = register_arch(
    ArchTable(
        model_types=("gpt2",),
        arch="gpt2",
        info=_info,
        attention=BLOCK + ".attn",
        attn_norm=BLOCK + ".ln_1",
        mlp_norm=BLOCK + ".ln_2",
        final_norm=LN_F,
        points={
            "resid_pre": HookPoint(BLOCK, "input"),
            "resid_mid": HookPoint(BLOCK + ".ln_2", "input", write_via=("attn_out", "resid_pre")),
            "resid_post": HookPoint(BLOCK, "output"),
            "attn_out": HookPoint(BLOCK + ".attn", "output", index=0),
            "mlp_out": HookPoint(BLOCK + ".mlp", "output"),
            "z": HookPoint(BLOCK + ".attn.c_proj", "input", split_heads=True),
            "pattern": HookPoint(BLOCK + ".attn", "output", index=1, writable=False, eager_only=True),
            "mlp_post": HookPoint(BLOCK + ".mlp.act", "output"),
            # The fused c_attn output is [q | k | v], each [B, S, d_model].
            "q": HookPoint(BLOCK + ".attn.c_attn", "output", split_heads=True, part=(0, 3)),
            "k": HookPoint(BLOCK + ".attn.c_attn", "output", split_heads=True, part=(1, 3)),
            "v": HookPoint(BLOCK + ".attn.c_attn", "output", split_heads=True, part=(2, 3)),
            "ln_final": HookPoint(LN_F, "output"),
            "ln_final_scale": HookPoint(LN_F, "input", writable=False, derive="norm_scale"),
            "logits": HookPoint("lm_head", "output", writable=False),
        },
    )
)
