"""`train model using RECIPE`: train a zoo model by its recipe; the checkpoint is a cache node.

    attn2 = train model using attn2 steps=1500 seed=0

The result is an Artifact whose tensors are the model's state dict and whose data holds what a
Hugging Face directory needs besides the weights (config, tokenizer files) and the behaviours
measured on the recipe's held-out sets. `zoo.build.write_model_dir` turns it into the directory
that ships in the package. Training always runs on CPU with a fixed thread count: that is what
makes a recipe reproduce its weights bit for bit, whatever device the study runs on.
"""

from __future__ import annotations

from typing import Any

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param

RECIPE_NAMES = ("attn2", "mini", "small")


@spec.operator(
    "train_model",
    version=1,
    verb="train",
    components=("model",),
    output="model",
    params=[
        Param("method", str, choices=RECIPE_NAMES, doc="the zoo recipe to train"),
        Param("steps", int, None, minimum=1, ceiling=1_000_000, doc="optimiser steps (default: the recipe's)"),
        Param("seed", int, 0, minimum=0, doc="seeds the initialisation and every batch"),
        Param("lr", float, None, above=0.0, doc="peak learning rate (default: the recipe's)"),
        Param("threads", int, 1, minimum=1, maximum=256, doc="torch CPU threads; part of the key since it changes the bits"),
        Param("measure", bool, True, doc="measure the behaviours on the held-out sets"),
    ],
    example="attn2 = train model using attn2 steps=20 seed=0",
)
def run(inputs: dict, params: dict, ctx: Any) -> Artifact:
    """Train a zoo model (attn2, mini or small) by its deterministic CPU recipe."""
    from mechstudy.stdlib.zoo import build

    return build.train_artifact(params["method"], steps=params["steps"], seed=params["seed"], lr=params["lr"],
                                threads=params["threads"], measure_it=params["measure"],
                                log=getattr(ctx, "log", None))
