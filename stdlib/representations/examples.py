"""Top-activating dataset examples per unit (a neuron, a direction, a dictionary feature), with the
surrounding tokens and their activations, interval samples and activation histograms.

The one implementation behind `neurons ...` and the dictionary features' dashboards. It sees
activations only as batches of ``[B, S, U]`` (U units side by side), so a caller decides what a unit
is (an MLP neuron, a projection on a probe or steering direction, an SAE feature) and where the
activations come from (forwards over a corpus, an activation store).

Two passes over the same batches (``batches()`` is called twice):

1. exact per-unit statistics (count, max, min, mean, how often above ``threshold``) and the top
   ``k`` tokens by activation, each with its context window (``before`` tokens before it, ``after``
   after it, never crossing its row) and the unit's activation on every token of the window;
2. an exact histogram over ``bins`` equal bins between each unit's min and max (or, with
   ``active_only``, between ``threshold`` and the max over active tokens only), and ``per_band``
   examples drawn uniformly at random from each of ``bands`` equal intervals of (threshold, max]
   (the "activation intervals" of feature dashboards: what the unit does at 20%, 40% ... of its
   maximum, not just at the top).

The random draws of pass 2 come from a hash of (row, position, unit, seed), not from a stream, so
the samples do not depend on how rows were batched.

>>> import torch
>>> acts = torch.tensor([[[0.0, 1.0], [3.0, 0.5], [1.0, 2.0]]])        # 1 row, 3 tokens, 2 units
>>> b = Batch(acts, torch.tensor([[7, 8, 9]]), torch.ones(1, 3, dtype=torch.bool), torch.tensor([0]))
>>> ex = collect(lambda: [b], 2, Settings(k=2, before=1, after=1, bands=2, per_band=1))
>>> ex.top_value.tolist(), ex.top_pos.tolist()
([[3.0, 1.0], [2.0, 1.0]], [[1, 2], [2, 0]])
>>> ex.top_ids[0, 0].tolist(), ex.top_acts[0, 0].tolist()               # the window around token 8
([7, 8, 9], [0.0, 3.0, 1.0])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import polars as pl
import torch

NO_TOKEN = -1  # context slots outside the row (or on padding)


@dataclass(frozen=True)
class Batch:
    """One batch of activations.

    acts [B, S, U] (any float dtype), ids [B, S] token ids, mask [B, S] bool (tokens that count:
    real, not padding), rows [B] each row's index in the whole dataset (what a table reports).
    """

    acts: torch.Tensor
    ids: torch.Tensor
    mask: torch.Tensor
    rows: torch.Tensor


Batches = Callable[[], Iterable[Batch]]


@dataclass(frozen=True)
class Settings:
    """What to collect (see the module docstring)."""

    k: int = 20
    before: int = 8
    after: int = 4
    bands: int = 5
    per_band: int = 4
    bins: int = 32
    threshold: float = 0.0
    active_only: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("k", "bands", "bins"):
            if getattr(self, name) < 1:
                raise ValueError(f"top examples: {name} must be at least 1, got {getattr(self, name)}")
        for name in ("before", "after", "per_band"):
            if getattr(self, name) < 0:
                raise ValueError(f"top examples: {name} must be >= 0, got {getattr(self, name)}")

    @property
    def width(self) -> int:
        return self.before + 1 + self.after


@dataclass
class Examples:
    """What `collect` found, per unit u (tensors indexed [u, ...]).

    Stats: count (tokens seen, the same for every unit), max, min, mean, active (tokens above
    `threshold`). Top: top_value/row/pos [U, k] (value -inf and row -1 where a unit saw fewer than
    k tokens), top_ids/top_acts [U, k, W] the context window (NO_TOKEN outside the row).
    Interval samples: band_edges [U, bands + 1], band_value/row/pos [U, bands, per_band],
    band_ids/band_acts [U, bands, per_band, W] (row -1 where a band had fewer tokens).
    Histogram: hist_edges [U, bins + 1], hist_counts [U, bins].
    """

    settings: Settings
    count: int
    max: torch.Tensor
    min: torch.Tensor
    mean: torch.Tensor
    active: torch.Tensor
    top_value: torch.Tensor
    top_row: torch.Tensor
    top_pos: torch.Tensor
    top_ids: torch.Tensor
    top_acts: torch.Tensor
    band_edges: torch.Tensor
    band_value: torch.Tensor
    band_row: torch.Tensor
    band_pos: torch.Tensor
    band_ids: torch.Tensor
    band_acts: torch.Tensor
    hist_edges: torch.Tensor
    hist_counts: torch.Tensor

    @property
    def n_units(self) -> int:
        return int(self.max.shape[0])

    @property
    def density(self) -> torch.Tensor:
        """Fraction of tokens on which each unit is above the threshold, [U]."""
        return self.active.double() / max(self.count, 1)

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Every tensor, for an artifact (safetensors)."""
        names = ("max", "min", "mean", "active", "top_value", "top_row", "top_pos", "top_ids", "top_acts",
                 "band_edges", "band_value", "band_row", "band_pos", "band_ids", "band_acts", "hist_edges",
                 "hist_counts")
        return {prefix + n: getattr(self, n).contiguous() for n in names}

    def tables(self, decode: Callable[[int], str], units: Mapping[str, Sequence[Any]] | None = None,
               ) -> dict[str, pl.DataFrame]:
        """The tables a report shows: "stats" (one row per unit), "examples" (top and interval
        samples, one row per example with its context: `tokens`, `acts`, the example's own index
        in them `at`, and `text` with the example's token in [[ ]]), "histogram" (one row per unit
        and bin). `decode(id)` gives a token's text; `units` adds identifying columns per unit
        (e.g. {"layer": [...], "neuron": [...]}); otherwise units are numbered 0..U-1."""
        cols = dict(units) if units else {"unit": list(range(self.n_units))}
        keys = list(cols)
        unit_of = [{k: cols[k][u] for k in keys} for u in range(self.n_units)]
        cache: dict[int, str] = {}

        def tok(i: int) -> str:
            if i not in cache:
                cache[i] = decode(i)
            return cache[i]

        stats = pl.DataFrame({**{k: list(v) for k, v in cols.items()},
                              "max": self.max.tolist(), "mean": self.mean.tolist(), "min": self.min.tolist(),
                              "density": self.density.tolist(), "tokens": [self.count] * self.n_units})
        rows: list[dict[str, Any]] = []

        def add(u: int, group: str, band: int, rank: int, value: float, row: int, pos: int, ids, acts) -> None:
            if row < 0:
                return
            keep = [j for j, t in enumerate(ids) if t != NO_TOKEN]
            toks = [tok(int(ids[j])) for j in keep]
            at = keep.index(self.settings.before)
            text = "".join(f"[[{t}]]" if j == at else t for j, t in enumerate(toks))
            rows.append({**unit_of[u], "group": group, "band": band, "rank": rank, "activation": value,
                         "row": row, "position": pos, "token": toks[at], "text": text, "at": at,
                         "tokens": toks, "acts": [float(acts[j]) for j in keep]})

        s = self.settings
        for u in range(self.n_units):
            for r in range(self.top_value.shape[1]):
                add(u, "top", -1, r, float(self.top_value[u, r]), int(self.top_row[u, r]), int(self.top_pos[u, r]),
                    self.top_ids[u, r].tolist(), self.top_acts[u, r].tolist())
            for b in range(s.bands - 1, -1, -1):
                for r in range(s.per_band):
                    add(u, "interval", b, r, float(self.band_value[u, b, r]), int(self.band_row[u, b, r]),
                        int(self.band_pos[u, b, r]), self.band_ids[u, b, r].tolist(), self.band_acts[u, b, r].tolist())
        schema = {**{k: stats.schema[k] for k in keys}, "group": pl.Utf8, "band": pl.Int64, "rank": pl.Int64,
                  "activation": pl.Float64, "row": pl.Int64, "position": pl.Int64, "token": pl.Utf8, "text": pl.Utf8,
                  "at": pl.Int64, "tokens": pl.List(pl.Utf8), "acts": pl.List(pl.Float64)}
        examples = pl.DataFrame(rows, schema=schema)
        hist = []
        for u in range(self.n_units):
            e = self.hist_edges[u].tolist()
            hist += [{**unit_of[u], "bin": i, "lo": e[i], "hi": e[i + 1], "count": int(c)}
                     for i, c in enumerate(self.hist_counts[u].tolist())]
        histogram = pl.DataFrame(hist, schema={**{k: stats.schema[k] for k in keys}, "bin": pl.Int64,
                                               "lo": pl.Float64, "hi": pl.Float64, "count": pl.Int64})
        return {"stats": stats, "examples": examples, "histogram": histogram}


# ---- the two passes ---------------------------------------------------------------------------


def _windows(b: Batch, flat_idx: torch.Tensor, s: Settings) -> tuple[torch.Tensor, torch.Tensor]:
    """Context windows of the batch tokens `flat_idx` [c, U] (indices into B*S, one per unit):
    ids and the unit's activations, [c, U, W] each."""
    B, S, U = b.acts.shape
    bi, pi = flat_idx // S, flat_idx % S
    pos = pi[..., None] + torch.arange(-s.before, s.after + 1)  # [c, U, W]
    inside = (pos >= 0) & (pos < S)
    posc = pos.clamp(0, S - 1)
    brow = bi[..., None].expand_as(posc)
    valid = inside & b.mask[brow, posc]
    unit = torch.arange(U)[None, :, None].expand_as(posc)
    ids = torch.where(valid, b.ids[brow, posc], torch.full((), NO_TOKEN, dtype=torch.long))
    acts = torch.where(valid, b.acts[brow, posc, unit].double(), torch.zeros((), dtype=torch.float64))
    return ids, acts


def _keep_best(state: list[torch.Tensor], cand: list[torch.Tensor], k: int, largest: bool) -> list[torch.Tensor]:
    """Merge running [k, ...] fields with candidate [c, ...] fields, keeping the k best by the
    first field (largest or smallest) along dim 0."""
    merged = [torch.cat([a, c]) for a, c in zip(state, cand)]
    sel = merged[0].topk(min(k, merged[0].shape[0]), dim=0, largest=largest).indices  # [k, ...]
    out = []
    for t in merged:
        idx = sel.view(*sel.shape, *([1] * (t.ndim - sel.ndim))).expand(sel.shape[0], *t.shape[1:])
        out.append(t.gather(0, idx))
    return out


_M = (1 << 63) - 1


def _wrap(v: int) -> int:
    """A 64-bit constant as a signed int64 (torch multiplies int64 with wrap-around)."""
    return v - (1 << 64) if v >= 1 << 63 else v


def hash_keys(rows: torch.Tensor, pos: torch.Tensor, units: torch.Tensor, seed: int) -> torch.Tensor:
    """Uniform [0, 1) numbers from (row, position, unit, seed) (broadcast), float64: the same token
    gets the same number however the rows are batched (a splitmix64-style integer hash).

    >>> k = hash_keys(torch.tensor([0, 1]), torch.tensor([3, 3]), torch.tensor([0, 0]), seed=0)
    >>> bool(((k >= 0) & (k < 1)).all()), bool(k[0] != k[1])
    (True, True)
    """
    c1, c2, c3 = _wrap(0x9E3779B97F4A7C15), _wrap(0xBF58476D1CE4E5B9), _wrap(0x94D049BB133111EB)
    x = rows.long() * 1_000_003 + pos.long()
    x = x * c1 + (units.long() + 1) * c2 + torch.tensor(int(seed)) * c3
    for shift, mul in ((30, c2), (27, c3)):
        x = (x ^ ((x >> shift) & (_M >> (shift - 1)))) * mul
    x = x ^ ((x >> 31) & (_M >> 30))
    return ((x >> 11) & ((1 << 52) - 1)).double() / float(1 << 52)


def collect(batches: Batches, n_units: int, settings: Settings = Settings()) -> Examples:
    """Top examples, interval samples, statistics and histograms of `n_units` units over the
    batches (see the module docstring). `batches()` must yield the same batches both times."""
    s, U, W = settings, n_units, settings.width
    neg = torch.full((s.k, U), -torch.inf, dtype=torch.float64)
    top = [neg, torch.full((s.k, U), -1, dtype=torch.long), torch.full((s.k, U), -1, dtype=torch.long),
           torch.full((s.k, U, W), NO_TOKEN, dtype=torch.long), torch.zeros(s.k, U, W, dtype=torch.float64)]
    count = 0
    vmax = torch.full((U,), -torch.inf, dtype=torch.float64)
    vmin = torch.full((U,), torch.inf, dtype=torch.float64)
    total = torch.zeros(U, dtype=torch.float64)
    active = torch.zeros(U, dtype=torch.long)
    amax = torch.full((U,), -torch.inf, dtype=torch.float64)  # max over active tokens
    for b in batches():
        B, S, _ = b.acts.shape
        flat = b.acts.reshape(B * S, U).double()
        valid = b.mask.reshape(B * S).bool()
        n = int(valid.sum())
        if n == 0:
            continue
        count += n
        v = flat[valid]
        vmax = torch.maximum(vmax, v.max(0).values)
        vmin = torch.minimum(vmin, v.min(0).values)
        total += v.sum(0)
        on = v > s.threshold
        active += on.sum(0)
        amax = torch.maximum(amax, v.masked_fill(~on, -torch.inf).max(0).values)
        masked = flat.masked_fill(~valid[:, None], -torch.inf)
        cv, ci = masked.topk(min(s.k, B * S), dim=0)  # [c, U]
        ok = cv > -torch.inf
        ids, acts = _windows(b, ci, s)
        row = torch.where(ok, b.rows[ci // S], -1)
        top = _keep_best(top, [cv, row, torch.where(ok, ci % S, -1), ids, acts], s.k, largest=True)
    if count == 0:
        raise ValueError("top examples: the batches hold no tokens")
    # Pass 2: histogram bins and the bands of (threshold, max].
    lo_h = torch.where(active > 0, torch.full_like(vmax, s.threshold), vmin) if s.active_only else vmin
    hi_h = torch.where(active > 0, amax, vmax) if s.active_only else vmax
    span = (hi_h - lo_h).clamp(min=1e-12)
    hist_edges = lo_h[:, None] + span[:, None] * torch.linspace(0, 1, s.bins + 1, dtype=torch.float64)[None]
    hist = torch.zeros(U, s.bins, dtype=torch.long)
    band_lo = torch.full((U,), float(s.threshold), dtype=torch.float64)
    band_span = (amax - band_lo).clamp(min=0)
    band_edges = band_lo[:, None] + band_span[:, None] * torch.linspace(0, 1, s.bands + 1, dtype=torch.float64)[None]
    P = max(s.per_band, 1)
    bands = [torch.full((P * s.bands, U), torch.inf, dtype=torch.float64),  # keys (smallest kept)
             torch.zeros(P * s.bands, U, dtype=torch.float64), torch.full((P * s.bands, U), -1, dtype=torch.long),
             torch.full((P * s.bands, U), -1, dtype=torch.long),
             torch.full((P * s.bands, U, W), NO_TOKEN, dtype=torch.long),
             torch.zeros(P * s.bands, U, W, dtype=torch.float64)]
    band_state = [[t[j * P:(j + 1) * P] for t in bands] for j in range(s.bands)]
    unit_ix = torch.arange(U)
    for b in batches():
        B, S, _ = b.acts.shape
        flat = b.acts.reshape(B * S, U).double()
        valid = b.mask.reshape(B * S).bool()
        in_hist = valid[:, None] & ((flat > s.threshold) if s.active_only else torch.ones_like(flat, dtype=torch.bool))
        which = ((flat - lo_h) / span * s.bins).floor().long().clamp(0, s.bins - 1)
        for u_chunk in torch.split(unit_ix, 1024):
            w = which[:, u_chunk]
            m = in_hist[:, u_chunk]
            hist[u_chunk] += torch.zeros(len(u_chunk), s.bins, dtype=torch.long).scatter_add_(1, w.T, m.T.long())
        if s.per_band == 0:
            continue
        tok_row = b.rows[:, None].expand(B, S).reshape(-1)
        tok_pos = torch.arange(S)[None].expand(B, S).reshape(-1)
        keys = hash_keys(tok_row[:, None], tok_pos[:, None], unit_ix[None], s.seed)  # [B*S, U]
        band_of = ((flat - band_lo) / band_span.clamp(min=1e-12) * s.bands).ceil().long() - 1
        live = valid[:, None] & (flat > s.threshold) & (band_span > 0)[None]
        for j in range(s.bands):
            k = keys.masked_fill(~(live & (band_of.clamp(0, s.bands - 1) == j)), torch.inf)
            c = min(P, B * S)
            kv, ki = k.topk(c, dim=0, largest=False)
            ok = kv < torch.inf
            ids, acts = _windows(b, ki, s)
            cand = [kv, flat.gather(0, ki), torch.where(ok, b.rows[ki // S], -1), torch.where(ok, ki % S, -1), ids, acts]
            band_state[j] = _keep_best(band_state[j], cand, P, largest=False)
    stacked = [torch.stack([band_state[j][f][: s.per_band] for j in range(s.bands)], 0) for f in range(6)]
    # stacked[f]: [bands, per_band, U, ...] -> [U, bands, per_band, ...]
    perm = lambda t: t.permute(2, 0, 1, *range(3, t.ndim))  # noqa: E731
    _, bval, brow, bpos, bids, bacts = (perm(t) for t in stacked)
    gone = brow < 0
    return Examples(
        settings=s, count=count, max=vmax, min=vmin, mean=total / count, active=active,
        top_value=top[0].T.contiguous(), top_row=top[1].T.contiguous(), top_pos=top[2].T.contiguous(),
        top_ids=top[3].permute(1, 0, 2).contiguous(), top_acts=top[4].permute(1, 0, 2).contiguous(),
        band_edges=band_edges, band_value=bval.masked_fill(gone, float("nan")), band_row=brow, band_pos=bpos,
        band_ids=bids, band_acts=bacts, hist_edges=hist_edges, hist_counts=hist,
    )
