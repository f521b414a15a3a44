"""`activations` (internal): one shard of the activation store, rows [start, start + rows) of a corpus.

The corpus is any dataset artifact with prompts (a `corpus` declaration's packed rows, or a
dataset's clean prompts; `datasets.Prompts.of`). Only real tokens are kept (the attention mask),
in row-major order, with the site's axes after the sequence flattened into one width (``z``
[S, H, d_head] -> H * d_head).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib.datasets import Prompts
from mechstudy.stdlib.models.batching import chunks, trimmed
from mechstudy.stdlib.models.sites import SITE_KINDS, Site

# Kinds with one sequence axis first and a value per token: what a dictionary can read or write.
STORABLE: tuple[str, ...] = tuple(k.name for k in SITE_KINDS.values()
                                  if k.axes and k.axes[0] == "seq" and k.axes.count("seq") == 1 and k.write is not None)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ALL_ROWS = 1 << 40  # a shard "to the end" of a dataset whose size the plan cannot know


def corpus_rows(corpus: Any) -> int | None:
    """Rows a `dataset` node of a corpus will have, from its declaration (None for other datasets)."""
    gen = corpus.param("generator") or ""
    p = corpus.param("params") or {}
    if spec.is_corpus(gen) and "tokens" in p and "context" in p:
        return max(1, int(p["tokens"]) // int(p["context"]))
    return None


def corpus_context(corpus: Any) -> int | None:
    p = corpus.param("params") or {}
    return int(p["context"]) if "context" in p else None


def plan_shards(b: Any, model: Any, corpus: Any, site: str, layer: int | None, *, shard_tokens: int = 65_536,
                dtype: str = "float32") -> list[Any]:
    """The shard nodes of (model, corpus, site kind, layer): one per `shard_tokens // context` rows
    of a corpus (one shard for a dataset whose size is only known when it runs)."""
    rows = corpus_rows(corpus)
    if rows is None:
        spans = [(0, ALL_ROWS)]
    else:
        per = max(1, int(shard_tokens) // (corpus_context(corpus) or 1))
        spans = [(s, min(per, rows - s)) for s in range(0, rows, per)]
    return [b.node("activations", {"site": site, "layer": layer, "start": s, "rows": n, "dtype": dtype,
                                   "model": model, "corpus": corpus}) for s, n in spans]


def shard_inputs(*columns: Sequence[Any]) -> dict[str, Any]:
    """Input names for aligned shard columns: column c's shard i is ``shard{c}_{i:03d}``.

    >>> sorted(shard_inputs(["a", "b"], ["c", "d"]))
    ['shard0_000', 'shard0_001', 'shard1_000', 'shard1_001']
    """
    if len({len(c) for c in columns}) > 1:
        raise ValueError("aligned activation columns need the same number of shards")
    return {f"shard{c}_{i:03d}": n for c, col in enumerate(columns) for i, n in enumerate(col)}


def capture_rows(adapter: Any, prompts: Prompts, site: Site, rows: torch.Tensor, max_rows: int, dtype: torch.dtype,
                 progress: Any = None) -> dict[str, torch.Tensor]:
    """{acts [n, width], token, row, pos [n]} for the real tokens of `rows` (a shard's payload)."""
    parts: dict[str, list[torch.Tensor]] = {"acts": [], "token": [], "row": [], "pos": []}
    blocks = list(chunks(len(rows), max_rows))
    with torch.no_grad():
        for i, idx in enumerate(blocks):
            r = rows[idx]
            ids, mask = trimmed(prompts.ids, prompts.attention_mask, r)
            act = adapter.capture(ids, mask, [site])[site]  # [B, S, ...]
            real = mask.bool()
            parts["acts"].append(act[real].flatten(1).to("cpu", dtype))
            parts["token"].append(ids[real].to(torch.int32))
            parts["row"].append(r[:, None].expand_as(ids)[real].to(torch.int32))
            parts["pos"].append(torch.arange(ids.shape[1])[None].expand_as(ids)[real].to(torch.int32))
            if progress is not None:
                progress(i + 1, len(blocks), "batches")
    width = site.spec.shape(adapter.dims, 1, 1, site.head)
    width = int(torch.tensor(width[2:]).prod()) if len(width) > 2 else 1
    empty = {"acts": torch.zeros(0, width, dtype=dtype)}
    return {k: torch.cat(v) if v else empty.get(k, torch.zeros(0, dtype=torch.int32)) for k, v in parts.items()}


@spec.operator(
    "activations",
    version=1,
    params=[
        Param("site", str, choices=STORABLE, doc="site kind"),
        Param("layer", int, None, doc="layer (None for a model-level site)"),
        Param("start", int, 0, doc="first corpus row"),
        Param("rows", int, ALL_ROWS, doc="corpus rows in this shard"),
        Param("dtype", str, "float32", choices=tuple(DTYPES), doc="stored precision"),
        Param("model", spec.MODEL),
        Param("corpus", spec.CORPUS),
    ],
    verb=None,
    output="tensors",
    uses_model=True,
)
def run(inputs: Mapping[str, Artifact], params: dict, ctx: Any) -> Artifact:
    """One shard: the site's activations at every real token of rows [start, start + rows)."""
    adapter = ctx.model(inputs["model"])
    prompts = Prompts.of(inputs["corpus"])
    site = Site(params["layer"], params["site"])
    start = min(int(params["start"]), prompts.n)
    rows = torch.arange(start, min(prompts.n, start + int(params["rows"])))
    out = capture_rows(adapter, prompts, site, rows, ctx.max_rows, DTYPES[params["dtype"]],
                       getattr(ctx, "progress", None))
    return Artifact(tensors=out, data={"site": site.name, "kind": params["site"], "layer": params["layer"],
                                       "start": start, "rows": int(rows.numel()), "tokens": int(out["acts"].shape[0]),
                                       "width": int(out["acts"].shape[1]), "dtype": params["dtype"]})
