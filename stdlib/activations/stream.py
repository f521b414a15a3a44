"""Reading the activation store: shuffled streaming batches and in-order scans, window by window.

Shuffling is two-level and a pure function of (seed, epoch): each epoch visits the shards in a
fresh random order, `window` shards at a time; the rows of a window are permuted and cut into
batches (the remainder, under one batch, is dropped, and differs from epoch to epoch). So batch
number `start` is found from shard sizes alone and a resumed training run sees exactly the
batches a continuous one would.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
import xxhash

_SHARD = re.compile(r"^shard(\d+)_(\d+)$")
_KEYS = ("acts", "activations")  # a shard's tensor, or a dataset of activations (`planted`)
_META = ("token", "row", "pos")


def generator(*parts: Any) -> torch.Generator:
    """A torch generator seeded by a stable hash of `parts` (independent streams per purpose)."""
    return torch.Generator().manual_seed(xxhash.xxh3_64_intdigest(repr(parts).encode()) & ((1 << 63) - 1))


def _key(art: Any) -> str:
    for k in _KEYS:
        if k in art.tensors:
            return k
    raise ValueError("not an activation shard: it has no 'acts' (or 'activations') tensor")


class ActivationStore:
    """Aligned columns of activation shards (column c, shard i: the same tokens in every column).

    Attributes:
        n: tokens in total; sizes: tokens per shard; widths: each column's width; names: each
        column's site name (or None).
    """

    def __init__(self, columns: Sequence[Sequence[Any]]) -> None:
        if not columns or not columns[0]:
            raise ValueError("the activation store has no shards")
        self.columns = [list(c) for c in columns]
        if len({len(c) for c in self.columns}) != 1:
            raise ValueError("activation columns have different numbers of shards")
        self.keys = [[_key(a) for a in col] for col in self.columns]
        shapes = [[tuple(a.tensors[k].shape) for a, k in zip(col, ks)] for col, ks in zip(self.columns, self.keys)]
        self.sizes = [s[0] for s in shapes[0]]
        for c, col in enumerate(shapes):
            if [s[0] for s in col] != self.sizes:
                raise ValueError(f"activation column {c} is not aligned with column 0 (different tokens per shard)")
        self.widths = [int(torch.tensor(col[0][1:]).prod()) if len(col[0]) > 1 else 1 for col in shapes]
        self.names = [col[0].data.get("site") for col in self.columns]
        self.n = int(sum(self.sizes))
        if self.n == 0:
            raise ValueError("the activation store is empty (no real tokens in the corpus rows)")

    @classmethod
    def of(cls, inputs: Mapping[str, Any], dataset: str | None = "dataset") -> "ActivationStore":
        """The store of an operator's inputs: every ``shard{c}_{i}`` input, or else the one input
        named `dataset` holding an ``activations`` tensor (e.g. the `planted` dataset)."""
        cols: dict[int, dict[int, Any]] = {}
        for name, art in inputs.items():
            m = _SHARD.match(name)
            if m:
                cols.setdefault(int(m.group(1)), {})[int(m.group(2))] = art
        if cols:
            return cls([[col[i] for i in sorted(col)] for _, col in sorted(cols.items())])
        if dataset and dataset in inputs:
            return cls([[inputs[dataset]]])
        raise ValueError("no activation shards among the inputs")

    # ---- loading ----------------------------------------------------------------------------
    def load(self, i: int, meta: bool = False) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Shard i of every column as float32 [tokens, width] (and its token/row/pos when `meta`).

        A shard read from the store is re-opened memory-mapped from its entry and converted, so no
        page of it stays mapped once the caller drops the result."""
        xs, extra = [], {}
        for c, col in enumerate(self.columns):
            art, key = col[i], self.keys[c][i]
            names = [key] + (list(_META) if meta and c == 0 else [])
            got = _open(art, names)
            xs.append(got[key].reshape(got[key].shape[0], -1).float())
            if meta and c == 0:
                extra = {k: got[k].long() for k in _META if k in got}
        return xs, extra

    # ---- shuffled batches -------------------------------------------------------------------
    def windows(self, epoch: int, seed: int, window: int) -> list[list[int]]:
        """Epoch `epoch`'s shard windows (lists of shard indices), in visiting order."""
        order = torch.randperm(len(self.sizes), generator=generator(seed, "shards", epoch)).tolist()
        order = [i for i in order if self.sizes[i] > 0]
        return [order[j:j + window] for j in range(0, len(order), max(1, window))]

    def _count(self, win: list[int], batch: int) -> int:
        return max(1, sum(self.sizes[i] for i in win) // batch)

    def batches(self, batch: int, seed: int, start: int = 0, window: int = 4) -> Iterator[list[torch.Tensor]]:
        """Endless shuffled batches from batch number `start` on: one [B, width] tensor per column
        (B = `batch`, or the whole window when a window holds fewer tokens)."""
        batch = max(1, int(batch))
        epoch, skip = 0, int(start)
        while True:
            for w, win in enumerate(self.windows(epoch, seed, window)):
                count = self._count(win, batch)
                if skip >= count:
                    skip -= count
                    continue
                parts = [self.load(i)[0] for i in win]
                xs = [torch.cat([p[c] for p in parts]) for c in range(len(self.columns))]
                del parts
                perm = torch.randperm(xs[0].shape[0], generator=generator(seed, "rows", epoch, w))
                xs = [x[perm] for x in xs]
                for j in range(skip, count):
                    yield [x[j * batch:(j + 1) * batch] for x in xs]
                skip = 0
                del xs
            epoch += 1

    def sample(self, n: int, seed: int, window: int = 4) -> list[torch.Tensor]:
        """About `n` shuffled tokens (fewer when a window has fewer): for statistics and inits."""
        return next(self.batches(n, seed, 0, window))

    # ---- in-order scans ---------------------------------------------------------------------
    def scan(self, batch: int, limit: int | None = None) -> Iterator[tuple[list[torch.Tensor], dict[str, torch.Tensor]]]:
        """Every token in corpus order (at most `limit`): (one [B, width] per column, {token, row,
        pos}), one shard at a time."""
        done = 0
        for i, size in enumerate(self.sizes):
            if size == 0:
                continue
            xs, meta = self.load(i, meta=True)
            for a in range(0, size, batch):
                if limit is not None and done >= limit:
                    return
                b = min(size, a + batch, a + (limit - done) if limit is not None else size)
                yield [x[a:b] for x in xs], {k: v[a:b] for k, v in meta.items()}
                done += b - a


def _open(art: Any, names: list[str]) -> dict[str, torch.Tensor]:
    """The named tensors of an artifact: freshly memory-mapped from its store entry when it has one."""
    path = getattr(art, "path", None)
    f = Path(path) / "tensors.safetensors" if path else None
    if f is not None and f.is_file():
        from safetensors import safe_open

        with safe_open(str(f), framework="pt") as h:
            have = set(h.keys())
            return {k: h.get_tensor(k) for k in names if k in have}
    return {k: torch.as_tensor(art.tensors[k]) for k in names if k in art.tensors}
