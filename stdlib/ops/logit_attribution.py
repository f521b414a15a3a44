"""`attribute logits of m on ioi`: direct logit attribution (DLA) of the logit difference.

The final residual stream at a prompt's answer position is a sum of writes: the embeddings, every
head's output (its z through its slice of the output projection), each layer's attention output
bias, and every MLP's output. The logit difference reads it through the final layer norm and the
unembedding, ``LD = (LN(x) W_U)[IO] - (LN(x) W_U)[S]`` with ``LN(x) = g * (x - mean(x)) / sigma + b``.

Frozen-scale approximation (the standard one): sigma, the norm's scale, is taken from the actual
run and treated as a constant, which makes LD linear in the writes, so each write c gets

    DLA(c) = ((c - mean(c)) / sigma) . (g * (W_U[IO] - W_U[S]))

and the parts plus the constant ``b . (W_U[IO] - W_U[S])`` (plus the unembedding bias difference)
add up to the logit difference exactly. What it does not say: how LD would change if a component
were removed (sigma would change, and later layers would read something else): that is patching.

Tables: "result" per head (layer, head, effect = mean DLA over prompts; the default heatmap);
"components" every term (embeddings, heads, attention biases, MLPs, the norm's bias) so the
MLPs are there too and the column sums to the mean logit difference. Run on the clean prompts
by default (`corrupted` for the other run).
"""

from __future__ import annotations

from typing import Any

import polars as pl
import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib.circuits.graph import head_name, mlp_name
from mechstudy.stdlib.circuits.writes import attn_bias, head_outputs, require_residual_stream
from mechstudy.stdlib.datasets import Pairs
from mechstudy.stdlib.models.base import is_layer_norm
from mechstudy.stdlib.models.batching import chunks, trimmed
from mechstudy.stdlib.models.sites import Site

APPROXIMATION = ("frozen final-norm scale: sigma of the final layer norm is taken from the run and held "
                 "constant, so the logit difference is a sum of per-component terms")


def dla_terms(adapter: Any, ids: torch.Tensor, mask: torch.Tensor | None, answer_pos: torch.Tensor,
              io: torch.Tensor, s: torch.Tensor) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(term names, DLA of each term [T, B] float64, actual logit difference [B] float64) for a batch."""
    require_residual_stream(adapter, "direct logit attribution")
    n, dev = adapter.n_layers, adapter.device
    sites = [Site(0, "resid_pre")] + [Site(l, k) for l in range(n) for k in ("z", "mlp_out")]
    scale = Site(None, "ln_final_scale")  # the frozen scale: read from the run itself
    with torch.no_grad():
        out = adapter.forward(ids, mask, capture=sites + [scale], logits_at=answer_pos)
    rows = torch.arange(ids.shape[0], device=dev)
    apos = answer_pos.to(dev)

    def at(site: Site) -> torch.Tensor:
        return out.acts[site][rows, apos]

    names, parts = ["embed"], [at(Site(0, "resid_pre"))]
    for l in range(n):
        with torch.no_grad():
            heads = head_outputs(adapter, l, at(Site(l, "z")))  # [B, H, D]
            bias = attn_bias(adapter, l, heads).expand(heads.shape[0], -1)
        names += [head_name(l, h) for h in range(adapter.n_heads)] + [f"attn_bias{l}", mlp_name(l)]
        parts += list(heads.unbind(1)) + [bias, at(Site(l, "mlp_out"))]
    c = torch.stack(parts).double()  # [T, B, D]
    sigma = at(scale)[:, 0].double()  # [B]
    ln = adapter.module(adapter.table.final_norm)
    unembed = adapter.model.get_output_embeddings()
    w_u = unembed.weight.detach().double()
    direction = w_u[io.to(dev)] - w_u[s.to(dev)]  # [B, D]
    gain = ln.weight.detach().double()
    if is_layer_norm(ln):  # centring is linear, so it applies to each part
        c = c - c.mean(-1, keepdim=True)
        const = (ln.bias.detach().double() * direction).sum(-1) if ln.bias is not None else torch.zeros_like(sigma)
    else:  # RMS norm: no centring, no bias
        const = torch.zeros_like(sigma)
    terms = (c * (gain * direction / sigma[:, None])).sum(-1)  # [T, B]
    if getattr(unembed, "bias", None) is not None:
        b_u = unembed.bias.detach().double()
        const = const + b_u[io.to(dev)] - b_u[s.to(dev)]
    logits = out.logits.double()
    actual = logits[rows, io.to(dev)] - logits[rows, s.to(dev)]
    return names + ["ln_final_bias"], torch.cat([terms, const[None]]).cpu(), actual.cpu()


@spec.operator(
    "logit_attribution",
    version=1,
    verb="attribute",
    components=("logits",),
    params=[
        Param("model", spec.MODEL),
        Param("dataset", spec.DATASET),
        Param("run", str, "clean", choices=("clean", "corrupted"), doc="which prompts to attribute"),
    ],
    output="table",
    uses_model=True,
    default_chart="heatmap",
    requires=frozenset({"answers"}),
    model_features=frozenset({"causal", "lm_head", "residual_stream"}),
    example="attribute logits of m on ioi",
)
def run(inputs: dict[str, Artifact], params: dict, ctx: Any) -> Artifact:
    """Direct logit attribution of the IO-S logit difference to heads, MLPs and the embeddings."""
    adapter = ctx.model(inputs["model"])
    pairs = Pairs.of(inputs["dataset"])
    if pairs.io_id is None or pairs.s_id is None:
        raise ValueError("direct logit attribution reads the IO - S logit difference: the dataset has no io_id/s_id")
    which = params["run"]
    names, per_prompt, actual = None, [], []
    for rows in chunks(pairs.n, ctx.max_rows):
        ids, m = trimmed(pairs.ids(which), pairs.attention_mask, rows)
        names, terms, ld = dla_terms(adapter, ids, m, pairs.answer_pos[rows], pairs.io_id[rows], pairs.s_id[rows])
        per_prompt.append(terms)
        actual.append(ld)
    terms, ld = torch.cat(per_prompt, 1), torch.cat(actual)  # [T, N], [N]
    mean = terms.mean(1)
    n_layers, n_heads = adapter.n_layers, adapter.n_heads
    head_rows = [(l, h, names.index(head_name(l, h))) for l in range(n_layers) for h in range(n_heads)]
    result = pl.DataFrame({"layer": [l for l, _, _ in head_rows], "head": [h for _, h, _ in head_rows],
                           "effect": [mean[i].item() for _, _, i in head_rows]})

    def kind(name: str) -> str:
        return {"a": "head", "m": "mlp", "e": "embed"}.get(name[0], "bias")

    layer_of = {**{head_name(l, h): l for l in range(n_layers) for h in range(n_heads)},
                **{mlp_name(l): l for l in range(n_layers)}, **{f"attn_bias{l}": l for l in range(n_layers)}}
    components = pl.DataFrame({
        "component": names, "kind": [kind(x) for x in names], "layer": [layer_of.get(x, -1) for x in names],
        "contribution": mean.tolist(), "std": terms.std(1).tolist() if pairs.n > 1 else [0.0] * len(names),
    })
    total = terms.sum(0)
    return Artifact(
        tensors={"heads": mean[[i for _, _, i in head_rows]].view(n_layers, n_heads).float(),
                 "mlps": mean[[names.index(mlp_name(l)) for l in range(n_layers)]].float(),
                 # float64: small, and the decomposition is exact to float64 rounding on a float64 model
                 "per_prompt": terms, "logit_diff": ld, "sum_of_terms": total},
        tables={"result": result, "components": components},
        data={"run": which, "logit_diff_mean": ld.mean().item(), "sum_of_terms_mean": total.mean().item(),
              "max_abs_gap": (total - ld).abs().max().item(), "terms": names, "approximation": APPROXIMATION,
              "method": "direct logit attribution",
              "headline": [{"label": "logit difference", "value": ld.mean().item(), "detail": f"{which} prompts"},
                           {"label": "sum of the terms", "value": total.mean().item(),
                            "detail": f"largest gap {(total - ld).abs().max().item():.2g}"}]},
    )
