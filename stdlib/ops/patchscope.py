"""`patchscope resid_post in all layers of m on facts target "..."`: Patchscopes (Ghandeharioun et
al., 2024): a hidden state from a source prompt, patched into a target prompt, decoded by the model.

For each source prompt of the dataset and each layer, the state at the source position (`at last
position`: each prompt's answer position; or given positions) replaces the target prompt's state at
the same site, at `target_layers` (default: the same layer) and at the target's last token (or
`target_position`). The patched target then predicts its next token: its top tokens, the source's
answer (`io_id`) probability and rank when the dataset has one, and `generate` more tokens greedily
with the patch kept in place. With an identity target such as "lamp lamp, coin coin, x" the model
repeats what the patched state stands for: ``token_identity`` is how often its top token is the
source token itself, and the top tokens say what else the state carries.

Patching a state into its own prompt at its own layer and position changes nothing: the run is the
unpatched run, bit for bit.

Tables: "result" (per layer: token_identity, and answer_prob / answer_rank with answers),
"decoded" (per source prompt, position and layer: the source token, the top tokens with their
probabilities, the generated continuation).
"""

from __future__ import annotations

from typing import Any

import polars as pl
import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib.datasets import Prompts, encode
from mechstudy.stdlib.models.base import Edit
from mechstudy.stdlib.models.batching import capture_all
from mechstudy.stdlib.models.sites import Site, component, words
from mechstudy.stdlib.representations import generation as gen

COMPONENTS = words(lambda k: k.per_layer and k.stream)


def source_points(prompts: Prompts, positions: Any) -> list[tuple[int, int]]:
    """(prompt, position) pairs read from the sources."""
    lengths = prompts.attention_mask.sum(1).tolist()
    if positions in (None, "last"):
        return [(n, int(prompts.read_pos[n])) for n in range(prompts.n)]
    if positions in ("all", "each"):
        return [(n, p) for n in range(prompts.n) for p in range(int(lengths[n]))]
    return [(n, int(p)) for n in range(prompts.n) for p in positions if int(p) < lengths[n]]


def patched_logits(adapter: Any, target: list[int], site: Site, states: torch.Tensor, at: int,
                   steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the target once per state [R, d], the state written at `site` and position `at`:
    (next-token logits [R, V] after the target, generated tokens [R, steps])."""
    R = states.shape[0]

    def edits(width: int) -> list[Edit]:
        return [Edit(site, states[:, None, :], mode="replace", positions=[at])]

    toks, first = gen.generate(adapter, target, steps, [None] * R, edits)
    return first, toks


@spec.operator(
    "patchscope",
    version=1,
    verb="patchscope",
    components=COMPONENTS,
    params=[
        Param("component", str, "resid_post", choices=COMPONENTS, doc="the residual-stream state moved"),
        Param("layers", spec.LAYERS, "all", doc="source layers"),
        Param("positions", spec.POSITIONS, "last", doc="source positions: last (each prompt's answer position) or given"),
        Param("model", spec.MODEL),
        Param("dataset", spec.DATASET, doc="the source prompts"),
        Param("target", str, spec.REQUIRED, doc="the target prompt the state is patched into"),
        Param("target_layers", spec.LAYERS, None, doc="the layer written in the target (default: the source layer)"),
        Param("target_position", int, -1, minimum=-1, doc="the target position written (-1: its last token)"),
        Param("generate", int, 4, minimum=0, ceiling=10_000, doc="tokens generated after the patched target"),
        Param("top", int, 5, minimum=1, ceiling=1_000, doc="top tokens listed per patch"),
    ],
    output="table",
    uses_model=True,
    default_chart="line",
    model_features=frozenset({"causal", "lm_head"}),
    example='patchscope resid_post in all layers of m on ioi target " lamp lamp, coin coin, x"',
)
def run(inputs: dict[str, Artifact], params: dict, ctx: Any) -> Artifact:
    """A source prompt's hidden state patched into a target prompt and decoded (Patchscopes)."""
    adapter = ctx.model(inputs["model"])
    prompts = Prompts.of(inputs["dataset"])
    kind = component(params["component"]).kind.name
    layers = list(range(adapter.n_layers)) if params["layers"] in (None, "all") else [int(l) for l in params["layers"]]
    tl = params["target_layers"]
    targets = layers if tl in (None, "all") else [int(x) for x in tl]
    if len(targets) == 1 and len(layers) > 1:
        targets = targets * len(layers)
    if len(targets) != len(layers):
        raise ValueError(f"target_layers gives {len(targets)} layers for {len(layers)} source layers")
    target = encode(adapter.tokenizer, params["target"], None)
    if not target:
        raise ValueError("the target prompt is empty")
    at = params["target_position"] % len(target) if params["target_position"] < 0 else params["target_position"]
    if not 0 <= at < len(target):
        raise ValueError(f"target_position {params['target_position']} is outside the target's {len(target)} tokens")
    points = source_points(prompts, params["positions"])
    if not points:
        raise ValueError("no source position lies inside the prompts")
    acts = capture_all(adapter, prompts.ids, prompts.attention_mask, [Site(l, kind) for l in layers], ctx.max_rows)
    rows_n = torch.tensor([n for n, _ in points])
    rows_p = torch.tensor([p for _, p in points])
    src_tok = prompts.ids[rows_n, rows_p]
    tok = adapter.tokenizer
    k = int(params["top"])
    summary, decoded = [], []
    with torch.no_grad():
        for l, lt in zip(layers, targets):
            states = acts[Site(l, kind)][rows_n, rows_p].to(adapter.dtype)
            first = []
            toks = []
            for start in range(0, len(points), ctx.max_rows):
                f, t = patched_logits(adapter, target, Site(lt, kind), states[start:start + ctx.max_rows], at,
                                      int(params["generate"]))
                first.append(f)
                toks.append(t)
            logp = torch.log_softmax(torch.cat(first).double(), -1)  # [R, V]
            gen_toks = torch.cat(toks)
            ident = (logp.argmax(-1) == src_tok).double()
            row: dict[str, Any] = {"layer": l, "target_layer": lt, "token_identity": float(ident.mean())}
            if prompts.answer is not None:
                ans = prompts.answer[rows_n]
                lp_a = logp.gather(-1, ans[:, None])[:, 0]
                row["answer_prob"] = float(lp_a.exp().mean())
                row["answer_rank"] = float((logp > lp_a[:, None]).sum(-1).double().median())
            summary.append(row)
            p, ids = logp.exp().topk(k, -1)
            for r, (n, pos) in enumerate(points):
                decoded.append({"layer": l, "prompt": n, "position": pos, "source_token": tok.decode([int(src_tok[r])]),
                                "top": [tok.decode([int(i)]) for i in ids[r]], "probs": p[r].tolist(),
                                "top_token": tok.decode([int(ids[r, 0])]),
                                "continuation": tok.decode(gen_toks[r].tolist())})
    result = pl.DataFrame(summary)
    best = max(summary, key=lambda r: r["token_identity"])
    value = "answer_prob" if prompts.answer is not None else "token_identity"
    headline = [{"label": "token identity", "value": best["token_identity"],
                 "detail": f"best at layer {best['layer']}: share of patches whose top token is the source token"}]
    if prompts.answer is not None:
        ba = max(summary, key=lambda r: r["answer_prob"])
        headline.append({"label": "answer probability", "value": ba["answer_prob"], "detail": f"best at layer {ba['layer']}"})
    return Artifact(
        tensors={"token_identity": torch.tensor([r["token_identity"] for r in summary])},
        tables={"result": result, "decoded": pl.DataFrame(decoded)},
        data={"site": kind, "layers": layers, "target_layers": targets, "target": params["target"],
              "target_tokens": [tok.decode([i]) for i in target], "target_position": at, "sources": len(points),
              "convention": "a source state replaces the target's at one position; next-token distribution after "
                            "the target; generation greedy with the patch kept",
              "chart": {"x": "layer", "y": value, "title": f"Patchscope into {params['target']!r}"},
              "headline": headline},
    )
