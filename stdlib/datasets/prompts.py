"""`prompts`: a few prompts written in the study itself, for a quick look without a file.

    dataset p = prompts(text=["The film was awful, so I felt", "I thought the play was dull. I"],
                        answer=[" happy", " loved"], wrong=[" sad", " hated"])

The options are lists, one element per prompt, and play the roles of the `file` dataset's columns
(same tensors, same capabilities, same tokenisation: this is a `file` dataset whose table is
written inline): ``text`` the prompts (needed), ``answer`` / ``wrong`` the correct and a wrong
next token (``logit_diff`` = answer - wrong; ``answer`` alone gives ``prob`` and ``loss``),
``corrupted`` corrupted prompts as many tokens long as their prompts (the pairs patching reads),
``label`` a class or number per prompt (probes). Every list given must be as long as ``text``;
`study check` says which one is not. Answers must be one token; ``answer_space`` reads "happy"
after a prompt that does not end in a space as " happy", as in running text.

Meant for a handful of prompts (steering a few sentences, a patchscope target, a lens on one
fact); a dataset of many rows belongs in a file (`file "data.csv" ...`).
"""

from __future__ import annotations

from typing import Any

import polars as pl

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, OptionError, Param
from mechstudy.stdlib.datasets import file as file_ds
from mechstudy.stdlib.datasets import tokenizer_of

ROLES = {"text": "prompt", "answer": "answer", "wrong": "wrong", "corrupted": "corrupted", "label": "label"}
MAX_PROMPTS = 1_000  # a study that writes more prompts than this inline wants a file


def table_of(params: dict) -> pl.DataFrame:
    """The given lists as a table with the `file` dataset's column names (checked: strings, equal lengths).

    >>> table_of({"text": ["a b", "c d"], "answer": [" x", " y"]}).columns
    ['prompt', 'answer']
    """
    text = params.get("text")
    text = list(text) if isinstance(text, (list, tuple)) else text
    if not isinstance(text, list) or not text:
        raise OptionError("text must be a list of prompts", "text", 'write text=["The film was", ...]')
    if len(text) > MAX_PROMPTS:
        raise OptionError(f"{len(text)} prompts written inline; at most {MAX_PROMPTS}", "text",
                          'put them in a file: dataset d = file "prompts.csv" prompt=text')
    columns: dict[str, list] = {}
    for option, column in ROLES.items():
        values = params.get(option)
        if values is None:
            continue
        values = list(values) if isinstance(values, (list, tuple)) else values
        if not isinstance(values, list):
            raise OptionError(f"{option} must be a list, one element per prompt", option, f"write {option}=[...]")
        if len(values) != len(text):
            raise OptionError(f"{option} has {len(values)} element(s) but text has {len(text)} prompt(s)", option,
                              "give one element per prompt, in the same order")
        if option != "label" and not all(isinstance(v, str) for v in values):
            bad = next(i for i, v in enumerate(values) if not isinstance(v, str))
            raise OptionError(f"{option}: element {bad} is not a string", option, 'write strings in quotes: [" Paris"]')
        if option != "label" and any(v == "" for v in values):
            raise OptionError(f"{option}: element {values.index('')} is empty", option)
        if option == "label" and not (all(isinstance(v, str) for v in values)
                                      or all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
                                      or all(isinstance(v, bool) for v in values)):
            raise OptionError("label: the labels must be all strings, all numbers or all booleans", option)
        columns[column] = values
    return pl.DataFrame(columns)


def file_params(params: dict) -> dict:
    """The `file` dataset's params for the inline table (its column names, our options)."""
    out = {"path": "prompts(...)", "answer_space": params.get("answer_space", True),
           "prepend_bos": params.get("prepend_bos"), "n": None}
    for option, column in ROLES.items():
        out[column] = column if params.get(option) is not None else None
    out["prompt"] = "prompt"
    return out


def prepare(params: dict) -> dict:
    table_of(params)  # raises OptionError with the option at fault, shown by `study check` with a caret
    return params


def provides_of(params: dict) -> frozenset[str]:
    """Capabilities of one declaration, as the `file` dataset's with the same columns.

    >>> sorted(provides_of({"text": ["a"], "answer": [" b"], "wrong": [" c"]}))
    ['answers']
    """
    return file_ds.provides_of(file_params(params))


@spec.dataset(
    "prompts",
    version=1,
    params=[
        Param("text", list, spec.REQUIRED, nonempty=True, doc="the prompts, as a list of strings"),
        Param("answer", list, None, nonempty=True, doc="the correct next token of each prompt"),
        Param("wrong", list, None, nonempty=True, doc="a wrong next token of each prompt (logit_diff = answer - wrong)"),
        Param("corrupted", list, None, nonempty=True, doc="a corrupted prompt per prompt, as many tokens long"),
        Param("label", list, None, nonempty=True, doc="a class or number per prompt (for probes)"),
        Param("answer_space", bool, True, doc="read answers with a leading space, as they follow the prompt"),
        Param("prepend_bos", bool, None, doc="force a leading BOS on or off (default: the tokenizer's convention)"),
    ],
    provides=frozenset({"answers", "corrupted", "labels"}),
    needs_model=True,
    example='dataset few = prompts(text=["The film was dull, so I felt", "The song was awful, so I felt"], '
            'answer=[" sad", " sad"], wrong=[" happy", " happy"])',
    prepare=prepare,
    provides_for=provides_of,
)
def run(inputs: dict, params: dict, ctx: Any) -> Artifact:
    """Prompts (and answers, corrupted prompts, labels) written inline as lists."""
    table = table_of(params)
    art = file_ds.generate(tokenizer_of(inputs["model"], ctx), table, file_params(params),
                           progress=getattr(ctx, "progress", None))
    data = {k: v for k, v in art.data.items() if k != "path"}
    return Artifact(tensors=art.tensors, tables=art.tables, data={**data, "source": "inline"})
