"""`trace resid_post in all layers of m on rec noise 3`: causal tracing with Gaussian noise
(Meng et al., 2022, "jittering").

For each prompt: the clean run gives p_clean = P(answer); the corrupted run adds Gaussian noise of
standard deviation `noise` x sigma to the embeddings (the stream entering layer 0) at the subject's
tokens (``subject_mask``; `dataset rec = recall(...)`), sigma being the standard deviation of those
embeddings over the dataset's real tokens; p_noised is the mean over `samples` noise draws
(seeded: `seed`, per prompt). Then, one layer and one position at a time, the clean state of the
chosen site is restored into the noised run: the restoration effect is p_restored - p_noised,
averaged over the same draws. Every (layer, position) restoration of one draw is one row of a
batched forward.

Prompts differ in length and in where their subject is, so the main table ("result") averages the
effect over prompts by position kind, as in the paper: first / middle / last subject token, first
token after the subject, further tokens, last token. "per_prompt" has every prompt's (layer,
position) effect with its token. Components: the residual stream (resid_pre, resid_mid,
resid_post), or what a layer's attention or MLP adds (attn_out, mlp_out).
"""

from __future__ import annotations

from typing import Any

import polars as pl
import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib.datasets import Prompts
from mechstudy.stdlib.models.base import Edit
from mechstudy.stdlib.models.batching import capture_all
from mechstudy.stdlib.models.sites import Site, component, words

COMPONENTS = words(lambda k: k.per_layer and (k.stream or k.name in ("attn_out", "mlp_out")))
KINDS = ("0 first subject token", "1 middle subject tokens", "2 last subject token", "3 first token after",
         "4 further tokens", "5 last token")


def position_kinds(subject: torch.Tensor, length: int) -> list[int]:
    """The paper's position kind (index into KINDS) of each of a prompt's `length` positions.

    >>> position_kinds(torch.tensor([False, True, True, True, False, False, False]), 7)
    [4, 0, 1, 2, 3, 4, 5]
    >>> position_kinds(torch.tensor([False, True, False, False]), 4)
    [4, 2, 3, 5]
    """
    pos = subject[:length].nonzero().flatten().tolist()
    first, last = pos[0], pos[-1]
    out = []
    for p in range(length):
        if p == length - 1:
            out.append(5)
        elif p == last:  # a one-token subject is its own last token
            out.append(2)
        elif p == first:
            out.append(0)
        elif first < p < last:
            out.append(1)
        elif p == last + 1:
            out.append(3)
        else:
            out.append(4)
    return out


def answer_prob(logits: torch.Tensor, answer: int) -> torch.Tensor:
    return torch.softmax(logits.double(), -1)[:, answer]


def trace_prompt(adapter: Any, ids: torch.Tensor, subject: torch.Tensor, answer: int, kind: str, layers: list[int],
                 clean: dict[int, torch.Tensor], scale: float, samples: int, gen: torch.Generator,
                 max_rows: int) -> tuple[float, float, torch.Tensor]:
    """(p_clean, p_noised, effect [len(layers), S]) for one prompt: ids [S], subject [S] bool,
    clean [layer] -> its clean activation [S, d]."""
    S, d = ids.shape[0], adapter.d_model
    noise = torch.randn(samples, S, d, generator=gen, dtype=torch.float64) * scale
    noise = (noise * subject[None, :, None]).to(adapter.dtype)  # only the subject's tokens
    site0 = Site(0, "resid_pre")
    with torch.no_grad():
        p_clean = float(answer_prob(adapter.forward(ids[None], None, logits_at=torch.tensor([S - 1])).logits, answer)[0])
        # One row per (sample, restoration); restoration -1 is the noised run itself.
        grid = [(s, -1, -1) for s in range(samples)] + [
            (s, li, p) for s in range(samples) for li in range(len(layers)) for p in range(S)]
        probs = torch.zeros(len(grid), dtype=torch.float64)
        for start in range(0, len(grid), max_rows):
            chunk = grid[start:start + max_rows]
            R = len(chunk)
            smp = torch.tensor([c[0] for c in chunk])
            edits = [Edit(site0, noise[smp], mode="add")]
            for li, l in enumerate(layers):
                rp = torch.tensor([c[2] if c[1] == li else -1 for c in chunk])
                if (rp >= 0).any():
                    edits.append(Edit(Site(l, kind), clean[l][None].expand(R, S, d), mode="replace", row_positions=rp))
            logits = adapter.forward(ids[None].expand(R, S), None, edits=edits,
                                     logits_at=torch.full((R,), S - 1)).logits
            probs[start:start + R] = answer_prob(logits, answer).cpu()
    p_noised = probs[:samples].mean()
    restored = probs[samples:].view(samples, len(layers), S).mean(0)
    return p_clean, float(p_noised), restored - p_noised


@spec.operator(
    "trace",
    version=1,
    verb="trace",
    components=COMPONENTS,
    params=[
        Param("component", str, "resid_post", choices=COMPONENTS, doc="the state restored"),
        Param("layers", spec.LAYERS, "all", doc="layers restored"),
        Param("model", spec.MODEL),
        Param("dataset", spec.DATASET, doc="prompts with answers and a subject_mask (`recall(...)`)"),
        Param("noise", float, 3.0, minimum=0.0, doc="noise standard deviation, in units of the embeddings' standard deviation"),
        Param("samples", int, 10, minimum=1, ceiling=10_000, doc="noise draws per prompt"),
        Param("seed", int, 0, minimum=0, doc="noise draws"),
    ],
    output="table",
    uses_model=True,
    default_chart="heatmap",
    requires=frozenset({"answers", "subjects"}),
    model_features=frozenset({"causal", "lm_head"}),
    example='model m = zoo "mini"\ndataset rec = recall(n=8)\ntrace resid_post in all layers of m on rec noise 3',
)
def run(inputs: dict[str, Artifact], params: dict, ctx: Any) -> Artifact:
    """Noise the subject's embeddings, restore clean states one (layer, position) at a time."""
    adapter = ctx.model(inputs["model"])
    dataset = inputs["dataset"]
    prompts = Prompts.of(dataset)
    if "subject_mask" not in dataset.tensors or prompts.answer is None:
        raise ValueError("causal tracing needs answers and a subject_mask (a `recall` dataset)")
    subject = torch.as_tensor(dataset.tensors["subject_mask"]).bool()
    kind = component(params["component"]).kind.name
    layers = list(range(adapter.n_layers)) if params["layers"] in (None, "all") else [int(l) for l in params["layers"]]
    sites = list(dict.fromkeys([Site(l, kind) for l in layers] + [Site(0, "resid_pre")]))
    acts = capture_all(adapter, prompts.ids, prompts.attention_mask, sites, ctx.max_rows)
    real = prompts.attention_mask.bool()
    emb = acts[Site(0, "resid_pre")][real].double()
    sigma = float(emb.std())
    scale = params["noise"] * sigma
    rows, per_prompt = [], []
    p_clean, p_noised = [], []
    kind_sum = torch.zeros(len(layers), len(KINDS), dtype=torch.float64)
    kind_n = torch.zeros(len(KINDS), dtype=torch.float64)
    tok = adapter.tokenizer
    for n in range(prompts.n):
        S = int(real[n].sum())
        gen = torch.Generator().manual_seed(int(params["seed"]) * 1_000_003 + n)
        clean = {l: acts[Site(l, kind)][n, :S] for l in layers}
        pc, pn, eff = trace_prompt(adapter, prompts.ids[n, :S], subject[n, :S], int(prompts.answer[n]), kind, layers,
                                   clean, scale, int(params["samples"]), gen, ctx.max_rows)
        p_clean.append(pc)
        p_noised.append(pn)
        kinds = position_kinds(subject[n], S)
        for p in range(S):
            kind_n[kinds[p]] += 1
            kind_sum[:, kinds[p]] += eff[:, p]
            per_prompt += [{"prompt": n, "layer": l, "position": p, "token": tok.decode([int(prompts.ids[n, p])]),
                            "position_kind": KINDS[kinds[p]], "effect": float(eff[li, p])}
                           for li, l in enumerate(layers)]
    mean = kind_sum / kind_n.clamp(min=1)
    for li, l in enumerate(layers):
        rows += [{"layer": l, "position": KINDS[k], "effect": float(mean[li, k]), "tokens": int(kind_n[k])}
                 for k in range(len(KINDS)) if kind_n[k] > 0]
    table = pl.DataFrame(rows)
    pc, pn = sum(p_clean) / len(p_clean), sum(p_noised) / len(p_noised)
    top = table.sort("effect", descending=True).row(0, named=True)
    last_subj = table.filter(pl.col("position") == KINDS[2]).sort("effect", descending=True)
    headline = [{"label": "answer probability clean / noised", "value": f"{pc:.3g} / {pn:.3g}",
                 "detail": f"noise {params['noise']:g} x sigma {sigma:.3g} on the subject's embeddings, "
                           f"{params['samples']} draws"},
                {"label": "largest restoration effect", "value": top["effect"],
                 "detail": f"layer {top['layer']}, {top['position'][2:]}"}]
    if last_subj.height:
        r = last_subj.row(0, named=True)
        headline.append({"label": "best layer at the last subject token", "value": r["effect"],
                         "detail": f"layer {r['layer']}"})
    return Artifact(
        tensors={"effect_by_kind": mean.float(), "p_clean": torch.tensor(p_clean), "p_noised": torch.tensor(p_noised)},
        tables={"result": table, "per_prompt": pl.DataFrame(per_prompt)},
        data={"site": kind, "layers": layers, "sigma": sigma, "noise": params["noise"], "samples": params["samples"],
              "p_clean": pc, "p_noised": pn,
              "convention": "effect = P(answer | noised, state restored) - P(answer | noised), mean over draws and "
                            "prompts by position kind",
              "chart": {"x": "position", "y": "layer", "value": "effect",
                        "title": f"Restoring {kind}: effect on P(answer) after noising the subject"},
              "headline": headline},
    )
