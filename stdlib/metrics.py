"""Metrics read at each prompt's own answer position, and the patching normalisation.

A metric is a differentiable torch function of the logits already gathered at the answer
positions ([B, V]: row i is prompt i's next-token logits after its last real token) and of the
dataset's tensors, returning one value per row. Each metric reads what it needs from the dataset
artifact by name: per-prompt tensors (indexed by the rows being scored) and dataset-wide ones.

- ``logit_diff``: logit[IO] - logit[S]  (Wang et al.); per prompt ``io_id``, ``s_id``
- ``prob``: softmax(logits)[IO]; per prompt ``io_id``
- ``kl``: KL(P_clean || P_run) of the next-token distribution (0 on the clean run itself)
- ``loss``: next-token cross-entropy of the correct answer at the answer position,
  -log softmax(logits)[IO] (only the answer position is read, never the rest of the sequence)
- ``prob_diff``: Greater-Than (Hanna et al.): sum of P(YY') over the 2-digit year tokens with
  YY' > YY minus the sum over YY' <= YY; per prompt ``yy``, dataset-wide ``year_tokens`` [100]

Patching reports `effect = (m_patched - m_corrupted) / (m_clean - m_corrupted)` on the means over
prompts: 1 = clean behaviour fully restored, 0 = corrupted behaviour. For kl, m_clean = 0, so the
same formula reads `1 - KL_patched / KL_corrupted` (Zhang & Nanda's KL effect, normalised).

>>> import torch
>>> logits = torch.tensor([[2.0, 0.5, 0.0]])
>>> values("logit_diff", logits, io=torch.tensor([0]), s=torch.tensor([1])).tolist()
[1.5]
>>> compute("prob_diff", torch.zeros(1, 100), {"yy": torch.tensor([49]), "year_tokens": torch.arange(100)}).item()
0.0
>>> normalise(0.5, clean=1.0, corrupted=0.0)
0.5
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import MetricSpec


@dataclass(frozen=True)
class Metric:
    """How to compute one metric.

    fn(logits float64 [B, V], data, ref) -> [B]: `data` maps each name in `per_prompt` to its
    rows' values and each name in `shared` to the dataset-wide tensor; `ref` is the clean run's
    logits at the same rows (float64), or None.
    """

    fn: Callable[[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None], torch.Tensor]
    per_prompt: tuple[str, ...] = ()
    shared: tuple[str, ...] = ()
    needs_clean: bool = False
    picks: tuple[str, ...] = ()  # fn reads logits only at the token ids these per-prompt tensors hold


def _pick(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return x.gather(-1, ids[:, None])[:, 0]


def _logit_diff(x, d, ref):
    return _pick(x, d["io_id"]) - _pick(x, d["s_id"])


def _prob(x, d, ref):
    return _pick(torch.softmax(x, dim=-1), d["io_id"])


def _kl(x, d, ref):
    logp_ref = torch.log_softmax(ref, dim=-1)
    return (logp_ref.exp() * (logp_ref - torch.log_softmax(x, dim=-1))).sum(-1)


def _loss(x, d, ref):
    return -_pick(torch.log_softmax(x, dim=-1), d["io_id"])


def _prob_diff(x, d, ref):
    p = torch.softmax(x, dim=-1)[:, d["year_tokens"]]  # [B, 100]: P("00") .. P("99")
    later = torch.arange(p.shape[-1], device=x.device)[None, :] > d["yy"][:, None]
    return (p * later).sum(-1) - (p * ~later).sum(-1)


METRIC_FNS: dict[str, Metric] = {
    "logit_diff": Metric(_logit_diff, ("io_id", "s_id"), picks=("io_id", "s_id")),
    "prob": Metric(_prob, ("io_id",)),
    "kl": Metric(_kl, needs_clean=True),
    "loss": Metric(_loss, ("io_id",)),
    "prob_diff": Metric(_prob_diff, ("yy",), ("year_tokens",)),
}

spec.register_metric(MetricSpec("logit_diff", frozenset({"answers"}),
                                "logit of the indirect object minus logit of the subject at the answer position"))
spec.register_metric(MetricSpec("prob", frozenset({"answers"}), "probability of the indirect object at the answer position"))
spec.register_metric(MetricSpec("kl", frozenset({"corrupted"}),
                                "KL(clean || run) of the next-token distribution at the answer position"))
spec.register_metric(MetricSpec("loss", frozenset({"answers"}),
                                "cross-entropy of the correct answer token at the answer position (-log prob)"))
spec.register_metric(MetricSpec("prob_diff", frozenset({"years"}),
                                "Greater-Than: probability of years after the start year minus years up to it"))


def compute(
    name: str,
    logits: torch.Tensor,
    data: Mapping[str, torch.Tensor],
    rows: torch.Tensor | None = None,
    clean_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-row metric values, float64 [B]; differentiable in `logits`.

    Args:
        name: a key of METRIC_FNS.
        logits: [B, V] at each row's answer position.
        data: the dataset's tensors (an artifact's `.tensors`), e.g. io_id, s_id, yy, year_tokens.
        rows: [B] which prompt each row scores (indexes the per-prompt tensors); None: row i is
            prompt i.
        clean_logits: [B, V] of the clean run at the same rows (kl only).
    """
    try:
        m = METRIC_FNS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRIC_FNS)}") from None
    dev = logits.device
    d: dict[str, torch.Tensor] = {}
    for k in m.per_prompt + m.shared:
        if data.get(k) is None:
            raise ValueError(f"metric {name} needs the dataset's {k!r}")
        d[k] = torch.as_tensor(data[k]).to(dev, torch.long)
    if rows is not None:
        r = torch.as_tensor(rows).to(dev, torch.long)
        for k in m.per_prompt:
            d[k] = d[k][r]
    ref = None
    if m.needs_clean:
        if clean_logits is None:
            raise ValueError(f"{name} needs the clean run's logits")
        ref = clean_logits.to(dev, torch.float64)
    # float64: the metric math is tiny next to a forward, and KL of nearby distributions cancels.
    return m.fn(logits.to(torch.float64), d, ref)


def columns(name: str, data: Mapping[str, torch.Tensor], rows: torch.Tensor) -> tuple[torch.Tensor, dict] | None:
    """For a metric that reads only some tokens' logits (`Metric.picks`, e.g. logit_diff): (the
    vocabulary columns rows `rows` read [K], the data to pass `compute` with logits of just those
    columns [B, K] and rows=None), so the rest of the vocabulary need not be unembedded. None
    for a metric that reads every logit (a softmax).

    >>> logits = torch.tensor([[2.0, 0.5, 0.0], [1.0, 3.0, 4.0]])
    >>> data = {"io_id": torch.tensor([0, 2]), "s_id": torch.tensor([1, 1])}
    >>> cols, narrow = columns("logit_diff", data, torch.tensor([0, 1]))
    >>> cols.tolist(), compute("logit_diff", logits[:, cols], narrow).tolist()
    ([0, 1, 2], [1.5, 1.0])
    """
    m = METRIC_FNS[name]
    if not m.picks:
        return None
    r = torch.as_tensor(rows).long()
    ids = [torch.as_tensor(data[k]).long().to(r.device)[r] for k in m.picks]
    cols, inverse = torch.unique(torch.cat(ids), return_inverse=True)
    return cols, {k: part for k, part in zip(m.picks, inverse.split(len(r)))}


def values(
    name: str,
    logits: torch.Tensor,
    io: torch.Tensor | None = None,
    s: torch.Tensor | None = None,
    clean_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-row metric values, float64 [N], for the IOI-style metrics (see `compute` for any dataset).

    Args:
        name: "logit_diff" | "prob" | "kl" | "loss".
        logits: [N, V] at each prompt's answer position.
        io, s: [N] answer token ids (indirect object, subject) of each row.
        clean_logits: [N, V] of the clean run at the same positions (kl only).
    """
    data = {k: v for k, v in (("io_id", io), ("s_id", s)) if v is not None}
    return compute(name, logits, data, None, clean_logits)


def normalise(patched: float | torch.Tensor, clean: float, corrupted: float):
    """(patched - corrupted) / (clean - corrupted); NaN when clean == corrupted.

    Works for every metric here, kl included (its clean value is 0)."""
    denom = clean - corrupted
    if denom == 0 or (isinstance(denom, float) and math.isnan(denom)):
        return patched * float("nan") if isinstance(patched, torch.Tensor) else float("nan")
    return (patched - corrupted) / denom
