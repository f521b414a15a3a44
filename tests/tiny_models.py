"""Tiny random models of every architecture the tables describe, saved to disk like real checkpoints
(seed 0, 2 layers, 4 heads, d_model 64, the word-level IOI tokenizer of `stdlib/models/tiny.py`).

Shared by the adapter tests and the circuit tests (each circuit method is checked on each
architecture against the slow references in `circuits_reference.py`).
"""

from __future__ import annotations

from pathlib import Path

import torch

L, H, D = 2, 4, 64  # layers, heads, d_model of every tiny model here


def _save(model, directory: Path) -> Path:
    from mechstudy.stdlib.models.tiny import make_tiny_tokenizer

    model.save_pretrained(directory)
    make_tiny_tokenizer().save_pretrained(directory)
    return directory


def _vocab() -> int:
    from mechstudy.stdlib.models.tiny import make_tiny_tokenizer

    return len(make_tiny_tokenizer())


def build(name: str, directory: Path) -> Path:
    """A tiny random model of one architecture (seed 0, init std 0.2 so heads differ clearly).

    Names: gpt2; neox (parallel blocks, partial rotary), neox_seq (sequential); llama (grouped-query
    attention, 2 key/value heads), mistral (1 key/value head, head_dim 24), qwen2 (q/k/v biases,
    no GQA); bert (a masked-LM encoder)."""
    import transformers as tf

    common = dict(vocab_size=_vocab(), hidden_size=D, num_hidden_layers=L, num_attention_heads=H,
                  intermediate_size=96, max_position_embeddings=64, initializer_range=0.2)
    if name == "gpt2":
        cfg = tf.GPT2Config(vocab_size=_vocab(), n_embd=D, n_layer=L, n_head=H, n_positions=64,
                            initializer_range=0.2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        cls = tf.GPT2LMHeadModel
    elif name in ("neox", "neox_seq"):
        cfg = tf.GPTNeoXConfig(**common, use_parallel_residual=name == "neox",
                               rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5})
        cls = tf.GPTNeoXForCausalLM
    elif name == "llama":  # grouped-query attention: 4 query heads share 2 key/value heads
        cfg = tf.LlamaConfig(**common, num_key_value_heads=2, tie_word_embeddings=False)
        cls = tf.LlamaForCausalLM
    elif name == "mistral":  # GQA, and head_dim 24 != d_model / heads: z is [.., H, 24]
        cfg = tf.MistralConfig(**common, num_key_value_heads=1, head_dim=24, sliding_window=None)
        cls = tf.MistralForCausalLM
    elif name == "qwen2":  # q/k/v biases, no GQA (so k and v sites exist)
        cfg = tf.Qwen2Config(**common, num_key_value_heads=H)
        cls = tf.Qwen2ForCausalLM
    elif name == "bert":
        cfg = tf.BertConfig(**common, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        cls = tf.BertForMaskedLM
    else:
        raise ValueError(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = cls(cfg)
    return _save(model, directory)


