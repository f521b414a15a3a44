"""Built-in dataset generators (one module each) and the helpers they share.

Generators register themselves with `spec.dataset` where they are defined; the package is walked
by `mechstudy.stdlib.load_all()`, so there is no import list here.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import torch


@functools.lru_cache(maxsize=None)
def _reference_text(name: str) -> str:
    return (importlib.resources.files("mechstudy.stdlib") / "data" / f"{name}.json").read_text()


def reference(name: str) -> dict[str, Any]:
    """A reference data file shipped in `mechstudy/stdlib/data/` (a fresh copy each call).

    >>> len(reference("ioi")["NAMES"]) > 50
    True
    """
    return json.loads(_reference_text(name))


def tokenizer_of(model_artifact: Any, ctx: Any = None) -> Any:
    """The tokenizer of a `model` node's artifact, loaded from the model directory alone (memoised
    per process): a dataset node never loads the model's weights (the one `load_adapter` would
    give is the same `AutoTokenizer.from_pretrained` of the same directory). `ctx` is accepted
    for the generators' calls and not needed."""
    return _load_tokenizer(model_artifact.data["path"])


@functools.lru_cache(maxsize=8)
def _load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def encode(tokenizer: Any, text: str, prepend_bos: bool | None) -> list[int]:
    """Token ids of `text`. prepend_bos None keeps the tokenizer's own convention; True/False
    force a leading BOS (the tokenizer's bos, else its eos) on or off."""
    ids = list(tokenizer(text, add_special_tokens=prepend_bos is None)["input_ids"])
    if prepend_bos:
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if bos is None:
            raise ValueError("prepend_bos=true but the tokenizer has no bos or eos token")
        ids = [bos] + ids
    return ids


def single_token(tokenizer: Any, word: str) -> int | None:
    """The id of `word` when it is exactly one token (callers pass the leading space GPT-2 BPE
    needs, e.g. " John") and not the unknown token, else None."""
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    # A word-level tokenizer maps an unknown word to one <unk> token: not the word.
    if len(ids) != 1 or (tokenizer.unk_token_id is not None and ids[0] == tokenizer.unk_token_id):
        return None
    return ids[0]


def pad_right(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists -> (ids [N, S] int64, attention_mask [N, S] int64).

    >>> ids, mask = pad_right([[5, 6, 7], [8]], 0)
    >>> ids.tolist(), mask.tolist()
    ([[5, 6, 7], [8, 0, 0]], [[1, 1, 1], [1, 0, 0]])
    """
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def pad_id_of(tokenizer: Any) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id):
        if tid is not None:
            return int(tid)
    return 0


@dataclass(frozen=True)
class Pairs:
    """The tensors of a clean/corrupted dataset artifact (ioi, greater_than ...), right padded.

    clean_ids, corrupted_ids, attention_mask: [N, S]; answer_pos: [N]; io_id, s_id: [N] when the
    dataset has single answer tokens (None otherwise). `data` holds every tensor of the artifact,
    which is what metrics read (`metrics.compute(name, logits, pairs.data, rows)`).
    """

    clean_ids: torch.Tensor
    corrupted_ids: torch.Tensor
    attention_mask: torch.Tensor
    answer_pos: torch.Tensor
    io_id: torch.Tensor | None = None
    s_id: torch.Tensor | None = None
    data: Mapping[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    REQUIRED: ClassVar[tuple[str, ...]] = ("clean_ids", "corrupted_ids", "attention_mask", "answer_pos")

    @classmethod
    def of(cls, artifact: Any) -> "Pairs":
        t = artifact.tensors
        missing = [k for k in cls.REQUIRED if k not in t]
        if missing:
            raise ValueError(f"dataset has no {', '.join(missing)}: it needs clean/corrupted prompt pairs")
        answers = {k: torch.as_tensor(t[k]).long() for k in ("io_id", "s_id") if k in t}
        return cls(**{k: torch.as_tensor(t[k]).long() for k in cls.REQUIRED}, **answers,
                   data={k: torch.as_tensor(v) for k, v in t.items()})

    @property
    def n(self) -> int:
        return int(self.clean_ids.shape[0])

    def ids(self, which: str) -> torch.Tensor:
        """"clean" or "corrupted" ids."""
        return {"clean": self.clean_ids, "corrupted": self.corrupted_ids}[which]


@dataclass(frozen=True)
class Prompts:
    """The prompts of any dataset artifact, paired or not, right padded: ids and attention_mask
    [N, S] (the clean prompts of a paired dataset), `read_pos` [N] the position each prompt is read
    at (its answer position when the dataset has one, else its last real token), and `answer` [N]
    (the expected next token, `io_id`) or None."""

    ids: torch.Tensor
    attention_mask: torch.Tensor
    read_pos: torch.Tensor
    answer: torch.Tensor | None = None

    @classmethod
    def of(cls, artifact: Any) -> "Prompts":
        t = artifact.tensors
        key = "clean_ids" if "clean_ids" in t else "input_ids" if "input_ids" in t else None
        if key is None:
            raise ValueError("the dataset has no prompts (clean_ids or input_ids)")
        ids = torch.as_tensor(t[key]).long()
        mask = torch.as_tensor(t["attention_mask"]).long() if "attention_mask" in t else torch.ones_like(ids)
        pos = torch.as_tensor(t["answer_pos"]).long() if "answer_pos" in t else mask.sum(1) - 1
        answer = torch.as_tensor(t["io_id"]).long() if "io_id" in t else None
        return cls(ids, mask, pos, answer)

    @property
    def n(self) -> int:
        return int(self.ids.shape[0])
