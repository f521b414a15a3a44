"""`entities`: sentences in which every token is labelled by what its word is: a person's name, a
place, or neither, for token-level probes (is this token a name? a place?).

Names are the IOI names (``data/ioi.json``); places are the IOI places ("store", "garden", ...) and
the zoo lexicon's cities (capitals and landmark cities: "Paris", "Rome", ...). Sentences fill
templates written for this dataset, none of which occurs in any zoo model's training text (a test
checks `mini`'s whole training stream), e.g. "Yesterday John drove from Paris to the garden with
Mary." Only words that are one token for the tokenizer are used, so every word is one labelled token.

Labels (``property``): ``kind`` (0 other, 1 name, 2 place), ``name`` (1 if a name) or ``place``.
Every real token is labelled (BOS and padding are not). Tensors, one entry per labelled token:
``label``, ``label_row``, ``label_pos`` and ``label_type``, the word type a control task gives a
random label to (Hewitt & Liang): the token id itself, so the control task is "a random class per
vocabulary item" (``data["label_types"]`` lists the types by index). Prompts are ``clean_ids`` /
``attention_mask`` (right padded) like every dataset.
"""

from __future__ import annotations

import random
from typing import Any

import polars as pl
import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib.datasets import encode, pad_id_of, pad_right, reference, single_token, tokenizer_of
from mechstudy.stdlib.zoo import lexicon as lx

TEMPLATES = (
    "Yesterday [N] drove from [C] to the [P] with [M].",
    "In [C], [N] opened a small [P] for [M].",
    "[N] wrote a long letter to [M] from the [P] in [C].",
    "After the rain, [N] and [M] walked from the [P] to [C].",
    "The [P] near [C] was closed, so [N] phoned [M].",
    "[N] told [M] that the [P] in [C] was busy.",
    "On the way to [C], [N] lost a map at the [P].",
    "Every summer [N] visits [M] in [C] and they sit in the [P].",
)
PROPERTIES = ("kind", "name", "place")
CLASSES = {"kind": ["other", "name", "place"], "name": ["not a name", "name"], "place": ["not a place", "place"]}


def lexicon() -> dict[str, list[str]]:
    """The words each slot is filled from: names, cities, places (in lexicon order, no repeats)."""
    ref = reference("ioi")
    cities = list(dict.fromkeys(list(lx.CAPITALS.values()) + list(lx.LANDMARKS.values())))
    return {"N": list(dict.fromkeys(ref["NAMES"])), "C": cities, "P": list(ref["PLACES"])}


def generate(tokenizer: Any, n: int = 200, seed: int = 0, prop: str = "kind", prepend_bos: bool | None = None) -> Artifact:
    """`n` labelled sentences (see the module docstring)."""
    if prop not in PROPERTIES:
        raise ValueError(f"entities: property must be one of {', '.join(PROPERTIES)}; got {prop!r}")
    if n < 1:
        raise ValueError("entities: n must be at least 1")
    lex = {k: [w for w in v if single_token(tokenizer, " " + w) is not None] for k, v in lexicon().items()}
    if len(lex["N"]) < 2 or not lex["C"] or not lex["P"]:
        raise ValueError("entities: too few names, cities or places are one token for this tokenizer")
    kind_of = {single_token(tokenizer, " " + w): 1 for w in lex["N"]}
    kind_of.update({single_token(tokenizer, " " + w): 2 for w in lex["C"] + lex["P"]})
    rng = random.Random(seed)
    rows, ids_rows, labels = [], [], []
    special = set(tokenizer.all_special_ids)
    for i in range(n):
        t = TEMPLATES[i % len(TEMPLATES)] if i < len(TEMPLATES) else rng.choice(TEMPLATES)
        name, other = rng.sample(lex["N"], 2)
        text = t.replace("[N]", name).replace("[M]", other).replace("[C]", rng.choice(lex["C"]))
        text = text.replace("[P]", rng.choice(lex["P"]))
        ids = encode(tokenizer, text, prepend_bos)
        kinds = [(-1 if tid in special else kind_of.get(tid, 0)) for tid in ids]
        rows.append({"text": text, "template": TEMPLATES.index(t), "names": sum(k == 1 for k in kinds),
                     "places": sum(k == 2 for k in kinds), "length": len(ids)})
        ids_rows.append(ids)
        labels.append(kinds)
    pad = pad_id_of(tokenizer)
    ids, mask = pad_right(ids_rows, pad)
    entries = [(r, p, k, ids_rows[r][p]) for r, ks in enumerate(labels) for p, k in enumerate(ks) if k >= 0]
    kind = torch.tensor([e[2] for e in entries], dtype=torch.long)
    label = kind if prop == "kind" else (kind == (1 if prop == "name" else 2)).long()
    types = sorted({e[3] for e in entries})
    index = {t: i for i, t in enumerate(types)}
    tensors = {
        "clean_ids": ids, "attention_mask": mask, "answer_pos": mask.sum(1) - 1,
        "label": label, "label_row": torch.tensor([e[0] for e in entries], dtype=torch.long),
        "label_pos": torch.tensor([e[1] for e in entries], dtype=torch.long),
        "label_type": torch.tensor([index[e[3]] for e in entries], dtype=torch.long),
    }
    data = {"n": n, "seed": seed, "property": prop, "prepend_bos": prepend_bos, "padding": "right", "pad_id": pad,
            "label_classes": CLASSES[prop], "label_types": [tokenizer.decode([t]) for t in types],
            "label_type_is": "the token", "labelled_tokens": len(entries), "max_len": int(ids.shape[1]),
            "words": {k: len(v) for k, v in lex.items()}}
    return Artifact(tensors=tensors, tables={"prompts": pl.DataFrame(rows)}, data=data)


@spec.dataset(
    "entities",
    version=1,
    params=[
        Param("n", int, 200, minimum=1, ceiling=100_000, doc="sentences"),
        Param("seed", int, 0, minimum=0, doc="sampling seed"),
        Param("property", str, "kind", choices=PROPERTIES, doc="kind (other/name/place), name, or place"),
        Param("prepend_bos", bool, None, doc="force a leading BOS on or off (default: the tokenizer's convention)"),
    ],
    provides=frozenset({"labels"}),
    needs_model=True,
    example="dataset ents = entities(n=120, property=kind)",
)
def run(inputs: dict, params: dict, ctx: Any) -> Artifact:
    """Sentences with every token labelled name / place / other (token-level probing)."""
    tok = tokenizer_of(inputs["model"], ctx)
    return generate(tok, params.get("n", 200), params.get("seed", 0), params.get("property", "kind"),
                    params.get("prepend_bos"))
