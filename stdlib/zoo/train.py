"""The zoo recipes: deterministic CPU training loops for `attn2` and `mini`.

A recipe is a function of (steps, seed, lr, threads) alone. It fixes torch's thread count (the
order of floating-point reductions depends on it), turns on deterministic algorithms, seeds the
weight initialisation with ``torch.manual_seed(seed)`` and draws every batch from its own
``torch.Generator``. Rerunning a recipe on the same machine gives bit-identical weights; on another
CPU the weights may differ in the last bits and the measured behaviours are what reproduce.

>>> sorted(RECIPES)
['attn2', 'mini', 'small']
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from tokenizers import Tokenizer

from mechstudy.stdlib.zoo import corpus, vocab


@dataclass
class Trained:
    """A trained zoo model: the HF model (eval mode, CPU), its tokenizer and how it was made."""

    name: str
    model: Any  # a transformers PreTrainedModel
    tokenizer: Tokenizer
    model_max_length: int
    info: dict = field(default_factory=dict)  # recipe params, threads, seconds, loss curve


@contextlib.contextmanager
def deterministic(threads: int) -> Iterator[None]:
    """Fixed thread count and deterministic kernels for the duration; restores both after."""
    old_threads, old_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of `lr`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def _fit(model: Any, next_batch: Callable[[int], torch.Tensor], steps: int, lr: float,
         log: Callable[[str], None]) -> list[list[float]]:
    """AdamW on next-token cross-entropy over every position. Returns [step, loss] every 50 steps."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98), eps=1e-8)
    warmup = min(100, max(1, steps // 10))
    curve, running = [], 0.0
    model.train()
    for step in range(steps):
        rows = next_batch(step)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, lr, warmup)
        logits = model(input_ids=rows[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        running += loss.item()
        if (step + 1) % 50 == 0 or step + 1 == steps:
            n = (step % 50) + 1
            curve.append([step + 1, round(running / n, 4)])
            log(f"step {step + 1}/{steps} loss {running / n:.4f}")
            running = 0.0
    model.eval()
    return curve


# ----------------------------------------------------------------------------------------- attn2

# Two phases of data: short rows first (48 tokens: attention spread over few tokens gives the
# previous-token/induction pair a strong enough gradient to leave the plateau within a few hundred
# steps; on 128-token rows alone 1500 steps stayed on it), then 128-token rows so the heads work at
# every position a scoring sequence uses (heads grown on 48-token rows failed at 101 tokens).
ATTN2 = dict(vocab=300, d_model=128, n_heads=4, n_layers=2, n_ctx=512,
             short_seq_len=48, short_batch=64, short_share=0.4, seq_len=128, batch=32)


def attn2_model(seed: int) -> Any:
    """A 2-layer Llama whose MLPs are exactly zero (down_proj weights zero and frozen).

    Llama gives rotary position embeddings: with learned absolute positions a model can copy
    repeats by position and never grow an induction head.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=ATTN2["vocab"], hidden_size=ATTN2["d_model"], intermediate_size=1,
        num_hidden_layers=ATTN2["n_layers"], num_attention_heads=ATTN2["n_heads"],
        num_key_value_heads=ATTN2["n_heads"], max_position_embeddings=ATTN2["n_ctx"],
        tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, pad_token_id=None,
        attention_bias=True, mlp_bias=False, attn_implementation="eager",
        # TransformerLens' 0.8 / sqrt(d_model), not Llama's 0.02: with tiny weights the attention
        # scores start near zero and the QK circuits take far longer to leave the plateau.
        initializer_range=0.8 / math.sqrt(ATTN2["d_model"]),
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    for layer in model.model.layers:
        with torch.no_grad():
            layer.mlp.down_proj.weight.zero_()
        # Nothing feeding only the MLP can learn: freezing keeps it at its (inert) init.
        for p in [*layer.mlp.parameters(), *layer.post_attention_layernorm.parameters()]:
            p.requires_grad_(False)
    return model


def train_attn2(steps: int = 1800, seed: int = 0, lr: float = 2e-3, threads: int = 1,
                log: Callable[[str], None] = lambda msg: None) -> Trained:
    """Train attn2 on `corpus.repeat_batch` rows (offsets that are multiples of 10 held out):
    the first `short_share` of the steps on short rows, the rest on full-length rows."""
    with deterministic(threads):
        t0 = time.perf_counter()
        model = attn2_model(seed)
        gen = torch.Generator().manual_seed(seed + 1)
        short_steps = int(steps * ATTN2["short_share"])

        def next_batch(step: int) -> torch.Tensor:
            short = step < short_steps
            batch = ATTN2["short_batch"] if short else ATTN2["batch"]
            seq_len = ATTN2["short_seq_len"] if short else ATTN2["seq_len"]
            return corpus.repeat_batch(gen, batch, seq_len + 1, ATTN2["vocab"])

        curve = _fit(model, next_batch, steps, lr, log)
        seconds = time.perf_counter() - t0
    info = dict(recipe="attn2", steps=steps, seed=seed, lr=lr, threads=threads, short_steps=short_steps,
                **{k: ATTN2[k] for k in ("short_seq_len", "short_batch", "seq_len", "batch")},
                train_seconds=round(seconds, 1), loss_curve=curve, torch=torch.__version__)
    return Trained("attn2", model, vocab.word_tokenizer(ATTN2["vocab"]), ATTN2["n_ctx"], info)


# ------------------------------------------------------------------------------------------ mini

# Short rows first, as for attn2: in-context behaviours (IOI, induction) need attention heads that
# find a token earlier in the context, and over 128-token rows 2500 steps left IOI at chance while
# every memorised behaviour (facts, Greater-Than, sentiment) was learnt.
# init_range ~ 0.8 / sqrt(d_model) (TransformerLens' convention) rather than GPT-2's 0.02: with
# 0.02 the same run reached an IOI logit difference of 6.1 (one head doing it all), with 0.0707 10.6.
MINI = dict(d_model=128, n_heads=4, n_layers=3, n_ctx=128, n_docs=120_000, init_range=0.0707,
            short_seq_len=32, short_batch=64, short_share=0.4, seq_len=128, batch=16)


def mini_model(vocab_size: int, seed: int) -> Any:
    """GPT-2 architecture, 3 layers x 4 heads, d_model 128, no dropout, tied embeddings."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=vocab_size, n_positions=MINI["n_ctx"], n_embd=MINI["d_model"], n_layer=MINI["n_layers"],
        n_head=MINI["n_heads"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
        eos_token_id=0, tie_word_embeddings=True, attn_implementation="eager", initializer_range=MINI["init_range"],
    )
    torch.manual_seed(seed)
    return GPT2LMHeadModel(cfg)


def pack(doc_ids: list[list[int]], eos: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Documents in a seeded order joined by `eos`: (stream, start offset of each document).

    The stream begins with `eos` and wraps around, so a row may start at any document start
    or one token before it (on the separating `eos`).
    """
    order = torch.randperm(len(doc_ids), generator=gen).tolist()
    flat, starts = [eos], []
    for i in order:
        starts.append(len(flat))
        flat.extend(doc_ids[i])
        flat.append(eos)
    return torch.tensor(flat), torch.tensor(starts)


def mini_batches(stream: torch.Tensor, starts: torch.Tensor, gen: torch.Generator, batch: int,
                 seq_len: int) -> Callable[[int], torch.Tensor]:
    """Rows of seq_len + 1 tokens, each starting at a document (half of them on its leading eos)."""
    wrapped = torch.cat([stream, stream[: seq_len + 2]])
    span = torch.arange(seq_len + 1)

    def next_batch(step: int) -> torch.Tensor:
        idx = starts[torch.randint(0, len(starts), (batch,), generator=gen)]
        idx = idx - torch.randint(0, 2, (batch,), generator=gen)
        return wrapped[idx[:, None] + span]

    return next_batch


def mini_text(seed: int, extra: list[str] | None = None) -> tuple[list[str], Tokenizer, torch.Generator, torch.Tensor, torch.Tensor]:
    """mini's documents (then `extra` ones), the BPE tokenizer trained on mini's documents alone,
    the batch generator (seeded seed + 1) and the packed stream with its document starts: what mini
    trains on, and small with its varied task sentences as `extra`."""
    docs = corpus.mini_documents(MINI["n_docs"], seed)
    tok = vocab.train_bpe(docs)
    docs = docs + list(extra or ())
    doc_ids = [e.ids for e in tok.encode_batch(docs)]
    gen = torch.Generator().manual_seed(seed + 1)
    stream, starts = pack(doc_ids, tok.token_to_id(vocab.EOS), gen)
    return docs, tok, gen, stream, starts


def train_mini(steps: int = 2500, seed: int = 0, lr: float = 2e-3, threads: int = 1,
               log: Callable[[str], None] = lambda msg: None) -> Trained:
    """Train mini: corpus -> BPE tokenizer -> GPT-2 on packed documents."""
    with deterministic(threads):
        t0 = time.perf_counter()
        docs, tok, gen, stream, starts = mini_text(seed)
        model = mini_model(tok.get_vocab_size(), seed)
        short_steps = int(steps * MINI["short_share"])
        short = mini_batches(stream, starts, gen, MINI["short_batch"], MINI["short_seq_len"])
        full = mini_batches(stream, starts, gen, MINI["batch"], MINI["seq_len"])
        log(f"mini: {len(docs)} documents, {len(stream)} tokens, vocabulary {tok.get_vocab_size()}")
        curve = _fit(model, lambda step: short(step) if step < short_steps else full(step), steps, lr, log)
        seconds = time.perf_counter() - t0
    info = dict(recipe="mini", steps=steps, seed=seed, lr=lr, threads=threads, short_steps=short_steps,
                **{k: MINI[k] for k in ("short_seq_len", "short_batch", "seq_len", "batch", "init_range")},
                n_docs=len(docs), corpus_tokens=int(len(stream)),
                train_seconds=round(seconds, 1), loss_curve=curve, torch=torch.__version__)
    return Trained("mini", model, tok, MINI["n_ctx"], info)


# ----------------------------------------------------------------------------------------- small

# mini's documents (same text, same tokenizer, same held-out splits), IOI and Greater-Than sentences
# written in many ways (corpus.varied_documents: mini's ~35 templates share one skeleton, and a model
# trained on them alone keyed IOI on their wording), and rows of random one-token words with segments
# copied at varied offsets (attn2's rows): copies pay only for a previous-token head feeding an
# induction head, which the template text alone never grew in mini (prefix matching 0.03). The
# schedule is attn2's, then language: copies of 48 tokens to step 916, copies of 128 tokens to 2291,
# the model attention-only meanwhile (MLP outputs held at zero); then seven text batches (short rows
# until step 4200) for every batch of copies. What the pilots showed (2026-11-30, one thread each), in
# SMALL_PILOTS; why rotary positions, in SMALL_WHY_ROTARY.
SMALL = dict(d_model=128, n_heads=4, n_layers=2, d_mlp=512, n_ctx=256, init_range=0.0707,
             warm_short_share=0.1309, warm_long_share=0.3273, short_share=0.6, short_seq_len=48, short_batch=64,
             text_short_seq_len=32, text_short_batch=64, seq_len=128, text_batch=16, repeat_batch=32,
             repeat_tokens="words", attn_only_warm=True, copy_every=8, varied_ioi=40_000, varied_gt=15_000)
SMALL_PILOTS = (
    "Text and copies mixed from the first step, copies over the whole vocabulary: best prefix matching 0.11 "
    "after 1,500 steps. A warm-up of copies alone over the whole vocabulary: 0.40, falling to 0.21 once text "
    "came in. Copies of the corpus's 346 one-token words: with 4 layers the copies were learnt (repeated-half "
    "loss 0.21 nats) but spread over several heads, none prefix-matching above 0.06, MLPs trained or not; "
    "with 2 or 3 layers and an attention-only warm-up one head prefix-matched 0.91-0.99 by step 800-1,200 and "
    "kept it through the text phase. With one text batch per batch of copies (2 layers, 4,000 steps) IOI was "
    "weak (logit difference 3.9 on training templates, 1.6 on novel ones); three per copy batch over 5,500 steps: "
    "3 layers 5.5 / 1.4, 2 layers 8.8 / 4.6, hence 2 layers. On mini's text alone (the first small, shipped "
    "until the second build of 2026-11-30) IOI was 9.31 on training templates and 4.53 on novel ones (ratio "
    "0.49, 74% IO over S, 5 of 20 novel templates negative) and Greater-Than's 'started' form put 1.7% of the "
    "probability on years. Adding varied task sentences (40,000 IOI, 15,000 Greater-Than), 5,500 steps, three "
    "text batches per copy batch: 6.78 / 4.51 (0.67, 82%), 'started' 0.32 prob diff with 0.99 of the mass on "
    "years; 80,000 + 20,000 sentences: 7.04 / 3.57 (0.51). 7,000 steps: three text batches per copy batch "
    "8.25 / 4.72 (0.57); five: 8.91 / 7.46 (0.84, 87%, 2 templates negative) but Greater-Than's novel forms "
    "only 0.43 / 0.41 (78% > 0); five with 60,000 + 20,000 sentences: 7.44 / 4.73 (0.64); seven (shipped): "
    "8.02 / 6.52 (0.81, 83%, 3 templates negative) and Greater-Than 0.71 / 0.80 on the novel forms (100% > 0)."
)


def repeat_token_ids(tok: Tokenizer, which: str = "words") -> list[int]:
    """The token ids small's copies draw from: "words", every word of mini's corpus word pool and IOI
    name that is one token with its leading space; "all", the whole vocabulary but <|endoftext|>
    (tokens the text never uses keep untrained embeddings: pilots over it grew no sharp head)."""
    eos = tok.token_to_id(vocab.EOS)
    if which == "all":
        return [i for i in range(tok.get_vocab_size()) if i != eos]
    return corpus.one_token_words(lambda text: tok.encode(text, add_special_tokens=False).ids)


SMALL_WHY_ROTARY = (
    "Measured (2026-11-30), GPT-2 (learned absolute positions, init 0.8/sqrt(d)) on attn2's repeat rows with "
    "attn2's schedule, 1600 steps: the repeated half's loss fell from 5.7 to 1.5 at offset 50 but stayed at "
    "5.2 at offset 20, and no head past layer 0 prefix-matched (best 0.004-0.037); sinusoidal initial "
    "positions changed nothing. With rotary positions attn2 grows induction heads (0.86-0.89) on the same data. "
    "Again with small's own warm-up (GPT-2, 2 layers, copies of the corpus's one-token words, attention only, "
    "2,291 steps): it copied by position (repeated-half loss 0.32 nats at offset 50, 2.11 at 20) with no "
    "induction head (best prefix matching 0.022, previous-token 0.058)."
)


def small_model(vocab_size: int, seed: int) -> Any:
    """GPT-2's block with rotary positions: a sequential (not parallel) GPT-NeoX, 2 layers x 4 heads,
    d_model 128, GELU MLP 512, LayerNorm, biases, no dropout, untied unembedding."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cfg = GPTNeoXConfig(
        vocab_size=vocab_size, hidden_size=SMALL["d_model"], num_hidden_layers=SMALL["n_layers"],
        num_attention_heads=SMALL["n_heads"], intermediate_size=SMALL["d_mlp"], hidden_act="gelu",
        max_position_embeddings=SMALL["n_ctx"], use_parallel_residual=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 1.0},
        attention_dropout=0.0, hidden_dropout=0.0, classifier_dropout=0.0, bos_token_id=0, eos_token_id=0,
        tie_word_embeddings=False, use_cache=False, attn_implementation="eager",
        initializer_range=SMALL["init_range"],
    )
    torch.manual_seed(seed)
    return GPTNeoXForCausalLM(cfg)


def train_small(steps: int = 7000, seed: int = 0, lr: float = 2e-3, threads: int = 1,
                log: Callable[[str], None] = lambda msg: None) -> Trained:
    """Train small: copies alone (attention only), then mini's corpus and the varied task sentences,
    with one batch of copies in eight."""
    with deterministic(threads):
        t0 = time.perf_counter()
        docs, tok, gen, stream, starts = mini_text(seed, corpus.varied_documents(SMALL["varied_ioi"], SMALL["varied_gt"], seed))
        eos = tok.token_to_id(vocab.EOS)
        n_vocab = tok.get_vocab_size()
        model = small_model(n_vocab, seed)
        warm_short = int(steps * SMALL["warm_short_share"])
        warm_steps = int(steps * SMALL["warm_long_share"])
        short_steps = int(steps * SMALL["short_share"])
        short = mini_batches(stream, starts, gen, SMALL["text_short_batch"], SMALL["text_short_seq_len"])
        full = mini_batches(stream, starts, gen, SMALL["text_batch"], SMALL["seq_len"])

        rep_ids = torch.tensor([eos, *repeat_token_ids(tok, SMALL["repeat_tokens"])])
        now = [0]
        if SMALL["attn_only_warm"]:
            # Attention-only during the warm-up, as attn2 (whose heads come out sharp): each MLP's output
            # projection starts at zero and its gradient is zeroed until warm_steps, so AdamW leaves it
            # exactly zero; afterwards the MLPs learn from that zero start.
            for layer in model.gpt_neox.layers:
                out = layer.mlp.dense_4h_to_h
                with torch.no_grad():
                    out.weight.zero_()
                    out.bias.zero_()
                for prm in (out.weight, out.bias):
                    prm.register_hook(lambda g: g * 0.0 if now[0] < warm_steps else g)

        def repeats(batch: int, seq_len: int) -> torch.Tensor:
            return rep_ids[corpus.repeat_batch(gen, batch, seq_len + 1, len(rep_ids), bos=0)]

        def next_batch(step: int) -> torch.Tensor:
            now[0] = step
            if step < warm_short:
                return repeats(SMALL["short_batch"], SMALL["short_seq_len"])
            if step < warm_steps or (step - warm_steps) % SMALL["copy_every"] == SMALL["copy_every"] - 1:
                return repeats(SMALL["repeat_batch"], SMALL["seq_len"])
            return short(step) if step < short_steps else full(step)

        log(f"small: {len(docs)} documents, {len(stream)} tokens, vocabulary {n_vocab}")
        curve = _fit(model, next_batch, steps, lr, log)
        seconds = time.perf_counter() - t0
    info = dict(recipe="small", steps=steps, seed=seed, lr=lr, threads=threads, warm_short_steps=warm_short,
                warm_steps=warm_steps, short_steps=short_steps,
                **{k: SMALL[k] for k in ("short_seq_len", "short_batch", "text_short_seq_len", "text_short_batch",
                                         "seq_len", "text_batch", "repeat_batch", "init_range", "repeat_tokens",
                                         "attn_only_warm", "copy_every", "varied_ioi", "varied_gt")},
                repeat_vocab=len(rep_ids) - 1, n_docs=len(docs), corpus_tokens=int(len(stream)),
                why_rotary=SMALL_WHY_ROTARY, pilots=SMALL_PILOTS,
                train_seconds=round(seconds, 1), loss_curve=curve, torch=torch.__version__)
    return Trained("small", model, tok, SMALL["n_ctx"], info)


RECIPES: dict[str, Callable[..., Trained]] = {"attn2": train_attn2, "mini": train_mini, "small": train_small}
