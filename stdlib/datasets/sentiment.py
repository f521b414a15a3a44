"""`sentiment`: sentences whose sentiment is set by one adjective, labelled positive (1) or negative
(0), with contrast pairs, for probing and for steering.

Each row fills one of three forms with a subject and an adjective from the zoo lexicon (the words
`mini` learnt sentiment on), and stops where the reaction word would come:

- ``The {subject} was {adjective}, so I felt`` -> " happy" / " sad"
- ``I thought the {subject} was {adjective}. I`` -> " loved" / " hated"
- ``The {subject} was {adjective}. It was`` -> " good" / " bad"

Tensors: ``clean_ids`` (the sentence), ``corrupted_ids`` (the same sentence with an adjective of
the other sentiment: a contrast pair, token for token aligned), ``attention_mask``, ``answer_pos``
(the last token), ``io_id`` / ``s_id`` (the reaction word that fits / the other one, so `logit_diff`
is positive when the model reacts as the sentence says), ``adj_pos`` (the adjective's position), and
the probing labels: ``label`` (1 positive, 0 negative), ``label_row``, ``label_pos`` (where the label
is read: the last token with ``read="end"``, the adjective with ``read="adjective"``) and
``label_type``, the word type a control task assigns a random label to (Hewitt & Liang): here the
adjective, the one word that decides the label (``data["label_types"]`` names them). A probe at the
last token that reads sentiment, not the adjective's identity, has a high selectivity.

Splits: mini never trained on one (subject, adjective) pair in five (`stdlib/zoo/corpus.py`,
``sentiment_pair_held_out``). ``split="heldout"`` uses only those pairs, ``train`` only the others,
``all`` every pair; the default is ``heldout`` for zoo models (their never-seen data) and ``all``
otherwise. Adjectives and reaction words that are not one token for the tokenizer are left out.
``polarity="positive"`` keeps only positive sentences (each paired with a negative twin), so that
clean - corrupted always points from negative to positive: what a mean-difference steering
vector averages (`contrast ... on pairs`); ``negative`` the reverse.
"""

from __future__ import annotations

import random
from typing import Any

import polars as pl
import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib.datasets import encode, pad_id_of, pad_right, single_token, tokenizer_of
from mechstudy.stdlib.zoo import lexicon as lx
from mechstudy.stdlib.zoo.corpus import sentiment_pair_held_out

FORMS = ("The {s} was {a}, so I felt", "I thought the {s} was {a}. I", "The {s} was {a}. It was")
SPLITS = ("heldout", "train", "all")
READS = ("end", "adjective")
POLARITIES = ("both", "positive", "negative")


def default_split(model_data: dict | None) -> tuple[str, str]:
    """(split, why) for a dataset declared without `split`."""
    if (model_data or {}).get("source") == "zoo":
        return "heldout", "default for zoo models: (subject, adjective) pairs they never trained on"
    return "all", "default for models trained elsewhere"


def pairs(split: str) -> list[tuple[str, str, int]]:
    """(subject, adjective, label) of a split, in lexicon order.

    >>> len(pairs("all")) == len(pairs("heldout")) + len(pairs("train"))
    True
    """
    if split not in SPLITS:
        raise ValueError(f"sentiment: split must be one of {', '.join(SPLITS)}; got {split!r}")
    out = []
    for s in lx.SENTIMENT_SUBJECTS:
        for label, adjs in ((1, lx.POSITIVE), (0, lx.NEGATIVE)):
            for a in adjs:
                if split == "all" or sentiment_pair_held_out(s, a) == (split == "heldout"):
                    out.append((s, a, label))
    return out


def generate(tokenizer: Any, n: int | None = None, seed: int = 0, split: str = "all", form: int | None = None,
             read: str = "end", prepend_bos: bool | None = None, polarity: str = "both") -> Artifact:
    """Labelled sentiment sentences and their contrast pairs (see the module docstring). n None:
    every (pair, form) of the split once, in a seeded order; else n rows drawn from them."""
    if polarity not in POLARITIES:
        raise ValueError(f"sentiment: polarity must be one of {', '.join(POLARITIES)}; got {polarity!r}")
    if read not in READS:
        raise ValueError(f"sentiment: read must be one of {', '.join(READS)}; got {read!r}")
    if form is not None and not 0 <= form < len(FORMS):
        raise ValueError(f"sentiment: form must be in 0..{len(FORMS) - 1}; got {form}")
    adj_id = {a: single_token(tokenizer, " " + a) for a in lx.POSITIVE + lx.NEGATIVE}
    react = [(single_token(tokenizer, " " + p), single_token(tokenizer, " " + q)) for p, q in lx.REACTIONS]
    ok_adj = {a for a, i in adj_id.items() if i is not None}
    opposite = {1: [a for a in lx.NEGATIVE if a in ok_adj], 0: [a for a in lx.POSITIVE if a in ok_adj]}
    forms = [form] if form is not None else list(range(len(FORMS)))
    keep = {"both": (0, 1), "positive": (1,), "negative": (0,)}[polarity]
    combos = [(s, a, y, f) for s, a, y in pairs(split) if a in ok_adj and y in keep for f in forms]
    if not combos or not opposite[0] or not opposite[1]:
        raise ValueError(f"sentiment: no sentence of split {split!r} has a one-token adjective for this tokenizer")
    rng = random.Random(seed)
    rng.shuffle(combos)
    if n is not None:
        if n < 1:
            raise ValueError("sentiment: n must be at least 1")
        combos = [combos[i % len(combos)] for i in range(n)] if n > len(combos) else combos[:n]
    types = sorted(ok_adj, key=(lx.POSITIVE + lx.NEGATIVE).index)
    rows, clean, corrupt, adj_pos = [], [], [], []
    for s, a, y, f in combos:
        b = rng.choice(opposite[y])
        c_ids = encode(tokenizer, FORMS[f].format(s=s, a=a), prepend_bos)
        k_ids = encode(tokenizer, FORMS[f].format(s=s, a=b), prepend_bos)
        if len(c_ids) != len(k_ids) or adj_id[a] not in c_ids:
            continue  # the adjective merged with a neighbour: not a clean contrast pair
        p = c_ids.index(adj_id[a])
        good, bad = react[f] if y == 1 else react[f][::-1]
        rows.append({"text": FORMS[f].format(s=s, a=a), "contrast": FORMS[f].format(s=s, a=b), "subject": s,
                     "adjective": a, "contrast_adjective": b, "label": y, "form": f,
                     "answer": lx.REACTIONS[f][1 - y], "held_out": sentiment_pair_held_out(s, a)})
        clean.append(c_ids)
        corrupt.append(k_ids)
        adj_pos.append(p)
        rows[-1]["io_id"], rows[-1]["s_id"] = good, bad
    if not rows:
        raise ValueError("sentiment: no contrast pair is aligned token for token for this tokenizer")
    pad = pad_id_of(tokenizer)
    clean_ids, mask = pad_right(clean, pad)
    corrupted_ids, _ = pad_right(corrupt, pad)
    end = mask.sum(1) - 1
    adj = torch.tensor(adj_pos, dtype=torch.long)
    label = torch.tensor([r["label"] for r in rows], dtype=torch.long)
    tensors = {
        "clean_ids": clean_ids, "corrupted_ids": corrupted_ids, "attention_mask": mask, "answer_pos": end,
        "adj_pos": adj, "label": label, "label_row": torch.arange(len(rows)),
        "label_pos": (end if read == "end" else adj).clone(),
        "label_type": torch.tensor([types.index(r["adjective"]) for r in rows], dtype=torch.long),
    }
    answers = all(r["io_id"] is not None and r["s_id"] is not None for r in rows)
    if answers:
        tensors["io_id"] = torch.tensor([r["io_id"] for r in rows], dtype=torch.long)
        tensors["s_id"] = torch.tensor([r["s_id"] for r in rows], dtype=torch.long)
    table = pl.DataFrame([{k: v for k, v in r.items() if k not in ("io_id", "s_id")} for r in rows])
    data = {"n": len(rows), "seed": seed, "split": split, "read": read, "form": form, "polarity": polarity,
            "prepend_bos": prepend_bos,
            "padding": "right", "pad_id": pad, "label_classes": ["negative", "positive"], "label_types": types,
            "label_type_is": "the adjective", "answers": answers, "max_len": int(clean_ids.shape[1])}
    return Artifact(tensors=tensors, tables={"prompts": table}, data=data)


@spec.dataset(
    "sentiment",
    version=1,
    params=[
        Param("n", int, None, minimum=1, ceiling=100_000, doc="rows (default: every sentence of the split once)"),
        Param("seed", int, 0, minimum=0, doc="order and contrast adjectives"),
        Param("split", str, None, choices=SPLITS,
              doc="heldout | train | all (default: heldout for zoo models, all otherwise)"),
        Param("form", int, None, minimum=0, maximum=2, doc="one sentence form (0-2); default all three"),
        Param("read", str, "end", choices=READS, doc="where a probe reads the label: the last token or the adjective"),
        Param("polarity", str, "both", choices=POLARITIES,
              doc="both, or only positive (negative) sentences, each paired with its opposite: contrast pairs "
                  "whose clean - corrupted difference points one way"),
        Param("prepend_bos", bool, None, doc="force a leading BOS on or off (default: the tokenizer's convention)"),
    ],
    provides=frozenset({"labels", "corrupted", "answers"}),
    needs_model=True,
    example="dataset sent = sentiment(split=heldout, read=end)",
)
def run(inputs: dict, params: dict, ctx: Any) -> Artifact:
    """Positive/negative sentences labelled for probing, with contrast pairs and reaction-word answers."""
    model = inputs["model"]
    split, why = (params["split"], "declared") if params.get("split") else default_split(model.data)
    tok = tokenizer_of(model, ctx)
    art = generate(tok, params.get("n"), params.get("seed", 0), split, params.get("form"), params.get("read", "end"),
                   params.get("prepend_bos"), params.get("polarity", "both"))
    return Artifact(tensors=art.tensors, tables=art.tables, data={**art.data, "split_source": why})
