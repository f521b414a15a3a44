"""Evaluation splits shared by the task generators (`ioi`, `greater_than`, `facts`).

The partition itself is data: ``data/splits.json`` (the held-out markers of mini's recipe, the
novel templates and sentence forms). Every generator takes ``split``:

- ``train``: prompts built the way the zoo text recipe (mini) trains: a prompt may occur word for
  word in its training text;
- ``heldout``: what the mini recipe kept out of its task sentences (three IOI templates, one
  Greater-Than noun in six); NOT novel: their phrases or words occur elsewhere in its text;
- ``novel``: templates and sentence forms that never occur in a zoo model's training text, filler
  included (tests/test_zoo_splits.py regenerates the text and proves it);
- ``all``: the published dataset without any split, as used for models trained elsewhere (GPT-2 ...).

Words (names, places, objects, nouns, years, subjects) are not held out in any split: every one
occurs in mini's training text. Each generator's docstring says exactly what its splits hold.

Which split is the default depends on the model that tokenises the dataset: a zoo model's
directory holds ``splits.json`` (``{"evaluate_on": {"ioi": "novel", ...}}``), the split of
prompts that model never saw; any other model gets ``all``. A dataset artifact records the split it
used and where that choice came from (``split``, ``split_source``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from mechstudy.stdlib.datasets import reference

SPLITS = ("train", "heldout", "novel", "all")
SPLIT_DOC = "train | heldout | novel | all (default: the split a zoo model never saw, from its splits.json; else all)"
MODEL_SPLITS_FILE = "splits.json"


def partition(task: str) -> dict[str, Any]:
    """The `task` section ("ioi", "greater_than", "facts") of ``data/splits.json``.

    >>> len(partition("ioi")["novel_templates"]) >= 8
    True
    """
    return reference("splits")[task]


def model_splits(path: str | Path | None) -> dict[str, Any]:
    """A model directory's ``splits.json`` ({} when it has none: not a zoo model)."""
    if path is None:
        return {}
    f = Path(path) / MODEL_SPLITS_FILE
    return json.loads(f.read_text()) if f.is_file() else {}


def resolve(task: str, split: str | None, model_data: Mapping[str, Any] | None) -> tuple[str, str]:
    """(split, why): the split asked for, else the model's never-seen split, else "all".

    >>> resolve("ioi", "train", None)
    ('train', 'declared')
    >>> resolve("ioi", None, {"path": "/nonexistent"})
    ('all', 'default for a model without splits.json')
    """
    if split is not None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
        return split, "declared"
    chosen = model_splits((model_data or {}).get("path")).get("evaluate_on", {}).get(task)
    if chosen is None:
        return "all", "default for a model without splits.json"
    return chosen, "default: the split this zoo model never saw (its splits.json)"
