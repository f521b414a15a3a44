"""The held-out measurement sets of the zoo models and the reports written to ``behaviours.json``.

`measure_attn2` scores induction on ``[BOS][r][r]`` with half-lengths 20, 30, 40, 50: offsets that
are multiples of 10, which attn2 never saw in training, on token draws of a seed training never used.
`measure_mini` scores each task of the mini corpus on what `corpus` held out of training;
`measure_small` does both (small reads mini's corpus plus attn2-style repeat rows).

Prompts are measured as written (no BOS) and, for IOI and Greater-Than, also after ``<|endoftext|>``
(Hanna et al. prefix "<|endoftext|> "; TransformerLens prepends a BOS): both forms occur in training.
"""

from __future__ import annotations

import random
from typing import Any

import torch
from tokenizers import Tokenizer

from mechstudy.stdlib.zoo import behaviours as B
from mechstudy.stdlib.zoo import corpus, lexicon as lx

EVAL_SEED = 20_231  # never a training seed of the recipes' defaults
INDUCTION_HALVES = (20, 30, 40, 50)


def measure_attn2(model: Any, n_seqs: int = 64, halves: tuple[int, ...] = INDUCTION_HALVES) -> dict:
    """Induction behaviour of an attention-only model, averaged over `halves` (and per half)."""
    per_half = {}
    vocab = model.config.vocab_size
    for half in halves:
        assert not corpus.offset_seen_in_training(half)
        per_half[half] = B.induction_scores(model, corpus.repeated_random_tokens(n_seqs, half, vocab, EVAL_SEED + half))
    return _summarise_induction(per_half)


def _summarise_induction(per_half: dict[int, dict]) -> dict:
    mean = lambda key: torch.tensor([r[key] for r in per_half.values()]).mean(0)  # noqa: E731
    prefix, prev = mean("prefix_matching"), mean("previous_token")
    last = prefix.shape[0] - 1
    lay, head, score = B.best_head(prefix.tolist(), layer=last)
    play, phead, pscore = B.best_head(prev.tolist())
    return {
        "offsets": sorted(per_half),
        "prefix_matching": [[round(x, 4) for x in row] for row in prefix.tolist()],
        "previous_token": [[round(x, 4) for x in row] for row in prev.tolist()],
        "best_induction_head": {"layer": lay, "head": head, "prefix_matching": round(score, 4)},
        "best_previous_token_head": {"layer": play, "head": phead, "previous_token": round(pscore, 4)},
        "loss_first_half": round(float(mean("loss_first_half")), 4),
        "loss_repeated_half": round(float(mean("loss_repeated_half")), 4),
        "per_offset": {str(h): {"best_prefix_matching": round(B.best_head(r["prefix_matching"], last)[2], 4),
                                "loss_first_half": round(r["loss_first_half"], 4),
                                "loss_repeated_half": round(r["loss_repeated_half"], 4)}
                       for h, r in per_half.items()},
    }


# ------------------------------------------------------------------------------------------ mini


def token(tok: Tokenizer, text: str) -> int:
    """The single token of `text` (raises if it is not one token)."""
    ids = tok.encode(text).ids
    if len(ids) != 1:
        raise ValueError(f"{text!r} is {len(ids)} tokens, expected one")
    return ids[0]


def ioi_set(n: int, split: str, seed: int = EVAL_SEED) -> list[dict]:
    """IOI prompts on held-out name pairs, on the held-out templates ("heldout") or the training
    templates ("train"). Each item: prompt text (ending before the last name), io, s."""
    rng = random.Random(seed)
    ioi, names = corpus.reference("ioi"), corpus.ioi_names()
    pairs = [(a, b) for a in names for b in names if a != b and corpus.ioi_pair_held_out(a, b)]
    templates = corpus.ioi_templates(split)
    out = []
    for _ in range(n):
        a, b = rng.choice(pairs)
        t = rng.choice(templates)
        t = t[: t.rindex(" [A]")]
        text = corpus.fill(t, A=a, B=b, PLACE=rng.choice(ioi["PLACES"]), OBJECT=rng.choice(ioi["OBJECTS"]))
        out.append({"prompt": text, "io": " " + a, "s": " " + b})
    return out


def encode_ioi(tok: Tokenizer, items: list[dict], bos: bool) -> tuple[list[list[int]], list[int], list[int]]:
    pre = [token(tok, corpus.EOS)] if bos else []
    return ([pre + tok.encode(it["prompt"]).ids for it in items],
            [token(tok, it["io"]) for it in items], [token(tok, it["s"]) for it in items])


def greater_than_set(n: int, seed: int = EVAL_SEED) -> list[dict]:
    """Hanna et al.'s clean sentence on held-out nouns, centuries 11-17, start years YY in 02..98."""
    rng = random.Random(seed)
    nouns, form = corpus.gt_nouns("heldout"), corpus.reference("greater_than")["hanna_clean_sentence"]
    out = []
    for _ in range(n):
        century, yy = rng.randint(11, 17), rng.randint(2, 98)
        out.append({"prompt": form.format(noun=rng.choice(nouns), year=f"{century}{yy:02d}", century=century), "yy": yy})
    return out


def _choice_set(tok: Tokenizer, prompts: list[str], answers: list[str], candidates: list[str]) -> dict:
    return {"prompts": [tok.encode(p).ids for p in prompts], "answers": [token(tok, " " + a) for a in answers],
            "candidates": [token(tok, " " + c) for c in dict.fromkeys(candidates)]}


def choice_sets(tok: Tokenizer) -> dict[str, dict]:
    """Factual recall, sentiment (held-out subject/adjective pairs) and calendar prompt sets."""
    countries, landmarks = sorted(lx.CAPITALS), sorted(lx.LANDMARKS)
    senti = [(s, a, a in lx.POSITIVE) for s in lx.SENTIMENT_SUBJECTS for a in lx.POSITIVE + lx.NEGATIVE
             if corpus.sentiment_pair_held_out(s, a)]
    days, months = lx.DAYS, lx.MONTHS
    return {
        "capital": _choice_set(tok, [f"The capital of {c} is" for c in countries],
                               [lx.CAPITALS[c] for c in countries], list(lx.CAPITALS.values())),
        "landmark": _choice_set(tok, [f"The {x} is in the city of" for x in landmarks],
                                [lx.LANDMARKS[x] for x in landmarks], list(lx.LANDMARKS.values())),
        "sentiment": _choice_set(tok, [f"The {s} was {a}, so I felt" for s, a, _ in senti],
                                 ["happy" if pos else "sad" for *_, pos in senti], ["happy", "sad"]),
        "next_day": _choice_set(tok, [f"The day after {d} is" for d in days],
                                [days[(i + 1) % 7] for i in range(7)], days),
        "next_month": _choice_set(tok, [f"The month after {m} is" for m in months],
                                  [months[(i + 1) % 12] for i in range(12)], months),
    }


def mini_induction(model: Any, tok: Tokenizer, n_seqs: int = 32, half: int = 20) -> dict:
    """Induction on repeated random corpus words (single tokens), after a leading <|endoftext|>."""
    words = [w for w in corpus._word_pool() if len(tok.encode(" " + w).ids) == 1]
    gen = torch.Generator().manual_seed(EVAL_SEED)
    ids = torch.tensor([token(tok, " " + w) for w in words])
    r = ids[torch.stack([torch.randperm(len(ids), generator=gen)[:half] for _ in range(n_seqs)])]
    seqs = torch.cat([torch.full((n_seqs, 1), token(tok, corpus.EOS)), r, r], dim=1)
    return _summarise_induction({half: B.induction_scores(model, seqs)})


def measure_mini(model: Any, tok: Tokenizer, n_ioi: int = 256, n_gt: int = 200, ablation: bool = True) -> dict:
    """Every behaviour of mini on its held-out sets (see the module docstring)."""
    report: dict[str, Any] = {}
    heldout = ioi_set(n_ioi, "heldout")
    for name, items in (("ioi_heldout_templates", heldout), ("ioi_train_templates", ioi_set(n_ioi, "train"))):
        for bos in (False, True):
            prompts, io, s = encode_ioi(tok, items, bos)
            m = B.ioi_metrics(B.last_logits(model, prompts), io, s)
            report[name + ("_bos" if bos else "")] = {k: round(v, 4) for k, v in m.items()}
    gt = greater_than_set(n_gt)
    yy_tokens = [token(tok, f"{i:02d}") for i in range(100)]
    for bos in (False, True):
        pre = [token(tok, corpus.EOS)] + tok.encode(" ").ids if bos else []
        logits = B.last_logits(model, [pre + tok.encode(it["prompt"]).ids for it in gt])
        m = B.greater_than_metrics(logits, [it["yy"] for it in gt], yy_tokens)
        report["greater_than" + ("_hanna_prefix" if bos else "")] = {k: round(v, 4) for k, v in m.items()}
    for name, cs in choice_sets(tok).items():
        m = B.choice_accuracy(B.last_logits(model, cs["prompts"]), cs["answers"], cs["candidates"])
        report[name] = {"n": len(cs["prompts"]), **{k: round(v, 4) for k, v in m.items()}}
    report["induction"] = mini_induction(model, tok)
    if ablation:
        prompts, io, s = encode_ioi(tok, heldout[:128], False)
        report["ioi_head_ablation"] = {mode: B.head_ablation_table(model, prompts, io, s, mode) for mode in ("zero", "mean")}
    return report


def measure_small(model: Any, tok: Tokenizer, n_seqs: int = 64) -> dict:
    """mini's measurements (small reads mini's corpus and tokenizer) plus induction scored as attn2's
    (copy offsets 20-50, which no training row used; draws from a seed training never used) on two
    kinds of repeated tokens: the one-token words of its corpus that its repeat rows draw from
    ("induction_words"), and uniform random tokens of the whole vocabulary ("induction_random_tokens")."""
    from mechstudy.stdlib.zoo.train import repeat_token_ids

    report = measure_mini(model, tok)
    eos = token(tok, corpus.EOS)
    words = torch.tensor(repeat_token_ids(tok, "words"))
    for key, pool in (("induction_words", words), ("induction_random_tokens", None)):
        per_half = {}
        for half in INDUCTION_HALVES:
            assert not corpus.offset_seen_in_training(half)
            seqs = corpus.repeated_random_tokens(n_seqs, half, model.config.vocab_size, EVAL_SEED + half, bos=eos, pool=pool)
            per_half[half] = B.induction_scores(model, seqs)
        report[key] = _summarise_induction(per_half)
    return report


# ------------------------------------------------------------------------------- per split (mini)

SPLIT_N = {"ioi": 256, "greater_than": 200, "facts": 200}


@torch.no_grad()
def _answer_logits(model: Any, art: Any) -> torch.Tensor:
    """Logits at each prompt's answer position of a dataset artifact's clean prompts (right padded)."""
    out = model(input_ids=art.tensors["clean_ids"], attention_mask=art.tensors["attention_mask"]).logits
    return out[torch.arange(out.shape[0]), art.tensors["answer_pos"]].float()


def _logit_diff(logits: torch.Tensor, art: Any) -> torch.Tensor:
    io, s = art.tensors["io_id"], art.tensors["s_id"]
    return logits.gather(1, io[:, None])[:, 0] - logits.gather(1, s[:, None])[:, 0]


def measure_splits(model: Any, hf_tok: Any, seed: int = EVAL_SEED) -> dict:
    """mini's behaviour on each split of the ioi, greater_than and facts datasets, measured on the
    very prompts the dataset generators make (``stdlib/datasets``; `seed` is never a study's).

    ioi: mean logit(IO) - logit(S) and the share of prompts where it is positive, per split and per
    novel template; greater_than: mean prob diff, share > 0 and probability mass on the 100 year
    tokens, per split and form; facts: mean logit(answer) - logit(corrupted subject's answer), its
    share > 0, and top-1 accuracy over the whole vocabulary, per split and relation.
    """
    from mechstudy.stdlib.datasets import facts as F, greater_than as GT, ioi as IOI

    r4 = lambda x: round(float(x), 4)  # noqa: E731
    out: dict[str, Any] = {"ioi": {}, "greater_than": {}, "facts": {}, "seed": seed}
    for split in ("train", "heldout", "novel"):
        art = IOI.generate(hf_tok, n=SPLIT_N["ioi"], seed=seed, split=split)
        ld = _logit_diff(_answer_logits(model, art), art)
        entry = {"logit_diff": r4(ld.mean()), "io_over_s": r4((ld > 0).float().mean()), "n": len(ld),
                 "templates": art.data["templates_in_split"]}
        if split == "novel":
            t = art.tables["prompts"]["template"].to_list()
            entry["per_template"] = {str(k): r4(ld[[i for i, x in enumerate(t) if x == k]].mean()) for k in sorted(set(t))}
        out["ioi"][split] = entry
    idx = torch.arange(100)[None]
    for split in ("train", "heldout", "novel"):
        for form in GT.forms_of(split):
            art = GT.generate(hf_tok, n=SPLIT_N["greater_than"], seed=seed, split=split, form=form)
            p = _answer_logits(model, art).softmax(-1)[:, art.tensors["year_tokens"]]
            later = idx > art.tensors["yy"][:, None]
            pd = (p * later).sum(1) - (p * ~later).sum(1)
            out["greater_than"][f"{split}/{form}"] = {"prob_diff": r4(pd.mean()), "positive_share": r4((pd > 0).float().mean()),
                                                      "mass_on_years": r4(p.sum(1).mean()), "n": len(pd)}
    for split in ("train", "novel"):
        for rel in ("capital", "landmark"):
            art = F.generate(hf_tok, n=SPLIT_N["facts"], seed=seed, split=split, relation=rel)
            logits = _answer_logits(model, art)
            ld = _logit_diff(logits, art)
            out["facts"][f"{split}/{rel}"] = {"logit_diff": r4(ld.mean()), "positive_share": r4((ld > 0).float().mean()),
                                              "top1": r4((logits.argmax(-1) == art.tensors["io_id"]).float().mean()),
                                              "facts": art.data["facts_used"], "n": len(ld)}
    return out


def remeasure_splits(directory: Any) -> dict:
    """Measure a shipped text model's splits and store them in its behaviours.json (key
    ``per_split``); the weights are not touched."""
    import json
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = Path(directory)
    model = AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager").eval()
    result = measure_splits(model, AutoTokenizer.from_pretrained(d))
    summary = json.loads((d / "behaviours.json").read_text())
    summary["behaviours"]["per_split"] = result
    (d / "behaviours.json").write_text(json.dumps(summary, indent=1) + "\n")
    return result
