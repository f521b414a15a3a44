"""`evaluate m on ioi with logit_diff`: the metric on the clean and the corrupted prompts.

Every prompt is read at its own answer position (its last real token), so mixed-length
datasets need no care. The main table ("result") has one row per run (clean, corrupted) with the
mean and standard deviation over prompts; "per_prompt" has every prompt's two values.

The two runs are the shared `baseline` node (`interventions.plan_baseline`) that every sweep on the
same model, dataset and metric normalises by, so they are computed once per study; this node
only summarises them.
"""

from __future__ import annotations

from typing import Any

import polars as pl
import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib import interventions as iv
from mechstudy.stdlib import metrics
from mechstudy.stdlib.datasets import Pairs
from mechstudy.stdlib.models.batching import answer_logits


def baselines(adapter: Any, pairs: Pairs, max_rows: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Answer-position logits of the clean and corrupted runs, each [N, V]."""
    mask = pairs.attention_mask
    clean = answer_logits(adapter, pairs.clean_ids, mask, pairs.answer_pos, max_rows)
    corrupted = answer_logits(adapter, pairs.corrupted_ids, mask, pairs.answer_pos, max_rows)
    return clean, corrupted


def evaluate(adapter: Any, pairs: Pairs, metric: str, max_rows: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-prompt metric values (float64 [N]) on the clean and the corrupted prompts."""
    clean, corrupted = baselines(adapter, pairs, max_rows)
    m_clean = metrics.compute(metric, clean, pairs.data, None, clean)
    m_corrupted = metrics.compute(metric, corrupted, pairs.data, None, clean)
    return m_clean.cpu(), m_corrupted.cpu()


@spec.operator(
    "evaluate",
    version=1,
    verb="evaluate",
    params=[
        Param("model", spec.MODEL),
        Param("dataset", spec.DATASET),
        Param("metric", spec.METRIC, "logit_diff", doc="logit_diff, prob, kl, loss or prob_diff"),
    ],
    output="table",
    plan=lambda params, b: b.node("evaluate", {**{k: v for k, v in params.items() if k != "model"},
                                               "baseline": iv.plan_baseline(b, params)}),
    example="evaluate m on ioi with logit_diff",
)
def run(inputs: dict[str, Artifact], params: dict, ctx: Any) -> Artifact:
    """The metric's value on the clean and on the corrupted prompts (mean and per prompt)."""
    pairs = Pairs.of(inputs["dataset"])
    metric = params["metric"]
    if "baseline" in inputs:  # planned: the shared baseline node (no model needed here)
        base = inputs["baseline"].tensors
        clean, corrupted = torch.as_tensor(base["clean"]).double(), torch.as_tensor(base["corrupted"]).double()
    else:  # run directly with a model
        clean, corrupted = evaluate(ctx.model(inputs["model"]), pairs, metric, ctx.max_rows)
    summary = pl.DataFrame({
        "run": ["clean", "corrupted"],
        "mean": [clean.mean().item(), corrupted.mean().item()],
        "std": [clean.std().item() if pairs.n > 1 else 0.0, corrupted.std().item() if pairs.n > 1 else 0.0],
        "n": [pairs.n, pairs.n],
    })
    per_prompt = pl.DataFrame({"prompt": list(range(pairs.n)), "clean": clean.tolist(), "corrupted": corrupted.tolist()})
    return Artifact(
        tensors={"clean": clean.float(), "corrupted": corrupted.float()},
        tables={"result": summary, "per_prompt": per_prompt},
        data={"metric": metric, "clean_mean": clean.mean().item(), "corrupted_mean": corrupted.mean().item(),
              "chart": {"x": "run", "y": "mean"},
              "headline": [{"label": f"{metric}, clean", "value": clean.mean().item(),
                            "detail": f"\u00b1 {summary['std'][0]:.3g} (std over {pairs.n} prompts)"},
                           {"label": f"{metric}, corrupted", "value": corrupted.mean().item(),
                            "detail": f"\u00b1 {summary['std'][1]:.3g}"}]},
    )
