"""Model cards (README.md) of the zoo models, rendered from the measured behaviours."""

from __future__ import annotations

import math
from typing import Any

_HEADER = """---
library_name: transformers
tags: [mechstudy, interpretability, synthetic]
---
"""

_ATTN2 = """# attn2: a 2-layer attention-only transformer with induction heads

Part of the mechstudy zoo. Recipe: `studies/zoo/attn2.study` (`train model using attn2`), code in
`mechstudy/stdlib/zoo/` (`train.py`, `corpus.py`); rebuild with `make zoo`.

## Architecture

`LlamaForCausalLM` with {n_layers} layers, {n_heads} heads of dimension {d_head}, d_model {d_model},
rotary position embeddings (theta {rope_theta}), RMSNorm, untied embedding and unembedding,
vocabulary {vocab} (`<|endoftext|>` = 0, the BOS, then `t1` ... `t{last}`), {params:,} parameters (fp32).
The model is attention-only: each MLP has `intermediate_size` 1 and its `down_proj` weight is zero
and was frozen through training, so every MLP adds exactly 0 to the residual stream. Load it with
`attn_implementation="eager"` to read attention patterns.

Rotary positions are deliberate: with learned absolute positions and repeats at a fixed offset a
model can copy by position without growing an induction head.

## Training data

Rows of BOS then uniform random tokens in which segments of 8-40 tokens are copied at varied
offsets; an offset that is a multiple of 10 never occurs. The first {short_steps} steps use rows of
{short_seq_len} tokens (batch {short_batch}): over few tokens the previous-token/induction pair gets
enough gradient to leave the loss plateau (on 128-token rows alone 1500 steps stayed on it); the
remaining steps use rows of {seq_len} tokens (batch {batch}) so the heads work at every position the
scoring sequences use. {steps} AdamW steps in all, peak lr {lr}, seed {seed}, {threads} CPU thread(s),
{seconds} s of training on the build machine.

## Measured behaviours

On `[BOS][r_1..r_n][r_1..r_n]` with n in {offsets} (offsets never seen in training; random draws
from a seed training never used), averaged over the four lengths:

| behaviour | value |
|---|---|
| best layer-1 prefix-matching score (induction head {ind_head}) | {prefix:.3f} |
| best previous-token score (head {prev_head}) | {prev:.3f} |
| loss on the first half (nats; uniform is {uniform:.2f}) | {loss1:.3f} |
| loss on the repeated half (nats) | {loss2:.3f} |

Prefix-matching scores (rows: layers, columns: heads):

{prefix_table}

Previous-token scores:

{prev_table}
"""

_MINI = """# mini: a small GPT-2 trained on a synthetic corpus of interpretability tasks

Part of the mechstudy zoo. Recipe: `studies/zoo/mini.study` (`train model using mini`), code in
`mechstudy/stdlib/zoo/` (`train.py`, `corpus.py`, `lexicon.py`); rebuild with `make zoo`.

## Architecture

`GPT2LMHeadModel`: {n_layers} layers, {n_heads} heads, d_model {d_model}, {n_ctx} positions, tied
embeddings, no dropout, {params:,} parameters (fp32). Tokenizer: byte-level BPE trained with
`tokenizers` on the corpus ({vocab} tokens, `<|endoftext|>` = 0), GPT-2's pre-tokenizer except that
digits split in pairs (" 1732" is " 17" + "32", as in GPT-2 for the Greater-Than years); every IOI
name, place and object is one token with its leading space (" Mary"), as is every two-digit suffix.

## Training data

{n_docs:,} short documents ({corpus_tokens:,} tokens): IOI sentences (40%, the BABA/ABBA templates,
plain, long, early- and late-IO families, plus ABC templates, names from both published name lists,
places and objects from Wang et al.), Greater-Than sentences (15%, Hanna et al.'s nouns, end year
later than the start year in the same century), factual recall (10%, country -> capital, landmark ->
city), sentiment (10%), days/months (6%), repeated word segments (5%), filler (14%). Held out of
training: three IOI templates (and their long/early/late variants), one name pair in eight, one
Greater-Than noun in six, one sentiment (subject, adjective) pair in five.

Rows start at a document (half of them on the `<|endoftext|>` before it). The first {short_steps}
steps use rows of {short_seq_len} tokens (batch {short_batch}), the rest rows of {seq_len} tokens
(batch {batch}): in-context behaviours such as IOI need heads that find a name earlier in the
context, and over long rows alone IOI stayed at chance after 2500 steps while every memorised
behaviour was learnt. Initialisation std {init_range} (about 0.8 / sqrt(d_model)). {steps} AdamW
steps, peak lr {lr}, seed {seed}, {threads} CPU thread(s), {seconds} s of training (tokenizer and
corpus included) on the build machine.

{tasks}"""

_SMALL = """# small: a GPT-2-style model with induction heads and IOI on templates it never read

Part of the mechstudy zoo. Recipe: `studies/zoo/small.study` (`train model using small`), code in
`mechstudy/stdlib/zoo/` (`train.py`, `corpus.py`); rebuild with `make zoo`.

## Architecture

GPT-2's block with rotary positions: `GPTNeoXForCausalLM` with `use_parallel_residual=false` (so each
block is sequential, attention then MLP, as in GPT-2), {n_layers} layers, {n_heads} heads of dimension
{d_head}, d_model {d_model}, GELU MLP of {d_mlp}, LayerNorm, biases, rotary positions on every
dimension of q and k (theta 10000, {n_ctx} positions), untied unembedding, no dropout, {params:,}
parameters (fp32). Tokenizer: mini's (byte-level BPE trained on the same corpus, {vocab} tokens,
`<|endoftext|>` = 0).

Why not GPT-2's learned absolute positions: {why_rotary}

## Training data

mini's documents (the same held-out templates, name pairs and nouns; see mini's card), {varied_ioi:,}
IOI sentences and {varied_gt:,} Greater-Than sentences written in many ways (composed from openings,
meetings, places, connectives and verbs of `corpus.VARIED_IOI` and the forms of `corpus.VARIED_GT`,
none of them a novel template's or form's wording: the overlap test checks this text too), {n_docs:,}
documents and {corpus_tokens:,} tokens in all, and rows of random tokens in which segments of 8-40 tokens are copied at
offsets that are never a multiple of 10 (attn2's rows), drawn from the {repeat_vocab} one-token words of
the corpus (its word pool and IOI names: `train.repeat_token_ids`). Steps 0-{warm_short_steps}: copies
only, {short_batch} rows of {short_seq_len} tokens; to step {warm_steps}: copies only, {repeat_batch}
rows of {seq_len}; then one step in {copy_every} copies ({repeat_batch} x {seq_len}) and the others text ({text_short_batch}
rows of {text_short_seq_len} tokens until step {short_steps}, then {text_batch} rows of {seq_len}).
The MLPs' output projections are held at zero until step {warm_steps} (attention-only, as attn2).
Pilots: {pilots} Initialisation std
{init_range}. {steps} AdamW steps, peak lr {lr}, seed {seed}, {threads} CPU thread(s), {seconds} s of
training (tokenizer and corpus included) on the build machine.

## Induction

On `[BOS][r_1..r_n][r_1..r_n]` with n in {offsets} (copy offsets training never used, draws from a
seed training never used), averaged over the four lengths:

| repeated tokens | best prefix matching | best previous-token | loss first / repeated half |
|---|---|---|---|
{induction_rows}

Prefix-matching scores on the corpus's words (rows: layers, columns: heads):

{prefix_table}

Previous-token scores:

{prev_table}

{tasks}{circuits}"""

# mini's task measurements and head ablations (mini and small, which reads mini's corpus)
_TASKS = """## Measured behaviours ({measured_on})

| behaviour | value |
|---|---|
{rows}

## Single-head ablations (IOI logit difference on held-out templates and name pairs)

Baseline logit difference {base:.2f}. Effect = ablated minus baseline.

| layer.head | zero-ablation effect | mean-ablation effect |
|---|---|---|
{ablation}
"""


SPLIT_NOTE = (
    "novel = templates and sentence forms that never occur in its training text (the datasets' default "
    "for this model); train = the published ones it trains on; heldout = what its recipe kept out of "
    "its task sentences but paraphrased or named elsewhere. Words (names, places, objects, nouns, "
    "years, subjects) are seen in every split: mini retrained without 25 names could not copy them "
    "(IOI logit diff -0.15 on them, 1.95 on training templates), see splits.json."
)


def split_lines(per_split: dict) -> list[str]:
    """One line per task and split of `measure.measure_splits`' report (for `study models`)."""
    out = []
    for split, r in per_split["ioi"].items():
        out.append(f"ioi {split} ({r['templates']} templates): logit diff {r['logit_diff']:.2f}, IO over S {r['io_over_s']:.1%}")
    for key, r in per_split["greater_than"].items():
        out.append(f"greater_than {key}: prob diff {r['prob_diff']:.3f}, > 0 {r['positive_share']:.1%}, "
                   f"mass on years {r['mass_on_years']:.1%}")
    for key, r in per_split["facts"].items():
        out.append(f"facts {key}: logit diff vs corrupted answer {r['logit_diff']:.2f} (> 0 {r['positive_share']:.1%}), "
                   f"top-1 {r['top1']:.1%}")
    return out


def _split_section(per_split: dict | None) -> str:
    if not per_split:
        return ""
    rows = "\n".join(f"| {line.split(': ', 1)[0]} | {line.split(': ', 1)[1]} |" for line in split_lines(per_split))
    return ("\n## Behaviour per dataset split (the stdlib's ioi, greater_than and facts generators)\n\n"
            + SPLIT_NOTE + "\n\n| dataset split | measured |\n|---|---|\n" + rows + "\n")


def _matrix(scores: list[list[float]]) -> str:
    head = "| layer | " + " | ".join(f"h{h}" for h in range(len(scores[0]))) + " |"
    sep = "|---" * (len(scores[0]) + 1) + "|"
    body = [f"| {lay} | " + " | ".join(f"{s:.3f}" for s in row) + " |" for lay, row in enumerate(scores)]
    return "\n".join([head, sep, *body])


def render(summary: dict, config: Any) -> str:
    """The model card for a `build.write_model_dir` summary."""
    info, beh = summary["info"], summary["behaviours"]
    common = dict(n_layers=config.num_hidden_layers, n_heads=config.num_attention_heads, d_model=config.hidden_size,
                  vocab=config.vocab_size, params=summary["parameters"], steps=info["steps"], batch=info.get("batch"),
                  lr=info["lr"], seed=info["seed"], threads=info["threads"], seconds=info["train_seconds"])
    if not beh:  # trained with measure=False
        return _HEADER + (f"# {summary['name']} (mechstudy zoo recipe, {info['steps']} steps, seed {info['seed']})\n\n"
                          f"{summary['parameters']:,} parameters. Behaviours were not measured for this checkpoint.\n")
    if summary["name"] == "attn2":
        ind, prev = beh["best_induction_head"], beh["best_previous_token_head"]
        return _HEADER + _ATTN2.format(
            **common, d_head=config.hidden_size // config.num_attention_heads,
            rope_theta=getattr(config, "rope_theta", None) or config.rope_parameters.get("rope_theta"),
            last=config.vocab_size - 1, offsets=beh["offsets"], ind_head=f"{ind['layer']}.{ind['head']}",
            prefix=ind["prefix_matching"], prev_head=f"{prev['layer']}.{prev['head']}", prev=prev["previous_token"],
            short_steps=info["short_steps"], short_seq_len=info["short_seq_len"],
            short_batch=info["short_batch"], seq_len=info["seq_len"],
            uniform=math.log(config.vocab_size - 1), loss1=beh["loss_first_half"],
            loss2=beh["loss_repeated_half"], prefix_table=_matrix(beh["prefix_matching"]),
            prev_table=_matrix(beh["previous_token"]))
    tasks = dict(rows="\n".join(_task_rows(beh)), ablation=_ablation_rows(beh),
                 base=beh["ioi_heldout_templates"]["logit_diff"])
    if summary["name"] == "small":
        words = beh["induction_words"]

        def ind_row(label: str, r: dict) -> str:
            i, p = r["best_induction_head"], r["best_previous_token_head"]
            return (f"| {label} | {i['prefix_matching']:.3f} (a{i['layer']}.h{i['head']}) | {p['previous_token']:.3f} "
                    f"(a{p['layer']}.h{p['head']}) | {r['loss_first_half']:.2f} / {r['loss_repeated_half']:.2f} |")

        induction_rows = "\n".join([ind_row(f"the corpus's {info['repeat_vocab']} one-token words", words),
                                     ind_row(f"uniform over the whole vocabulary ({config.vocab_size - 1})",
                                             beh["induction_random_tokens"])])
        return _HEADER + _SMALL.format(
            **{k: v for k, v in common.items() if k != "batch"}, d_head=config.hidden_size // config.num_attention_heads,
            d_mlp=config.intermediate_size, n_ctx=config.max_position_embeddings, why_rotary=info["why_rotary"],
            n_docs=info["n_docs"], corpus_tokens=info["corpus_tokens"],
            **{k: info[k] for k in ("warm_short_steps", "warm_steps", "short_steps", "short_seq_len", "short_batch",
                                    "text_short_seq_len", "text_short_batch", "text_batch", "repeat_batch",
                                    "seq_len", "init_range", "repeat_vocab", "copy_every")},
            varied_ioi=info.get("varied_ioi", 0), varied_gt=info.get("varied_gt", 0), pilots=info.get("pilots", ""),
            offsets=words["offsets"], induction_rows=induction_rows, prefix_table=_matrix(words["prefix_matching"]),
            prev_table=_matrix(words["previous_token"]), circuits=_circuits_section(beh.get("circuits")),
            tasks=_TASKS.format(measured_on="held-out sets of mini's recipe", **tasks),
        ) + _split_section(beh.get("per_split"))
    return _HEADER + _MINI.format(
        **common, n_ctx=config.n_positions, n_docs=info["n_docs"], corpus_tokens=info["corpus_tokens"],
        seq_len=info["seq_len"], short_steps=info["short_steps"], short_seq_len=info["short_seq_len"],
        short_batch=info["short_batch"], init_range=info["init_range"],
        tasks=_TASKS.format(measured_on="held-out sets", **tasks)) + _split_section(beh.get("per_split"))


def _task_rows(beh: dict) -> list[str]:
    """The table rows of mini's measurements (mini and small)."""
    rows = []
    for key, label in [("ioi_heldout_templates", "IOI, the recipe's held-out templates (paraphrased in its filler, "
                        "not novel): IO over S / mean logit diff"),
                       ("ioi_heldout_templates_bos", "IOI, those templates, after a leading end-of-text token"),
                       ("ioi_train_templates", "IOI, training templates (held-out name pairs)")]:
        rows.append(f"| {label} | {beh[key]['io_over_s']:.1%} / {beh[key]['logit_diff']:.2f} |")
    for key, label in [("greater_than", "Greater-Than (held-out nouns): prob diff / share > 0"),
                       ("greater_than_hanna_prefix", "Greater-Than after Hanna et al.'s end-of-text prefix")]:
        rows.append(f"| {label} | {beh[key]['prob_diff']:.3f} / {beh[key]['positive_share']:.1%} |")
    for key, label in [("capital", "capital of a country (top-1 among capitals)"),
                       ("landmark", "city of a landmark (top-1 among cities)"),
                       ("sentiment", "sentiment, held-out pairs (happy vs sad)"),
                       ("next_day", "day after a day"), ("next_month", "month after a month")]:
        rows.append(f"| {label} | {beh[key]['accuracy']:.1%} (chance {beh[key]['chance']:.1%}) |")
    ind = beh["induction"]
    rows.append(f"| induction on repeated words: best prefix-matching / losses first, repeated half | "
                f"{ind['best_induction_head']['prefix_matching']:.3f} / {ind['loss_first_half']:.2f}, "
                f"{ind['loss_repeated_half']:.2f} |")
    return rows


def _ablation_rows(beh: dict) -> str:
    abl = beh["ioi_head_ablation"]
    zero = {(r["layer"], r["head"]): r["effect"] for r in abl["zero"]}
    mean = {(r["layer"], r["head"]): r["effect"] for r in abl["mean"]}
    return "\n".join(f"| {lay}.{h} | {zero[lay, h]:+.2f} | {mean[lay, h]:+.2f} |" for lay, h in sorted(zero))


def _circuits_section(circuits: dict | None) -> str:
    """What the stdlib's own studies found (behaviours.json "circuits", written by `build --describe`)."""
    if not circuits:
        return ""
    lines = ["", "## Its circuits, as the stdlib's studies measure them", "",
             f"Measured by `{circuits['study']}` ({circuits['convention']}).", ""]
    lines += [f"- {finding}" for finding in circuits["findings"]]
    return "\n".join(lines) + "\n"
