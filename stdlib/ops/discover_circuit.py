"""`discover circuit of m on ioi with kl threshold 0.01`: ACDC (Conmy et al. 2023).

Automatic circuit discovery on the component graph (`circuits.graph`: input, heads, MLPs, logits),
exactly Algorithm 1 of the paper::

    H <- G
    for v in receivers, output first (reverse topological order):
        for w parent of v, latest first:
            if D(H without w -> v) - D(H) < threshold:  H <- H without w -> v

A removed edge carries the sender's output on the corrupted prompt into its receiver (ACDC's
patching with corrupted activations, `circuits.patching`); every evaluation is a forward over all
prompts. D is the damage the metric measures: kl is KL(full model || H) at the answer position
(the paper's choice; 0 for the full model); any other metric m gives how much worse H is than
the full model: m(full) - m(H), or m(H) - m(full) for loss; means over prompts. A receiver
none of whose outgoing edges survived no longer influences the output, so its incoming edges are
removed without a forward (what the loop would find, up to rounding).

Outputs: "result" every tested edge in test order (src, dst, score = D increase when it was
tested, kept); "nodes" / "edges" the circuit for the `graph` chart; data: faithfulness =
circuit_value / full_value of the task's metric (`faithfulness=`; by default the logit difference,
or prob_diff on Greater-Than; `faithfulness_metric` says which), also normalised by the corrupted
run, the circuit's size (edges_kept of edges_total, nodes_kept) and its KL from the full model.
`threshold` is sweepable: one cached node per value.
"""

from __future__ import annotations

from typing import Any, Callable

import polars as pl
import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib import metrics
from mechstudy.stdlib.circuits.graph import ComponentGraph
from mechstudy.stdlib.circuits.patching import run_patched, sender_outputs
from mechstudy.stdlib.circuits.scores import metric_rows
from mechstudy.stdlib.circuits.writes import require_residual_stream
from mechstudy.stdlib.datasets import Pairs
from mechstudy.stdlib.ops.evaluate import baselines

LOWER_IS_BETTER = frozenset({"kl", "loss"})  # damage = m - m_full for these, m_full - m otherwise
TASK_METRICS = ("logit_diff", "prob_diff")  # faithfulness reads the first one the dataset supports


def acdc(graph: ComponentGraph, damage: Callable[[dict[int, list[int]]], float], threshold: float,
         log: Callable[[str], None] = lambda m: None) -> tuple[dict[int, list[int]], list[dict[str, Any]]]:
    """The ACDC sweep. `damage(removed)` evaluates the graph minus `removed` (receiver -> senders).

    Returns (removed edges, one record per edge in test order: u, v, score, kept, tested)."""
    removed: dict[int, list[int]] = {}
    cur = damage(removed)
    records: list[dict[str, Any]] = []
    for v, parents in graph.acdc_order():
        r = graph.receivers[v]
        alive = r.kind == "logits" or any(
            u == graph.sender_index(r.name) and u not in removed.get(w, []) for u, w in graph.edges
        )
        for u in parents:
            if not alive:
                removed.setdefault(v, []).append(u)
                records.append({"u": u, "v": v, "score": 0.0, "kept": False, "tested": False})
                continue
            trial = {**removed, v: removed.get(v, []) + [u]}
            d = damage(trial)
            keep = not (d - cur < threshold)
            records.append({"u": u, "v": v, "score": d - cur, "kept": keep, "tested": True})
            if not keep:
                removed, cur = trial, d
        log(f"acdc: {r.name} done, damage {cur:.4g}")
    return removed, records


def task_metric(values: Callable[[str, torch.Tensor], torch.Tensor], logits: torch.Tensor, fallback: str) -> str:
    """The first of TASK_METRICS the dataset has the tensors for (metrics raise ValueError when
    it lacks them), else `fallback`."""
    for name in TASK_METRICS:
        try:
            values(name, logits)
        except ValueError:
            continue
        return name
    return fallback


@spec.operator(
    "discover_circuit",
    version=1,
    verb="discover",
    components=("circuit",),
    params=[
        Param("model", spec.MODEL),
        Param("dataset", spec.DATASET),
        Param("metric", spec.METRIC, "kl", doc="kl (the paper's), or any metric the dataset supports"),
        Param("threshold", float, 0.01, sweepable=True, minimum=0.0, doc="remove an edge when the damage grows by less"),
        Param("faithfulness", spec.METRIC, None,
              doc="metric of the faithfulness ratio (default: logit_diff, else prob_diff, else the metric)"),
    ],
    output="graph",
    uses_model=True,
    default_chart="graph",
    requires=frozenset({"corrupted"}),
    model_features=frozenset({"causal", "lm_head", "residual_stream"}),
    example="discover circuit of m on ioi with kl threshold 0.01",
)
def run(inputs: dict[str, Artifact], params: dict, ctx: Any) -> Artifact:
    """ACDC: prune the edges of the head/MLP graph whose removal hardly changes the metric."""
    adapter = ctx.model(inputs["model"])
    require_residual_stream(adapter, "ACDC")
    pairs = Pairs.of(inputs["dataset"])
    metric, threshold = params["metric"], float(params["threshold"])
    graph = ComponentGraph.of_model(adapter)
    mask, ids = pairs.attention_mask, pairs.clean_ids
    corrupted = sender_outputs(adapter, pairs.corrupted_ids, mask, ctx.max_rows)
    clean_logits, corrupted_logits = baselines(adapter, pairs, ctx.max_rows)

    def values(name: str, logits: torch.Tensor) -> torch.Tensor:
        return metric_rows(name, logits, pairs, None, clean_logits).cpu()

    full = values(metric, clean_logits).mean().item()
    forwards = [0]

    def circuit_logits(removed: dict[int, list[int]]) -> torch.Tensor:
        forwards[0] += 1
        return run_patched(adapter, graph, ids, mask, pairs.answer_pos, removed, corrupted, ctx.max_rows)

    def damage(removed: dict[int, list[int]]) -> float:
        m = values(metric, circuit_logits(removed)).mean().item()
        return m - full if metric in LOWER_IS_BETTER else full - m

    removed, records = acdc(graph, damage, threshold, ctx.log)
    final = circuit_logits(removed)
    task = params["faithfulness"] or task_metric(values, clean_logits, metric)
    ld = {k: values(task, x).mean().item() for k, x in
          (("circuit", final), ("full", clean_logits), ("corrupted", corrupted_logits))}
    kl_circuit = values("kl", final).mean().item()
    kept = [(rec["u"], rec["v"], rec["score"]) for rec in records if rec["kept"]]
    nodes, edges = graph.tables(kept)
    result = pl.DataFrame({
        "src": [graph.senders[r["u"]].name for r in records],
        "dst": [graph.receivers[r["v"]].name for r in records],
        "score": [r["score"] for r in records],
        "kept": [r["kept"] for r in records],
        "tested": [r["tested"] for r in records],
    })
    n_edges = len(graph.edges)
    faith = ld["circuit"] / ld["full"] if ld["full"] != 0 else float("nan")
    summary = {
        "threshold": threshold, "metric": metric, "faithfulness_metric": task,
        "edges_kept": len(kept), "edges_total": n_edges, "fraction_kept": len(kept) / n_edges,
        "nodes_kept": nodes.height,
        "circuit_value": ld["circuit"], "full_value": ld["full"], "corrupted_value": ld["corrupted"],
        "faithfulness": faith, "faithfulness_normalised": metrics.normalise(ld["circuit"], ld["full"], ld["corrupted"]),
        "kl_circuit": kl_circuit, "forwards": forwards[0],
    }
    return Artifact(
        tensors={"circuit_metric": values(task, final).float()},
        tables={"result": result, "nodes": nodes, "edges": edges,
                "summary": pl.DataFrame({k: [v] for k, v in summary.items() if "metric" not in k})},
        data={**summary, "method": "ACDC",
              "headline": [{"label": "edges kept", "value": f"{len(kept)} of {n_edges}",
                            "detail": f"{nodes.height} nodes; threshold {threshold:g}"},
                           {"label": f"faithfulness ({task})", "value": faith,
                            "detail": f"circuit {ld['circuit']:.3g} / full model {ld['full']:.3g}"},
                           {"label": "KL(full \u2016 circuit)", "value": kl_circuit}],
              **({"empty": f"ACDC pruned every edge: at threshold {threshold:g} removing any single edge raised "
                           f"the damage ({metric}) by less than the threshold. Try a smaller threshold."}
                 if not kept else {})},
    )
