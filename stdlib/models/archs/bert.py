"""BERT-style encoders (HF `BertForMaskedLM`, or a bare `BertModel` such as sentence-transformers'
all-MiniLM-L6-v2): where each TransformerLens site lives on the native modules.

BERT is post-LN: every sub-block adds its output to the stream and THEN normalises, so the stream
between blocks is a layer norm's output. Block `encoder.layer.{l}` computes::

    attn_out   = attention.output.dense(z)             z = attention.self's output (per head)
    resid_mid  = LN_1(resid_pre + attn_out)            attention.output's output (its LayerNorm)
    mlp_post   = act(intermediate.dense(resid_mid))    intermediate's output
    mlp_out    = output.dense(mlp_post)
    resid_post = LN_2(resid_mid + mlp_out)             the layer's output

Hence, unlike the pre-LN tables: resid_mid is the normalised stream after attention (what the MLP
reads and what its residual branch carries), NOT resid_pre + attn_out, and resid_post is not
resid_mid + mlp_out. Because a module does produce resid_mid, it is read and written in place
(no write_via): an edit reaches both the MLP and the residual branch of LN_2. attn_out and mlp_out
are the dense projections' outputs, before dropout (identity in eval), the residual add and the
norm. resid_pre of layer 0 is the embeddings' layer-norm output. q, k and v are the outputs of
`attention.self.query`/`key`/`value` split into heads (BERT has no rotary or grouped heads).

What BERT does not have, and what the checker therefore refuses on it: a causal next-token
prediction (attention is bidirectional; padding is masked as keys only), and a residual stream
that is the sum of every block's writes (each block renormalises it), so no final norm, no logit
lens, no direct logit attribution, no edge-level circuit methods. "Logits" are the masked-LM
head's when the checkpoint has one (`BertForMaskedLM`, `BertForPreTraining`); a bare `BertModel`
has no head and gives logits None: read `resid_post` of the last layer (HF's last_hidden_state)
instead. Module paths are relative to the bare encoder (`model.base_model`): `base_relative`.

>>> has_mlm_head({"architectures": ["BertForMaskedLM"]}), has_mlm_head({"architectures": ["BertModel"]})
(True, False)
"""

from __future__ import annotations

from typing import Any, Mapping

from mechstudy.engine.spec import ModelInfo
from mechstudy.stdlib.models.sites import ArchTable, HookPoint, register_arch

BLOCK = "encoder.layer.{layer}"
# Checkpoint classes whose weights include the masked-LM head (the rest load as a bare encoder).
MLM_CLASSES = ("BertForMaskedLM", "BertForPreTraining")


def has_mlm_head(cfg: Mapping[str, Any]) -> bool:
    """Whether the checkpoint's config names a class that carries the masked-LM head."""
    return any(a in MLM_CLASSES for a in cfg.get("architectures") or ())


def _info(cfg: Mapping[str, Any]) -> ModelInfo:
    return ModelInfo(
        arch="bert",
        n_layers=int(cfg["num_hidden_layers"]),
        n_heads=int(cfg["num_attention_heads"]),
        d_model=int(cfg["hidden_size"]),
        d_vocab=int(cfg["vocab_size"]),
        n_ctx=int(cfg.get("max_position_embeddings") or 0) or None,
        d_mlp=int(cfg["intermediate_size"]),
        features=frozenset({"lm_head"} if has_mlm_head(cfg) else ()),
    )


def _auto_class(cfg: Mapping[str, Any]) -> str:
    # The masked-LM class only when the checkpoint has its head: never a randomly initialised head.
    return "AutoModelForMaskedLM" if has_mlm_head(cfg) else "AutoModel"


BERT = register_arch(
    ArchTable(
        model_types=("bert",),
        arch="bert",
        info=_info,
        attention=BLOCK + ".attention.self",
        auto_class=_auto_class,
        base_relative=True,
        points={
            "resid_pre": HookPoint(BLOCK, "input"),
            "resid_mid": HookPoint(BLOCK + ".attention.output", "output"),
            "resid_post": HookPoint(BLOCK, "output"),
            "attn_out": HookPoint(BLOCK + ".attention.output.dense", "output"),
            "mlp_out": HookPoint(BLOCK + ".output.dense", "output"),
            "z": HookPoint(BLOCK + ".attention.output.dense", "input", split_heads=True),
            "pattern": HookPoint(BLOCK + ".attention.self", "output", index=1, writable=False, eager_only=True),
            "mlp_post": HookPoint(BLOCK + ".intermediate", "output"),
            "q": HookPoint(BLOCK + ".attention.self.query", "output", split_heads=True),
            "k": HookPoint(BLOCK + ".attention.self.key", "output", split_heads=True),
            "v": HookPoint(BLOCK + ".attention.self.value", "output", split_heads=True),
        },
    )
)
