"""The zoo: small models trained by mechstudy's own recipes and shipped inside the package.

Each model lives in ``models/<name>/`` as a standard Hugging Face directory (``config.json``,
``model.safetensors``, ``tokenizer.json``, ``tokenizer_config.json``), with a model card
(``README.md``) and the behaviours measured when it was built (``behaviours.json``).

- ``attn2``: a 2-layer attention-only Llama (rotary positions, MLPs exactly zero) trained on
  random tokens with repeated segments; it has a previous-token head and induction heads.
- ``mini``: a 3-layer GPT-2 trained on a synthetic English corpus holding the shapes the stdlib
  studies (IOI, Greater-Than, factual recall, sentiment, days/months, repeats, filler).
- ``small``: GPT-2's block with rotary positions (a sequential GPT-NeoX), 2 layers with MLPs, trained on
  mini's corpus plus attn2's repeat rows: induction heads, and IOI on templates it never read.

The recipes (``train.py``, corpora in ``corpus.py``) are deterministic on CPU; ``python -m
mechstudy.stdlib.zoo.build all`` (``make zoo``) retrains and rewrites the shipped directories.

>>> sorted(names())
['attn2', 'mini', 'small']
"""

from __future__ import annotations

from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent / "models"
ZOO_NAMES = ("attn2", "mini", "small")


def names() -> list[str]:
    """The zoo models this package knows about."""
    return list(ZOO_NAMES)
