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

CENTURIES = range(11, 18)
FORMS = {
    "hanna": "hanna_clean_sentence",  # "The {noun} lasted from the year {year} to the year {century}"
    "acdc": None,  # "The {noun} lasted from the year {year} to {century}"
}
_ACDC = "The {noun} lasted from the year {year} to {century}"


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
    return _ACDC if form == "acdc" else reference("greater_than")[FORMS[form]]


def generate(tokenizer: Any, n: int = 64, seed: int = 0, balanced: bool = True, form: str = "hanna",
             prepend_bos: bool | None = None) -> Artifact:
    """`n` clean / "01"-corrupted Greater-Than prompts tokenised with `tokenizer` (see the module)."""
    if n < 1:
        raise ValueError("n must be at least 1")
    if form not in FORMS:
        raise ValueError(f"form must be one of {', '.join(FORMS)}, got {form!r}")
    ref = reference("greater_than")
    tokens = year_tokens(tokenizer)
    years = valid_years(tokenizer)
    if not years:
        raise ValueError("no valid Greater-Than years for this tokenizer (' 1732' must split as ' 17' + '32')")
    nouns = [w for w in ref["NOUNS"] if single_token(tokenizer, " " + w) is not None]
    if not nouns:
        raise ValueError("none of the Greater-Than nouns is a single token for this tokenizer")
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
    data = {"n": n, "seed": seed, "balanced": balanced, "form": form, "prepend_bos": prepend_bos,
            "padding": "right", "pad_id": pad, "nouns_used": len(nouns), "valid_years": len(years),
            "max_len": int(clean_ids.shape[1])}
    return Artifact(tensors=tensors, tables={"prompts": pl.DataFrame(rows)}, data=data)


@spec.dataset(
    "greater_than",
    version=1,
    params=[
        Param("n", int, 64, minimum=1, ceiling=10_000, doc="number of clean/corrupted prompt pairs"),
        Param("seed", int, 0, minimum=0, doc="sampling seed"),
        Param("balanced", bool, True, doc="cycle the start year's YY through 02..98 (Hanna et al.)"),
        Param("form", str, "hanna", choices=tuple(FORMS),
              doc='hanna: "... to the year 17"; acdc: "... to 17"'),
        Param("prepend_bos", bool, None, doc="force a leading BOS on or off (default: the tokenizer's convention)"),
    ],
    provides=frozenset({"years", "corrupted"}),
    needs_model=True,
)
def run(inputs: dict, params: dict, ctx: Any) -> Artifact:
    """Greater-Than prompts ("The war lasted from the year 1732 to the year 17"), their "01"
    corruptions, start years and the 100 year-suffix tokens, tokenised for the model."""
    tok = tokenizer_of(inputs["model"], ctx)
    return generate(tok, **{k: params[k] for k in ("n", "seed", "balanced", "form", "prepend_bos") if k in params})
