"""Chunked runs over a right-padded dataset: answer-position logits and whole-dataset captures.

Each chunk of at most `max_rows` rows is trimmed to its longest prompt before the forward (right
padding means no real token depends on the pads after it), so short prompts cost less and a
prompt's numbers do not depend on what it is batched with beyond float rounding.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch

from mechstudy.stdlib.models.base import Adapter
from mechstudy.stdlib.models.sites import Site


def chunks(n: int, size: int) -> Iterator[torch.Tensor]:
    """Row indices [0, n) in consecutive blocks of at most `size`."""
    size = max(1, int(size))
    for start in range(0, n, size):
        yield torch.arange(start, min(n, start + size))


def trimmed(ids: torch.Tensor, mask: torch.Tensor | None, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The rows' ids and mask, cut to the longest real length among them."""
    if mask is None:
        return ids[rows], None
    width = int(mask[rows].sum(1).max())
    return ids[rows, :width], mask[rows, :width]


def answer_logits(adapter: Adapter, ids: torch.Tensor, mask: torch.Tensor | None, answer_pos: torch.Tensor,
                  max_rows: int = 32) -> torch.Tensor:
    """Logits at each row's answer position, [N, V] (float32 on the adapter's device)."""
    out = []
    for rows in chunks(ids.shape[0], max_rows):
        i, m = trimmed(ids, mask, rows)
        at = answer_pos[rows]
        out.append(adapter.forward(i, m, logits_at=at, only_at=at).logits.float())
    return torch.cat(out)


def _seq_axes(site: Site) -> tuple[int, ...]:
    """The sequence axes of a site's activation (pattern: query and key; shifted when a head is
    selected and its axis dropped)."""
    axes = site.spec.seq_axes
    if site.head is not None:
        axes = tuple(ax - (ax > site.spec.head_axis) for ax in axes)
    return axes


def capture_all(adapter: Adapter, ids: torch.Tensor, mask: torch.Tensor | None, sites: Iterable[Site],
                max_rows: int = 32) -> dict[Site, torch.Tensor]:
    """Activations of `sites` for every row, on the CPU, full width, exactly zero at padded
    positions (nothing real reads them: right padding, causal attention, masked keys), so the
    result does not depend on how rows were chunked."""
    sites = list(sites)
    n, width = ids.shape
    out = {s: torch.zeros(adapter.shape(s, n, width), dtype=adapter.dtype) for s in sites}
    for rows in chunks(n, max_rows):
        i, m = trimmed(ids, mask, rows)
        acts = adapter.capture(i, m, sites)
        for s in sites:
            index: list = [rows] + [slice(None)] * (out[s].ndim - 1)
            for ax in _seq_axes(s):
                index[ax] = slice(0, i.shape[1])
            out[s][tuple(index)] = acts[s].to("cpu", out[s].dtype)
    if mask is not None:
        real = mask.bool()
        for s in sites:
            keep = torch.ones(out[s].shape, dtype=torch.bool)
            for ax in _seq_axes(s):
                keep &= real.view(n, *[width if d == ax else 1 for d in range(1, out[s].ndim)])
            out[s] = torch.where(keep, out[s], torch.zeros((), dtype=out[s].dtype))
    return out


def dataset_ids(dataset: Any, which: str) -> torch.Tensor:
    """A dataset artifact's clean or corrupted ids ("input_ids" counts as clean for unpaired datasets)."""
    t = dataset.tensors
    key = f"{which}_ids"
    if key in t:
        return torch.as_tensor(t[key]).long()
    if which == "clean" and "input_ids" in t:
        return torch.as_tensor(t["input_ids"]).long()
    raise ValueError(f"the dataset has no {which} prompts")


def capture_dataset(adapter: Adapter, dataset: Any, kind: str, which: str = "clean",
                    max_rows: int = 32) -> dict[str, torch.Tensor]:
    """{site name: activation [N, ...]} of one site kind at every layer (or the one model-level
    site) on a dataset artifact's clean or corrupted prompts; zero at padding (the `capture` op)."""
    ids = dataset_ids(dataset, which)
    mask = dataset.tensors.get("attention_mask")
    mask = None if mask is None else torch.as_tensor(mask).long()
    acts = capture_all(adapter, ids, mask, adapter.sites(kind), max_rows)
    return {s.name: a.contiguous() for s, a in acts.items()}
