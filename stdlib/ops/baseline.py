"""`baseline` (internal): a metric on the clean and the corrupted prompts, shared by every statement.

Every sweep (patch, ablate, path patching) normalises its effects by the metric on the clean and
on the corrupted run, and `evaluate` reports exactly those two numbers. Planned once per (model,
dataset, metric) through the Builder (`interventions.plan_baseline`), so a study with five
statements on the same model, dataset and metric runs these two forwards once.

Outputs: "clean" and "corrupted" ([N], float64: the metric per prompt, at each prompt's answer
position), and, for a metric that compares with the clean run (kl), "clean_logits" ([N, V],
float32: the clean answer-position logits every patched row is compared with).
"""

from __future__ import annotations

from typing import Any

import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib import metrics
from mechstudy.stdlib.datasets import Pairs
from mechstudy.stdlib.models.batching import answer_logits


def baselines(adapter: Any, pairs: Pairs, metric: str, max_rows: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(clean answer logits [N, V], metric on clean [N], metric on corrupted [N]); metrics on the CPU."""
    mask = pairs.attention_mask
    clean = answer_logits(adapter, pairs.clean_ids, mask, pairs.answer_pos, max_rows)
    corrupted = answer_logits(adapter, pairs.corrupted_ids, mask, pairs.answer_pos, max_rows)
    m_clean = metrics.compute(metric, clean, pairs.data, None, clean).cpu()
    m_corr = metrics.compute(metric, corrupted, pairs.data, None, clean).cpu()
    return clean, m_clean, m_corr


def needs_clean_logits(metric: str) -> bool:
    """Whether the metric compares each run with the clean run's logits (kl)."""
    return metrics.METRIC_FNS[metric].needs_clean


@spec.operator(
    "baseline",
    version=1,
    params=[
        Param("model", spec.MODEL),
        Param("dataset", spec.DATASET),
        Param("metric", spec.METRIC, "logit_diff", doc="any metric the dataset supports"),
    ],
    verb=None,
    output="tensors",
    uses_model=True,
)
def run(inputs: dict[str, Artifact], params: dict, ctx: Any) -> Artifact:
    """The metric per prompt on the clean and the corrupted prompts (and the clean logits for kl)."""
    adapter = ctx.model(inputs["model"])
    metric = params["metric"]
    clean_logits, m_clean, m_corr = baselines(adapter, Pairs.of(inputs["dataset"]), metric, ctx.max_rows)
    tensors = {"clean": m_clean.double(), "corrupted": m_corr.double()}
    if needs_clean_logits(metric):
        tensors["clean_logits"] = clean_logits.float().cpu().contiguous()
    return Artifact(tensors=tensors, data={"metric": metric, "n": int(m_clean.shape[0])})
