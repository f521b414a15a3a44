"""`recall`: factual-recall prompts with the subject's tokens marked, for causal tracing.

The prompts, corruptions and answers are exactly the `facts` dataset's ("The Eiffel Tower is in the
city of" -> " Paris"; see `stdlib/datasets/facts.py`), plus ``subject_mask`` [N, S] (bool): the
tokens that spell the subject ("Eiffel", " Tower"), found from the tokenizer's character offsets,
so a subject that shares a word with its corrupting partner is still marked whole. Also
``subject_first`` / ``subject_last`` [N], the first and last subject positions.
"""

from __future__ import annotations

from typing import Any

import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib.datasets import facts as F
from mechstudy.stdlib.datasets import tokenizer_of


def subject_tokens(tokenizer: Any, prompt: str, subject: str, n_tokens: int, prepend_bos: bool | None) -> list[int]:
    """Positions of the tokens of `prompt` that overlap the subject's characters (its first
    occurrence), in a prompt of `n_tokens` tokens as `datasets.encode` tokenises it."""
    start = prompt.index(subject)
    end = start + len(subject)
    enc = tokenizer(prompt, add_special_tokens=prepend_bos is None, return_offsets_mapping=True)
    shift = 1 if prepend_bos else 0
    if len(enc["input_ids"]) + shift != n_tokens:
        raise ValueError(f"recall: cannot align the subject of {prompt!r} with its tokens")
    out = [i + shift for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < end and b > start]
    if not out:
        raise ValueError(f"recall: the subject {subject!r} has no token in {prompt!r}")
    return out


def generate(tokenizer: Any, n: int = 48, seed: int = 0, relation: str = "all", prepend_bos: bool | None = None,
             **kw: Any) -> Artifact:
    """The `facts` rows with their subjects marked (see the module docstring)."""
    art = F.generate(tokenizer, n=n, seed=seed, relation=relation, prepend_bos=prepend_bos, **kw)
    t = dict(art.tensors)
    rows = art.tables["prompts"].to_dicts()
    mask = torch.zeros_like(t["clean_ids"], dtype=torch.bool)
    for i, r in enumerate(rows):
        pos = subject_tokens(tokenizer, r["clean"], r["subject"], int(t["attention_mask"][i].sum()), prepend_bos)
        mask[i, pos] = True
    idx = torch.arange(mask.shape[1])
    t["subject_mask"] = mask
    t["subject_first"] = torch.where(mask, idx, mask.shape[1]).min(1).values
    t["subject_last"] = torch.where(mask, idx, -1).max(1).values
    return Artifact(tensors=t, tables=art.tables, data={**art.data, "subjects": "subject_mask marks the subject's tokens"})


@spec.dataset(
    "recall",
    version=1,
    params=[
        Param("n", int, 48, minimum=1, ceiling=10_000, doc="number of prompts (with corrupted partners)"),
        Param("seed", int, 0, minimum=0, doc="sampling seed"),
        Param("relation", str, "all", choices=F.RELATIONS, doc="capital, landmark, or all"),
        Param("prepend_bos", bool, None, doc="force a leading BOS on or off (default: the tokenizer's convention)"),
    ],
    provides=frozenset({"answers", "corrupted", "subjects"}),
    needs_model=True,
    example="dataset rec = recall(n=16, relation=landmark)",
)
def run(inputs: dict, params: dict, ctx: Any) -> Artifact:
    """Factual recall prompts with the subject's tokens marked (subject_mask), for causal tracing."""
    tok = tokenizer_of(inputs["model"], ctx)
    return generate(tok, **{k: params[k] for k in ("n", "seed", "relation", "prepend_bos") if k in params})
