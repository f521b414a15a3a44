"""`steer v of m on prompts scale 4 generate 20`: add a steering vector to the residual stream and
measure what changes, in a metric and in generated text.

The vector `v` (a `contrast` or `actadd` result; `stdlib/representations/steering.py`) is added,
times `scale`, at its own site and layer(s), at every position (the prompt's and each generated
token's). Every prompt of the dataset is read at its answer position with and without steering:
the metric (`with METRIC`, default logit_diff; kl is KL(unsteered || steered)) before and after, and
its shift. The first `show` prompts are continued for `generate` tokens, greedily and with `seeds`
sampled continuations (seeds 0, 1, ...; `temperature`, `top_k`), each with and without steering:
a sampled row draws from its own seeded generator, so the table is the same on every run.

Tables: "result" (condition: unsteered / steered; the metric's mean and standard deviation),
"per_prompt" (both values and the shift per prompt), "generations" (prompt, decoding, the two
continuations), "first_tokens" (per decoding, over the shown prompts: how often the first
generated token is the dataset's answer `io_id` or its alternative `s_id`, unsteered and steered).
"""

from __future__ import annotations

from typing import Any

import polars as pl
import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib import metrics
from mechstudy.stdlib.datasets import Prompts
from mechstudy.stdlib.models.base import Edit
from mechstudy.stdlib.models.batching import chunks, trimmed
from mechstudy.stdlib.models.sites import Site
from mechstudy.stdlib.representations import generation as gen
from mechstudy.stdlib.representations import steering


def edits_for(st: steering.Steering, scale: float, rows: list[int] | None = None) -> list[Edit]:
    """The steering edits: scale x each layer's vector added at its site (on `rows`, default all)."""
    return [Edit(Site(l, st.site), scale * st.vectors[i], mode="add", rows=rows) for i, l in enumerate(st.layers)]


def answer_logits(adapter: Any, prompts: Prompts, edit_list: list[Edit], max_rows: int) -> torch.Tensor:
    """[N, V] logits at each prompt's read position with the edits applied to every row."""
    out = []
    with torch.no_grad():
        for rows in chunks(prompts.n, max_rows):
            ids, mask = trimmed(prompts.ids, prompts.attention_mask, rows)
            out.append(adapter.forward(ids, mask, edits=edit_list, logits_at=prompts.read_pos[rows]).logits.double().cpu())
    return torch.cat(out)


@spec.operator(
    "steer",
    version=1,
    verb="steer",
    params=[
        Param("vector", spec.RESULT, doc="a steering vector (`contrast ...`, `actadd ...`)"),
        Param("model", spec.MODEL),
        Param("dataset", spec.DATASET, doc="the prompts steered"),
        Param("metric", spec.METRIC, "logit_diff", doc="measured with and without steering"),
        Param("scale", float, 4.0, sweepable=True, doc="multiplies the vector"),
        Param("generate", int, 20, minimum=0, ceiling=10_000, doc="tokens generated per continuation"),
        Param("seeds", int, 3, minimum=0, ceiling=1_000, doc="sampled continuations per prompt (seeds 0..seeds-1), besides greedy"),
        Param("temperature", float, 1.0, above=0.0, doc="sampling temperature"),
        Param("top_k", int, 0, minimum=0, doc="sample among the k most likely tokens (0: all)"),
        Param("show", int, 6, minimum=1, ceiling=10_000, doc="prompts continued (the first ones of the dataset)"),
    ],
    output="table",
    uses_model=True,
    default_chart="bar",
    model_features=frozenset({"causal", "lm_head"}),
    example='model m = zoo "mini"\ndataset neg = sentiment(polarity=negative, n=8)\n'
            'w = actadd resid_pre in layer 1 of m positive " wonderful" negative " terrible"\n'
            "steer w of m on neg scale 4 generate 8",
)
def run(inputs: dict[str, Artifact], params: dict, ctx: Any) -> Artifact:
    """Steering: the metric before and after adding the vector, and generations with and without it."""
    adapter = ctx.model(inputs["model"])
    st = steering.read(inputs["vector"])
    fp = inputs["model"].data.get("fingerprint")
    if st.fingerprint and fp and st.fingerprint != fp:
        raise ValueError("the steering vector was found on another model; steer the model it was found on")
    if st.vectors.shape[-1] != adapter.d_model:
        raise ValueError(f"the steering vector has {st.vectors.shape[-1]} dimensions, the model {adapter.d_model}")
    dataset = inputs["dataset"]
    prompts = Prompts.of(dataset)
    scale, metric = float(params["scale"]), params["metric"]
    plain = answer_logits(adapter, prompts, [], ctx.max_rows)
    steered = answer_logits(adapter, prompts, edits_for(st, scale), ctx.max_rows)
    data = dataset.tensors
    m_plain = metrics.compute(metric, plain, data, None, plain)
    m_steer = metrics.compute(metric, steered, data, None, plain)
    shift = m_steer - m_plain
    n = prompts.n
    std = lambda x: float(x.std()) if n > 1 else 0.0  # noqa: E731
    result = pl.DataFrame({"condition": ["unsteered", "steered"], "mean": [float(m_plain.mean()), float(m_steer.mean())],
                           "std": [std(m_plain), std(m_steer)], "n": [n, n]})
    per_prompt = pl.DataFrame({"prompt": list(range(n)), "unsteered": m_plain.tolist(), "steered": m_steer.tolist(),
                               "shift": shift.tolist()})
    # Generations: per prompt one row per (decoding, condition); steered rows are the odd ones.
    decodings = [None] + list(range(int(params["seeds"])))
    row_seeds = [s for s in decodings for _ in (0, 1)]
    steer_rows = list(range(1, len(row_seeds), 2))
    tok = adapter.tokenizer
    answers = {k: torch.as_tensor(data[k]).long() for k in ("io_id", "s_id") if k in data}
    gens, firsts = [], {d: {"answer": [0, 0], "other": [0, 0], "n": 0} for d in range(len(decodings))}
    show = min(int(params["show"]), n)
    for p in range(show):
        length = int(prompts.attention_mask[p].sum())
        ids = prompts.ids[p, :length].tolist()
        toks, _ = gen.generate(adapter, ids, int(params["generate"]), row_seeds,
                               lambda w: edits_for(st, scale, steer_rows), params["temperature"], params["top_k"])
        for d, s in enumerate(decodings):
            a, b = toks[2 * d].tolist(), toks[2 * d + 1].tolist()
            gens.append({"prompt": p, "text": tok.decode(ids), "decoding": "greedy" if s is None else f"seed {s}",
                         "unsteered": tok.decode(a), "steered": tok.decode(b),
                         "unsteered_first": tok.decode(a[:1]), "steered_first": tok.decode(b[:1])})
            if answers and a:
                f = firsts[d]
                f["n"] += 1
                for j, first in enumerate((a[0], b[0])):
                    f["answer"][j] += int(first == int(answers["io_id"][p])) if "io_id" in answers else 0
                    f["other"][j] += int(first == int(answers["s_id"][p])) if "s_id" in answers else 0
    first_rows = [{"decoding": "greedy" if s is None else f"seed {s}", "prompts": firsts[d]["n"],
                   "answer_unsteered": firsts[d]["answer"][0] / max(firsts[d]["n"], 1),
                   "answer_steered": firsts[d]["answer"][1] / max(firsts[d]["n"], 1),
                   "other_unsteered": firsts[d]["other"][0] / max(firsts[d]["n"], 1),
                   "other_steered": firsts[d]["other"][1] / max(firsts[d]["n"], 1)}
                  for d, s in enumerate(decodings)] if answers else []
    changed = sum(g["unsteered"] != g["steered"] for g in gens)
    headline = [{"label": f"{metric} shift", "value": float(shift.mean()),
                 "detail": f"{float(m_plain.mean()):.3g} -> {float(m_steer.mean()):.3g} (mean of {n} prompts, "
                           f"std of the shift {std(shift):.3g}); scale {scale:g}, {st.method} vector at "
                           f"{st.site} layer(s) {', '.join(map(str, st.layers))}"},
                {"label": "continuations changed", "value": f"{changed} of {len(gens)}",
                 "detail": f"greedy and {params['seeds']} seeds x {show} prompts, {params['generate']} tokens"}]
    if first_rows:
        sampled = [r for r in first_rows if r["decoding"] != "greedy"]
        if sampled:
            headline.append({"label": "first token = alternative (s_id), sampled",
                             "value": " / ".join(f"{r['other_unsteered']:.2f}->{r['other_steered']:.2f}" for r in sampled),
                             "detail": "per seed: unsteered -> steered"})
    return Artifact(
        tensors={"unsteered": m_plain.float(), "steered": m_steer.float(), "shift": shift.float()},
        tables={"result": result, "per_prompt": per_prompt,
                "generations": pl.DataFrame(gens, schema={"prompt": pl.Int64, "text": pl.Utf8, "decoding": pl.Utf8,
                                                          "unsteered": pl.Utf8, "steered": pl.Utf8,
                                                          "unsteered_first": pl.Utf8, "steered_first": pl.Utf8}),
                "first_tokens": pl.DataFrame(first_rows)},
        data={"metric": metric, "scale": scale, "vector": {"site": st.site, "layers": st.layers, "method": st.method},
              "where": "added at every position of the prompt and of each generated token",
              "convention": f"{metric} at each prompt's answer position; kl = KL(unsteered || steered)",
              "chart": {"x": "condition", "y": "mean", "title": f"{metric} without and with steering (scale {scale:g})"},
              "headline": headline},
    )
