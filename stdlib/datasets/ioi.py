"""`ioi`: Indirect Object Identification prompts with ABC corruption (Wang et al., 2022).

Clean prompts fill a BABA or ABBA template from the reference data (``data/ioi.json``, the
authors' lists), e.g. "Then, John and Mary went to the store. John gave a ring to" (answer
" Mary", the indirect object IO; " John" is the subject S). The corrupted prompt of each pair is
the ABC version: the three name slots are filled, in order, with three distinct names unrelated to
the pair ("Then, Anna and Kevin went to the store. Paul gave a ring to"), so the corrupted run
carries no information about which of IO and S to say; IO and S stay the clean ones.

Any tokenizer works: a name is used only when it is one token with the leading space GPT-2's BPE
needs (" John"), and a pair is kept only when its clean and corrupted prompts have the same length
and differ in at most the three name slots (token for token aligned). Prompts of different lengths
are right padded: `attention_mask` marks real tokens and `answer_pos[i]` is prompt i's last real
token, where every metric reads. Fixing `template` makes positions mean the same in every prompt.

Splits (``split=``; the partition is ``data/splits.json``, see `mechstudy.stdlib.datasets.splits`):

- ``all``: the 15 published BABA templates and their ABBA mirrors (0-14 BABA, 15-29 ABBA). The
  default for models without a ``splits.json`` (GPT-2 ...).
- ``train``: the 12 published templates the zoo model mini trains on, and mirrors.
- ``heldout``: the 3 published templates the mini recipe leaves out of its IOI sentences, and
  mirrors; their telltale phrases occur in mini's filler text, so they are not novel.
- ``novel``: 10 templates written for mechstudy that no zoo model read (no literal segment of 3+
  words between slots occurs in its training text), and mirrors. The default for zoo models.

Names, places and objects are the published lists in every split: mini read every one of them.
"""

from __future__ import annotations

import random
import re
from typing import Any

import polars as pl
import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib.datasets import encode, pad_id_of, pad_right, reference, single_token, tokenizer_of
from mechstudy.stdlib.datasets import splits as S

_SLOT = re.compile(r"\[(A|B)\]")


def abba(template: str) -> str:
    """The ABBA mirror of a BABA template: the first [B] and [A] swapped.

    >>> abba("Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]")
    'Then, [A] and [B] went to the [PLACE]. [B] gave a [OBJECT] to [A]'
    """
    i, j = template.index("[B]"), template.index("[A]")
    return template[:i] + "[A]" + template[i + 3 : j] + "[B]" + template[j + 3 :]


def held_out_of_mini(template: str) -> bool:
    """Whether a published template is one the mini recipe leaves out of its IOI sentences."""
    return any(m in template for m in S.partition("ioi")["heldout_markers"])


def templates(split: str = "all") -> list[str]:
    """The BABA templates of `split`, then their ABBA mirrors (all: indices 0-14, then 15-29).

    >>> [len(templates(s)) for s in ("all", "train", "heldout")]
    [30, 24, 6]
    """
    ref = reference("ioi")
    if split == "all":
        return ref["BABA_TEMPLATES"] + ref["ABBA_TEMPLATES_derived"]
    if split == "novel":
        baba = list(S.partition("ioi")["novel_templates"])
    elif split in ("train", "heldout"):
        baba = [t for t in ref["BABA_TEMPLATES"] if held_out_of_mini(t) == (split == "heldout")]
    else:
        raise ValueError(f"ioi: split must be one of {', '.join(S.SPLITS)}; got {split!r}")
    return baba + [abba(t) for t in baba]


def _fill(body: str, names: list[str], place: str, obj: str) -> str:
    """Fill name slots in order of appearance with `names`, then place and object."""
    it = iter(names)
    text = _SLOT.sub(lambda _m: next(it), body)
    return text.replace("[PLACE]", place).replace("[OBJECT]", obj)


def generate(tokenizer: Any, n: int = 64, seed: int = 0, template: int | None = None,
             prepend_bos: bool | None = None, split: str = "all") -> Artifact:
    """Build `n` aligned clean/corrupted pairs of `split` with `tokenizer` (see the module docstring)."""
    ref = reference("ioi")
    temps = templates(split)
    if template is not None and not 0 <= template < len(temps):
        raise ValueError(f"template must be in 0..{len(temps) - 1} (split {split}), got {template}")
    if n < 1:
        raise ValueError("n must be at least 1")
    ids_of = {nm: single_token(tokenizer, " " + nm) for nm in ref["NAMES"]}
    names = [nm for nm in ref["NAMES"] if ids_of[nm] is not None]
    if len(names) < 5:
        raise ValueError(f"only {len(names)} IOI names are single tokens for this tokenizer; need 5")
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    clean_rows: list[list[int]] = []
    corrupt_rows: list[list[int]] = []
    tries = 0
    while len(rows) < n:
        tries += 1
        if tries > 50 * n + 200:
            raise ValueError(f"could only build {len(rows)} aligned IOI pairs of {n} with this tokenizer")
        t = template if template is not None else rng.randrange(len(temps))
        io, s = rng.sample(names, 2)
        place, obj = rng.choice(ref["PLACES"]), rng.choice(ref["OBJECTS"])
        x, y, z = rng.sample([nm for nm in names if nm not in (io, s)], 3)
        body = temps[t]
        assert body.endswith(" [A]"), body  # the answer is the final [A]; the prompt stops before it
        body = body[: -len(" [A]")]
        order = [io if m.group(1) == "A" else s for m in _SLOT.finditer(body)]
        assert len(order) == 3, body
        clean = _fill(body, order, place, obj)
        corrupted = _fill(body, [x, y, z], place, obj)
        c_ids, k_ids = encode(tokenizer, clean, prepend_bos), encode(tokenizer, corrupted, prepend_bos)
        aligned = len(c_ids) == len(k_ids) and sum(a != b for a, b in zip(c_ids, k_ids)) <= 3
        if not aligned or ids_of[io] not in c_ids or ids_of[s] not in c_ids:
            continue  # a tokenizer that merges a name with its neighbours: draw another pair
        rows.append({"clean": clean, "corrupted": corrupted, "io": io, "s": s, "template": t,
                     "abba": t >= len(temps) // 2, "length": len(c_ids), "answer_pos": len(c_ids) - 1})
        clean_rows.append(c_ids)
        corrupt_rows.append(k_ids)
    pad = pad_id_of(tokenizer)
    clean_ids, mask = pad_right(clean_rows, pad)
    corrupted_ids, mask2 = pad_right(corrupt_rows, pad)
    assert torch.equal(mask, mask2)
    tensors = {
        "clean_ids": clean_ids,
        "corrupted_ids": corrupted_ids,
        "attention_mask": mask,
        "answer_pos": mask.sum(1) - 1,
        "io_id": torch.tensor([ids_of[r["io"]] for r in rows], dtype=torch.long),
        "s_id": torch.tensor([ids_of[r["s"]] for r in rows], dtype=torch.long),
    }
    data = {"n": n, "seed": seed, "template": template, "prepend_bos": prepend_bos, "split": split,
            "padding": "right", "pad_id": pad, "names_used": len(names), "templates_in_split": len(temps),
            "max_len": int(clean_ids.shape[1])}
    return Artifact(tensors=tensors, tables={"prompts": pl.DataFrame(rows)}, data=data)


def _prepare(params: dict) -> dict:
    """A template index beyond a declared split's templates is a check error."""
    split, t = params.get("split"), params.get("template")
    if split is not None and t is not None and t >= len(templates(split)):
        err = ValueError(f"template must be in 0..{len(templates(split)) - 1} for split {split}, got {t}")
        err.option = "template"  # type: ignore[attr-defined]
        raise err
    return params


@spec.dataset(
    "ioi",
    version=2,
    params=[
        Param("n", int, 64, minimum=1, ceiling=10_000, doc="number of clean/corrupted prompt pairs"),
        Param("seed", int, 0, minimum=0, doc="sampling seed"),
        Param("template", int, None, minimum=0, maximum=len(templates()) - 1,
              doc="fix one template of the split (its BABA first, then their ABBA mirrors; all: 0-14 BABA, "
                  "15-29 ABBA; train 0-23, heldout 0-5, novel 0-19); same positions in every prompt"),
        Param("prepend_bos", bool, None, doc="force a leading BOS on or off (default: the tokenizer's convention)"),
        Param("split", str, None, choices=S.SPLITS, doc=S.SPLIT_DOC),
    ],
    provides=frozenset({"answers", "corrupted"}),
    needs_model=True,
    prepare=_prepare,
)
def run(inputs: dict, params: dict, ctx: Any) -> Artifact:
    """IOI prompts (BABA/ABBA), ABC-corrupted prompts and IO/S answer tokens, tokenised for the model.

    split: novel = templates no zoo model read (the zoo default), train / heldout = the published
    templates mini trains on / leaves out of its IOI sentences, all = the published templates (the
    default for other models).
    """
    model = inputs["model"]
    split, why = S.resolve("ioi", params.get("split"), model.data)
    tok = tokenizer_of(model, ctx)
    art = generate(tok, **{k: params[k] for k in ("n", "seed", "template", "prepend_bos") if k in params}, split=split)
    return Artifact(tensors=art.tensors, tables=art.tables, data={**art.data, "split_source": why})
