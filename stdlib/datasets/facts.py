"""`facts`: factual recall prompts with a corrupted subject, e.g. "The Eiffel Tower is in the city of".

The facts are ``data/facts.json``: two relations, each a prompt template and subject -> answer
pairs, the same facts and sentence forms the zoo model ``mini`` is trained on, so it can recall them:

- ``capital``: "The capital of France is" -> " Paris"
- ``landmark``: "The Eiffel Tower is in the city of" -> " Paris"

The corrupted prompt of a pair asks the same relation about another subject with a different answer
("The Colosseum is in the city of" -> " Rome"). The tensors are laid out like `ioi`'s, so every
metric and patching operator reads them unchanged: ``io_id`` is the clean prompt's answer and ``s_id``
the corrupted prompt's, so ``logit_diff`` = logit(" Paris") - logit(" Rome") is positive when the
model recalls the fact and negative on the corrupted prompt.

Splits (``split=``; the partition is ``data/splits.json``, see `mechstudy.stdlib.datasets.splits`).
A fact cannot be held out of training (a model cannot recall what it never read), but its phrasing
can:

- ``all`` and ``train``: every fact asked with its relation's ``template`` (above), one of the
  sentence forms mini reads every fact in. ``all`` is the default for models without a ``splits.json``.
- ``novel``: every fact asked in a phrasing no zoo model read ("The seat of the government of
  France is in", "Tourists come to see the Eiffel Tower in"). The default for zoo models.

There is no ``heldout`` split of facts.

For the model's tokenizer a fact is kept only when its answer is one token with its leading space,
its prompt contains no unknown token, and another subject of the same relation (with another
answer) gives a corrupted prompt of the same length that differs from it in the subject only; so a
pair's two prompts are aligned token for token. Prompts of different relations or subject lengths
are right padded (`attention_mask`; `answer_pos` is each prompt's last real token). The pairs cycle
through the kept facts in a seeded random order, each with a randomly drawn partner, so n larger
than the number of facts repeats clean facts with (usually) other corruptions.
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

RELATIONS = ("all", "capital", "landmark")
SPLITS = ("train", "novel", "all")  # no heldout: a fact cannot be held out, only its phrasing


def template_of(relation: str, split: str) -> str:
    """The prompt template of `relation` in `split` (a {subject} slot)."""
    if split not in SPLITS:
        raise ValueError(f"facts: split must be one of {', '.join(SPLITS)}; got {split!r}")
    if split == "novel":
        return S.partition("facts")["novel_templates"][relation]
    return reference("facts")["relations"][relation]["template"]


def facts(relation: str = "all", split: str = "all") -> list[dict[str, str]]:
    """Every fact of `relation` ("all": every relation) as {relation, subject, answer, prompt} in `split`.

    >>> [f["prompt"] for f in facts("landmark") if f["subject"] == "Eiffel Tower"]
    ['The Eiffel Tower is in the city of']
    >>> [f["prompt"] for f in facts("landmark", "novel") if f["subject"] == "Eiffel Tower"]
    ['Tourists come to see the Eiffel Tower in']
    """
    out = []
    for rel, body in reference("facts")["relations"].items():
        if relation in ("all", rel):
            template = template_of(rel, split)
            out += [{"relation": rel, "subject": s, "answer": a, "prompt": template.format(subject=s)}
                    for s, a in body["facts"].items()]
    return out


def _aligned(a: list[int], b: list[int]) -> bool:
    """Same length, and the tokens that differ form one contiguous span (the subject) that ends
    before the last token (the answer position reads the same word in both)."""
    if len(a) != len(b) or a == b:
        return False
    diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    return diff[-1] - diff[0] == len(diff) - 1 and diff[-1] < len(a) - 1


def usable(tokenizer: Any, relation: str = "all", prepend_bos: bool | None = None,
           split: str = "all") -> tuple[list[dict], dict]:
    """(facts kept for this tokenizer with their token ids, {fact index: indices of valid partners})."""
    unk = tokenizer.unk_token_id
    kept = []
    for f in facts(relation, split):
        answer = single_token(tokenizer, " " + f["answer"])
        ids = encode(tokenizer, f["prompt"], prepend_bos)
        if answer is None or (unk is not None and unk in ids):
            continue  # a multi-token answer cannot be scored at one position; an unknown word cannot be recalled
        kept.append({**f, "answer_id": answer, "ids": ids})
    partners = {}
    for i, f in enumerate(kept):
        ok = [j for j, g in enumerate(kept) if g["relation"] == f["relation"] and g["answer_id"] != f["answer_id"]
              and _aligned(f["ids"], g["ids"])]
        if ok:
            partners[i] = ok
    return kept, partners


def generate(tokenizer: Any, n: int = 48, seed: int = 0, relation: str = "all",
             prepend_bos: bool | None = None, split: str = "all") -> Artifact:
    """Build `n` aligned clean/corrupted fact pairs with `tokenizer` (see the module docstring)."""
    if n < 1:
        raise ValueError("facts: n must be at least 1")
    if relation not in RELATIONS:
        raise ValueError(f"facts: relation must be one of {', '.join(RELATIONS)}; got {relation!r}")
    kept, partners = usable(tokenizer, relation, prepend_bos, split)
    if not partners:
        raise ValueError(f"facts: no fact of relation {relation!r} has a single-token answer and an aligned "
                         f"corrupted subject for this tokenizer ({len(kept)} single-token answers of "
                         f"{len(facts(relation, split))} facts of split {split})")
    rng = random.Random(seed)
    order: list[int] = []
    rows, clean_rows, corrupt_rows = [], [], []
    for _ in range(n):
        if not order:  # one pass over the facts in a fresh random order, then the next
            order = sorted(partners)
            rng.shuffle(order)
        i = order.pop()
        f, g = kept[i], kept[rng.choice(partners[i])]
        rows.append({"relation": f["relation"], "split": split, "clean": f["prompt"], "corrupted": g["prompt"],
                     "subject": f["subject"], "answer": f["answer"], "corrupted_subject": g["subject"],
                     "corrupted_answer": g["answer"], "length": len(f["ids"]), "answer_pos": len(f["ids"]) - 1})
        clean_rows.append(f["ids"])
        corrupt_rows.append(g["ids"])
    pad = pad_id_of(tokenizer)
    clean_ids, mask = pad_right(clean_rows, pad)
    corrupted_ids, mask2 = pad_right(corrupt_rows, pad)
    assert torch.equal(mask, mask2)
    by_answer = {f["answer"]: f["answer_id"] for f in kept}
    tensors = {
        "clean_ids": clean_ids,
        "corrupted_ids": corrupted_ids,
        "attention_mask": mask,
        "answer_pos": mask.sum(1) - 1,
        "io_id": torch.tensor([by_answer[r["answer"]] for r in rows], dtype=torch.long),
        "s_id": torch.tensor([by_answer[r["corrupted_answer"]] for r in rows], dtype=torch.long),
    }
    data = {"n": n, "seed": seed, "relation": relation, "split": split, "prepend_bos": prepend_bos,
            "padding": "right", "pad_id": pad, "facts_used": len(partners), "facts_total": len(facts(relation, split)),
            "max_len": int(clean_ids.shape[1])}
    return Artifact(tensors=tensors, tables={"prompts": pl.DataFrame(rows)}, data=data)


@spec.dataset(
    "facts",
    version=2,
    params=[
        Param("n", int, 48, minimum=1, ceiling=10_000, doc="number of clean/corrupted prompt pairs"),
        Param("seed", int, 0, minimum=0, doc="sampling seed"),
        Param("relation", str, "all", choices=RELATIONS,
              doc="capital (country -> capital), landmark (-> city), or all"),
        Param("prepend_bos", bool, None, doc="force a leading BOS on or off (default: the tokenizer's convention)"),
        Param("split", str, None, choices=SPLITS,
              doc="train | novel | all (default: novel for zoo models, from their splits.json; else all)"),
    ],
    provides=frozenset({"answers", "corrupted"}),
    needs_model=True,
)
def run(inputs: dict, params: dict, ctx: Any) -> Artifact:
    """Factual recall prompts ("The Eiffel Tower is in the city of" -> " Paris"), another subject corrupting each.

    split: novel = a phrasing no zoo model read (the zoo default); train / all = the published
    template, one of the forms mini reads every fact in.
    """
    model = inputs["model"]
    split, why = S.resolve("facts", params.get("split"), model.data)
    tok = tokenizer_of(model, ctx)
    art = generate(tok, **{k: params[k] for k in ("n", "seed", "relation", "prepend_bos") if k in params}, split=split)
    return Artifact(tensors=art.tensors, tables=art.tables, data={**art.data, "split_source": why})
