"""`greater_than`: the Greater-Than task of Hanna et al. (2023), with its "01" corruption.

A clean prompt is Hanna et al.'s sentence (``data/greater_than.json``) with one of their 120 nouns
and a start year XXYY, ending in the century of the end year, e.g. "The war lasted from the year
1732 to the year 17"; a model that does the task puts its next-token mass on the 2-digit tokens
"33" .. "99" rather than "00" .. "32". The corrupted prompt is the same sentence with YY replaced
by "01" ("... from the year 1701 to the year 17"), after which every later year is plausible, so
it carries no information about YY (ACDC's `patch_data[:, 7] = '01'`).

Years follow ACDC's rule for any tokenizer: centuries 11..17, YY in 02..98, kept when " XXYY"
tokenises as exactly [" XX", "YY"] (as GPT-2's BPE does); then the first and the last kept year
of each century are dropped. With `balanced` (Hanna et al.'s default) the i-th prompt's YY cycles
through 02..98 and its century is drawn among the valid ones; otherwise years are drawn uniformly.
Only nouns that are one token (with their leading space) are used, so every prompt has the same
length and a position means the same word in all of them.

Splits (``split=``; the partition is ``data/splits.json``, see `mechstudy.stdlib.datasets.splits`):

- ``all``: the published task: form ``hanna`` (or ``acdc``), all 120 nouns. The default for models
  without a ``splits.json`` (GPT-2 ...).
- ``train``: a training form of the zoo model mini (``hanna`` and ``acdc`` are both: mini reads
  those very sentences) with the nouns its Greater-Than sentences use (100 of 120).
- ``heldout``: the same forms with the 20 nouns the mini recipe keeps out of its Greater-Than
  sentences (index 5 mod 6; each still occurs elsewhere in its text, "The siege was long.").
- ``novel``: a sentence form no zoo model read (default ``began``: "The {noun} began in the year
  {year} and ended in the year {century}"; or ``started``) with those 20 nouns. The default for
  zoo models. Years are not held out: mini read every start year in some century.

Provides "years" and "corrupted": per prompt ``yy`` (the start year's last two digits) and
``yy_pos`` (the position of its token), and ``year_tokens`` [100], the token of f"{i:02d}" for
i = 0..99, which is what the ``prob_diff`` metric reads:
P(YY' > YY) - P(YY' <= YY) over those 100 tokens at the last position.
"""

from __future__ import annotations

import random
from typing import Any

import polars as pl
import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib.datasets import encode, pad_id_of, pad_right, reference, single_token, tokenizer_of
from mechstudy.stdlib.datasets import splits as S

CENTURIES = range(11, 18)
_PART = S.partition("greater_than")
PUBLISHED_FORMS: dict[str, str] = dict(_PART["train_forms"])  # hanna: Hanna et al.'s sentence; acdc: ACDC's
NOVEL_FORMS: dict[str, str] = dict(_PART["novel_forms"])
FORMS: dict[str, str] = {**PUBLISHED_FORMS, **NOVEL_FORMS}


def forms_of(split: str) -> tuple[str, ...]:
    """The form names `split` allows, its default first.

    >>> forms_of("train"), forms_of("novel"), forms_of("all")[0]
    (('hanna', 'acdc'), ('began', 'started'), 'hanna')
    """
    if split == "all":
        return tuple(FORMS)
    return tuple(NOVEL_FORMS) if split == "novel" else tuple(PUBLISHED_FORMS)


def noun_held_out_of_mini(index: int) -> bool:
    """Whether the noun at `index` of the published list is kept out of mini's Greater-Than sentences."""
    return index % 6 == 5


def split_nouns(split: str) -> list[str]:
    """The nouns of `split`: every published noun for all, else mini's training or held-out ones.

    >>> [len(split_nouns(s)) for s in ("all", "train", "heldout", "novel")]
    [120, 100, 20, 20]
    """
    nouns = reference("greater_than")["NOUNS"]
    if split == "all":
        return nouns
    held = split in ("heldout", "novel")
    return [w for i, w in enumerate(nouns) if noun_held_out_of_mini(i) == held]


def check_form(split: str | None, form: str | None) -> None:
    """Refuse a form that is not one of `split`'s (split None: any form, checked when resolved)."""
    if form is None:
        return
    if form not in FORMS:
        raise ValueError(f"form must be one of {', '.join(FORMS)}, got {form!r}")
    if split is not None and form not in forms_of(split):
        err = ValueError(f"form {form!r} is not a form of split {split} (its forms: {', '.join(forms_of(split))})")
        err.option = "form"  # type: ignore[attr-defined]
        raise err


def year_tokens(tokenizer: Any) -> list[int]:
    """The token of each 2-digit suffix "00" .. "99" (ValueError when one is not a single token)."""
    out = []
    for i in range(100):
        t = single_token(tokenizer, f"{i:02d}")
        if t is None:
            raise ValueError(f'"{i:02d}" is not one token for this tokenizer: the Greater-Than metric needs all 100')
        out.append(t)
    return out


def valid_years(tokenizer: Any) -> list[int]:
    """Start years whose " XXYY" is [" XX", "YY"], minus each century's first and last (ACDC)."""
    yy_tok = year_tokens(tokenizer)
    out: list[int] = []
    for c in CENTURIES:
        ct = single_token(tokenizer, f" {c}")
        if ct is None:
            continue
        kept = [c * 100 + yy for yy in range(2, 99)
                if tokenizer(f" {c}{yy:02d}", add_special_tokens=False)["input_ids"] == [ct, yy_tok[yy]]]
        out += kept[1:-1]
    return out


def sentence(form: str) -> str:
    """The prompt of a named form, with {noun}, {year} and {century} slots."""
    return FORMS[form]


def generate(tokenizer: Any, n: int = 64, seed: int = 0, balanced: bool = True, form: str | None = None,
             prepend_bos: bool | None = None, split: str = "all") -> Artifact:
    """`n` clean / "01"-corrupted Greater-Than prompts of `split` tokenised with `tokenizer` (see the module)."""
    if n < 1:
        raise ValueError("n must be at least 1")
    if split not in S.SPLITS:
        raise ValueError(f"split must be one of {', '.join(S.SPLITS)}; got {split!r}")
    check_form(split, form)
    form = form or forms_of(split)[0]
    tokens = year_tokens(tokenizer)
    years = valid_years(tokenizer)
    if not years:
        raise ValueError("no valid Greater-Than years for this tokenizer (' 1732' must split as ' 17' + '32')")
    nouns = [w for w in split_nouns(split) if single_token(tokenizer, " " + w) is not None]
    if not nouns:
        raise ValueError(f"none of the Greater-Than nouns of split {split} is a single token for this tokenizer")
    by_yy: dict[int, list[int]] = {}
    for y in years:
        by_yy.setdefault(y % 100, []).append(y)
    template = sentence(form)
    rng = random.Random(seed)
    rows, clean_rows, corrupt_rows, yy_pos = [], [], [], []
    current = 2
    while len(rows) < n:
        if balanced:  # Hanna et al.: YY cycles 02..98; a YY with no valid year is skipped
            while current not in by_yy:
                current = 2 if current >= 98 else current + 1
            year = rng.choice(by_yy[current])
            current = 2 if current >= 98 else current + 1
        else:
            year = rng.choice(years)
        noun, century, yy = rng.choice(nouns), year // 100, year % 100
        clean = template.format(noun=noun, year=year, century=century)
        corrupted = template.format(noun=noun, year=f"{century}01", century=century)
        c_ids, k_ids = encode(tokenizer, clean, prepend_bos), encode(tokenizer, corrupted, prepend_bos)
        diff = [j for j, (a, b) in enumerate(zip(c_ids, k_ids)) if a != b]
        if len(c_ids) != len(k_ids) or len(diff) != 1 or c_ids[diff[0]] != tokens[yy] or k_ids[diff[0]] != tokens[1]:
            raise ValueError(f"the tokenizer does not keep {year} as [' {century}', '{yy:02d}'] inside the sentence")
        rows.append({"clean": clean, "corrupted": corrupted, "noun": noun, "year": year, "century": century,
                     "yy": yy, "length": len(c_ids), "answer_pos": len(c_ids) - 1})
        clean_rows.append(c_ids)
        corrupt_rows.append(k_ids)
        yy_pos.append(diff[0])
    pad = pad_id_of(tokenizer)
    clean_ids, mask = pad_right(clean_rows, pad)
    corrupted_ids, _ = pad_right(corrupt_rows, pad)
    tensors = {
        "clean_ids": clean_ids,
        "corrupted_ids": corrupted_ids,
        "attention_mask": mask,
        "answer_pos": mask.sum(1) - 1,
        "yy": torch.tensor([r["yy"] for r in rows], dtype=torch.long),
        "yy_pos": torch.tensor(yy_pos, dtype=torch.long),
        "year_tokens": torch.tensor(tokens, dtype=torch.long),
    }
    data = {"n": n, "seed": seed, "balanced": balanced, "form": form, "split": split, "prepend_bos": prepend_bos,
            "padding": "right", "pad_id": pad, "nouns_used": len(nouns), "valid_years": len(years),
            "max_len": int(clean_ids.shape[1])}
    return Artifact(tensors=tensors, tables={"prompts": pl.DataFrame(rows)}, data=data)


def _prepare(params: dict) -> dict:
    check_form(params.get("split"), params.get("form"))
    return params


@spec.dataset(
    "greater_than",
    version=2,
    params=[
        Param("n", int, 64, minimum=1, ceiling=10_000, doc="number of clean/corrupted prompt pairs"),
        Param("seed", int, 0, minimum=0, doc="sampling seed"),
        Param("balanced", bool, True, doc="cycle the start year's YY through 02..98 (Hanna et al.)"),
        Param("form", str, None, choices=tuple(FORMS),
              doc='the sentence (default: the split\'s first); published: hanna "... to the year 17", acdc '
                  '"... to 17"; novel: began "... began in the year 1732 and ended in the year 17", started '
                  '"... started in 1732 and was over by 17"'),
        Param("prepend_bos", bool, None, doc="force a leading BOS on or off (default: the tokenizer's convention)"),
        Param("split", str, None, choices=S.SPLITS, doc=S.SPLIT_DOC),
    ],
    provides=frozenset({"years", "corrupted"}),
    needs_model=True,
    prepare=_prepare,
)
def run(inputs: dict, params: dict, ctx: Any) -> Artifact:
    """Greater-Than prompts ("The war lasted from the year 1732 to the year 17"), their "01"
    corruptions, start years and the 100 year-suffix tokens, tokenised for the model.

    split: novel = a sentence form no zoo model read (the zoo default), train / heldout = the
    published forms with the nouns mini trains on / keeps out, all = the published task.
    """
    model = inputs["model"]
    split, why = S.resolve("greater_than", params.get("split"), model.data)
    tok = tokenizer_of(model, ctx)
    art = generate(tok, **{k: params[k] for k in ("n", "seed", "balanced", "form", "prepend_bos") if k in params},
                   split=split)
    return Artifact(tensors=art.tensors, tables=art.tables, data={**art.data, "split_source": why})
