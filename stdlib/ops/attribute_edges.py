"""`attribute edges of m on ioi with logit_diff`: edge attribution patching (EAP), optionally EAP-IG.

Every edge u -> v of the component graph (`circuits.graph`: input, heads, MLPs, logits) gets the
first-order estimate of patching it alone (Syed et al. 2023)::

    score(u -> v) = mean over prompts of  sum over positions, d_model of
                    (a_u(clean) - a_u(corrupted)) * d metric / d input_v   (at the corrupted run)

where a_u is sender u's write to the residual stream (a head's: its z through its slice of the
output projection, bias excluded) and input_v is receiver v's private input (see
`circuits.gradients`). Noising swaps clean and corrupted. With `ig_steps=k` the gradient is
averaged over k points on the path between the two runs' embeddings (EAP-IG, Hanna et al. 2024).
The gradients are a shared `gradient` node; the sender outputs cost one clean and one corrupted
forward here.

Tables: "result" has every edge (src, dst, score, effect) sorted by |score|, where effect is the
score normalised like activation patching, (m_base + score - m_corrupted) / (m_clean -
m_corrupted); "nodes" and "edges" hold the `top` edges by |score| for the graph chart.
"""

from __future__ import annotations

from typing import Any

import polars as pl
import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib import metrics
from mechstudy.stdlib.circuits.gradients import attn_in_name, logits_in_name, mlp_in_name
from mechstudy.stdlib.circuits.graph import ComponentGraph
from mechstudy.stdlib.circuits.patching import sender_outputs
from mechstudy.stdlib.circuits.writes import require_residual_stream
from mechstudy.stdlib.datasets import Pairs
from mechstudy.stdlib.models.batching import chunks


def receiver_stack(grads: dict[str, torch.Tensor], graph: ComponentGraph) -> torch.Tensor:
    """[R, N, S, D] receiver-input gradients in the graph's receiver order."""
    parts = []
    for layer in range(graph.n_layers):
        parts += [torch.as_tensor(grads[attn_in_name(layer)]).permute(2, 0, 1, 3),
                  torch.as_tensor(grads[mlp_in_name(layer)])[None]]
    parts.append(torch.as_tensor(grads[logits_in_name(graph.n_layers)])[None])
    return torch.cat(parts)


def edge_scores(delta: torch.Tensor, grad: torch.Tensor, graph: ComponentGraph, rows: int = 16) -> torch.Tensor:
    """[U, R] float64: mean over prompts of sum over positions and d_model of delta_u * grad_v,
    zero where there is no edge.

    Args:
        delta: [U, N, S, D] sender output differences; grad: [R, N, S, D] receiver gradients.
    """
    n = delta.shape[1]
    total = torch.zeros(delta.shape[0], grad.shape[0], dtype=torch.float64)
    for idx in chunks(n, rows):
        total += torch.einsum("unsd,rnsd->ur", delta[:, idx].double(), grad[:, idx].double())
    mask = torch.zeros_like(total, dtype=torch.bool)
    for u, v in graph.edges:
        mask[u, v] = True
    return torch.where(mask, total / n, torch.zeros((), dtype=torch.float64))


def _plan(params: dict, b: Any) -> Any:
    base = "corrupted" if params["direction"] == "denoising" else "clean"
    grad = b.node("gradient", {"site": "receivers", "which": base, "metric": params["metric"],
                               "ig_steps": params["ig_steps"], "model": params["model"], "dataset": params["dataset"]})
    return b.node("attribute_edges", {**params, "gradient": grad})


@spec.operator(
    "attribute_edges",
    version=1,
    verb="attribute",
    components=("edges",),
    params=[
        Param("model", spec.MODEL),
        Param("dataset", spec.DATASET),
        Param("metric", spec.METRIC, "logit_diff", doc="any metric the dataset supports"),
        Param("direction", str, "denoising", choices=("denoising", "noising"),
              doc="denoising: clean into corrupted (gradient at corrupted); noising: the reverse"),
        Param("ig_steps", int, 1, minimum=1, ceiling=1_000, doc="integrated-gradient steps (EAP-IG); 1 is plain EAP"),
        Param("top", int, 30, minimum=1, doc="edges drawn in the graph chart (largest |score|)"),
    ],
    output="graph",
    plan=_plan,
    uses_model=True,
    default_chart="graph",
    requires=frozenset({"corrupted"}),
    model_features=frozenset({"causal", "lm_head", "residual_stream"}),
    example="attribute edges of m on ioi with logit_diff ig_steps=5",
)
def run(inputs: dict[str, Artifact], params: dict, ctx: Any) -> Artifact:
    """Edge attribution patching: every edge's first-order patching estimate (EAP, EAP-IG)."""
    adapter = ctx.model(inputs["model"])
    require_residual_stream(adapter, "edge attribution patching")
    pairs = Pairs.of(inputs["dataset"])
    graph = ComponentGraph.of_model(adapter)
    direction = params["direction"]
    grad_art = inputs["gradient"]
    clean = sender_outputs(adapter, pairs.clean_ids, pairs.attention_mask, ctx.max_rows).stacked()
    corrupted = sender_outputs(adapter, pairs.corrupted_ids, pairs.attention_mask, ctx.max_rows).stacked()
    delta = clean - corrupted if direction == "denoising" else corrupted - clean
    scores = edge_scores(delta, receiver_stack(grad_art.tensors, graph), graph)

    m_clean = torch.as_tensor(grad_art.tensors["metric_clean"]).double().mean().item()
    m_corr = torch.as_tensor(grad_art.tensors["metric_corrupted"]).double().mean().item()
    base = m_corr if direction == "denoising" else m_clean
    edges = [(u, v, scores[u, v].item()) for u, v in graph.edges]
    edges.sort(key=lambda e: -abs(e[2]))
    table = pl.DataFrame({
        "rank": list(range(1, len(edges) + 1)),
        "src": [graph.senders[u].name for u, _, _ in edges],
        "dst": [graph.receivers[v].name for _, v, _ in edges],
        "score": [w for _, _, w in edges],
        "effect": [metrics.normalise(base + w, m_clean, m_corr) for _, _, w in edges],
    })
    nodes, top = graph.tables(edges[: max(0, int(params["top"]))])
    mask = torch.zeros_like(scores, dtype=torch.bool)
    for u, v in graph.edges:
        mask[u, v] = True
    return Artifact(
        tensors={"scores": scores.float(), "edge_mask": mask},
        tables={"result": table, "nodes": nodes, "edges": top},
        data={"metric": grad_art.data.get("metric"), "direction": direction, "ig_steps": grad_art.data.get("ig_steps"),
              "n_edges": len(edges), "senders": [c.name for c in graph.senders],
              "receivers": [c.name for c in graph.receivers], "clean_mean": m_clean, "corrupted_mean": m_corr,
              "method": "edge attribution patching",
              "headline": [{"label": "edges scored", "value": len(edges),
                            "detail": f"the graph draws the {min(len(edges), int(params['top']))} largest |score|"},
                           {"label": "strongest edge", "value": table["src"][0] + " \u2192 " + table["dst"][0]
                            if edges else "none", "detail": f"score {edges[0][2]:.3g}" if edges else ""}]},
    )
