"""What every operator that reads a trained (or loaded) dictionary does first, written once:
take the last checkpoint of a training chain, find the model and tokenise the corpus with it
(plan time), then load the dictionary, its read/write sites and the model's adapter, check the
listed features against its width, and cut the corpus to the tokens asked for (run time).

Used by score sae, dashboard, explain, clamp, patch features, match features and attribute features.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

from mechstudy.stdlib.datasets import Prompts
from mechstudy.stdlib.dictionary.evaluate import Sites
from mechstudy.stdlib.dictionary.model import Dictionary, Shape
from mechstudy.stdlib.models.sites import Site


def load(artifact: Any) -> Dictionary:
    """The trained dictionary (raw activations) of a `train_dictionary` / `load sae` artifact."""
    return Dictionary.of(Shape(**artifact.data["shape"]), {k: v for k, v in artifact.tensors.items()
                                                            if not k.startswith("state.")})


def sites_of(data: Mapping[str, Any]) -> Sites:
    """A dictionary's read and write sites, from its training artifact's data."""
    names = [Site.parse(n) for n in data["site"]]
    if data["kind"] == "transcoder":
        return Sites([names[0]], [names[1]])
    return Sites(names, names)


def last(dictionary: Any) -> Any:
    """The last checkpoint node of a training chain (a sweep of checkpoints is a list)."""
    return dictionary[-1] if isinstance(dictionary, list) else dictionary


def model_of(dictionary: Any) -> Any:
    """The model node a dictionary was trained on or loaded for (None for one trained on a dataset)."""
    return dict(dictionary.inputs).get("model")


def corpus_for(b: Any, corpus: Any, model: Any) -> Any:
    """The corpus node tokenised by `model` (the dictionary's model, whatever the statement inferred)."""
    if corpus is None or model is None:
        return corpus
    return b.node("dataset", {k: v for k, v in corpus.params}, {"model": model})


def plan_reading(op: str, with_model: bool = False) -> Callable[[dict, Any], Any]:
    """The plan of an operator reading `params["dictionary"]`: its last checkpoint; with `with_model`,
    also the dictionary's own model and the corpus tokenised by it (statements that name no model)."""
    def plan(params: dict, b: Any) -> Any:
        d = last(params["dictionary"])
        extra: dict[str, Any] = {"dictionary": d}
        if with_model:
            model = model_of(d)
            extra.update(model=model, corpus=corpus_for(b, params["corpus"], model))
        return b.node(op, {**params, **extra})
    return plan


def open_dictionary(inputs: Mapping[str, Any], ctx: Any, verb: str, one_model: bool = False,
                    one_site: bool = False) -> tuple[Any, Dictionary, Sites]:
    """(the model's adapter, the dictionary, its sites) for an operator `verb` that runs the model."""
    art = inputs["dictionary"]
    if "model" not in inputs:
        raise ValueError(f"{verb} needs a dictionary of a model's activations (`of MODEL over CORPUS`)")
    if one_model and art.data.get("models", 1) > 1:
        raise ValueError(f"{verb} reads one model; this crosscoder reads two")
    sites = sites_of(art.data)
    if one_site and (len(sites.inputs) != 1 or len(sites.outputs) != 1):
        raise ValueError(f"{verb} reads one site and writes one: an SAE or a transcoder, not a crosscoder")
    return ctx.model(inputs["model"]), load(art), sites


def feature_list(given: list | None, width: int) -> list[int]:
    """The listed features (all when none are listed), each checked against the dictionary's width."""
    index = list(range(width)) if not given else [int(i) for i in given]
    bad = [i for i in index if i >= width]
    if bad:
        raise ValueError(f"feature {bad[0]} out of range: the dictionary has {width}")
    return index


def first_tokens(corpus: Any, tokens: int) -> Prompts:
    """The corpus's first rows holding at least `tokens` tokens (at least one row)."""
    p = Prompts.of(corpus)
    rows = max(1, min(p.n, math.ceil(int(tokens) / p.ids.shape[1])))
    return Prompts(p.ids[:rows], p.attention_mask[:rows], p.read_pos[:rows])
