"""The component graph of a pre-norm transformer: the granularity of EAP and ACDC.

Senders write to the residual stream, receivers read from it, and there is an edge from every
sender to every receiver that comes after it in the forward pass::

    senders    input (embeddings), a{L}.h{H} (attention head outputs), m{L} (MLP outputs)
    receivers  a{L}.h{H} (a head's input: its private copy of resid_pre L, read through the
               layer norm into its q, k and v), m{L} (resid_mid L, read through the MLP's layer
               norm), logits (the final residual stream, read through the final layer norm)

A head in layer L hears the input, every head and MLP of layers < L; in a sequential block the
MLP of layer L also hears the heads of layer L (attention, then MLP), in a parallel block
(GPT-NeoX's use_parallel_residual: both read the block's input) it does not; logits hear
everyone. Under grouped-query attention a head receiver still has a private input, read into its
own q and into the key/value head it uses (as if that head had its own copy of the shared one).
Names follow the EAP/ACDC literature: "input", "a3.h2", "m3", "logits".

>>> g = ComponentGraph.of(n_layers=2, n_heads=2)
>>> [c.name for c in g.senders]
['input', 'a0.h0', 'a0.h1', 'm0', 'a1.h0', 'a1.h1', 'm1']
>>> [p.name for p in g.parents(g.receiver("m0"))]
['input', 'a0.h0', 'a0.h1']
>>> len(g.edges)  # 2*1 + 3 + 2*4 + 6 + 7
26
>>> p = ComponentGraph.of(n_layers=2, n_heads=2, parallel=True)
>>> [c.name for c in p.parents(p.receiver("m0"))], len(p.edges)  # the MLP does not hear its own layer
(['input'], 22)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Iterable

import polars as pl

INPUT, LOGITS = "input", "logits"


@dataclass(frozen=True)
class Component:
    """One node: kind is "input", "head", "mlp" or "logits"; layer -1 for input, n_layers for logits."""

    name: str
    kind: str
    layer: int
    head: int | None = None

    @property
    def x(self) -> float:
        """Where the graph chart draws it: heads at their layer, an MLP half a layer later."""
        return self.layer + (0.5 if self.kind == "mlp" else 0.0)

    @property
    def index(self) -> int:
        return self.head if self.head is not None else 0


def head_name(layer: int, head: int) -> str:
    return f"a{layer}.h{head}"


def mlp_name(layer: int) -> str:
    return f"m{layer}"


@dataclass(frozen=True)
class ComponentGraph:
    """Senders and receivers in topological order, and the edges between them."""

    n_layers: int
    n_heads: int
    parallel: bool = False

    @classmethod
    def of(cls, n_layers: int, n_heads: int, parallel: bool = False) -> "ComponentGraph":
        return cls(int(n_layers), int(n_heads), bool(parallel))

    @classmethod
    def of_model(cls, adapter: object) -> "ComponentGraph":
        """The graph of a loaded model (its layers, heads and block layout)."""
        return cls.of(adapter.n_layers, adapter.n_heads, adapter.parallel)

    @cached_property
    def senders(self) -> tuple[Component, ...]:
        out = [Component(INPUT, "input", -1)]
        for layer in range(self.n_layers):
            out += [Component(head_name(layer, h), "head", layer, h) for h in range(self.n_heads)]
            out.append(Component(mlp_name(layer), "mlp", layer))
        return tuple(out)

    @cached_property
    def receivers(self) -> tuple[Component, ...]:
        out = []
        for layer in range(self.n_layers):
            out += [Component(head_name(layer, h), "head", layer, h) for h in range(self.n_heads)]
            out.append(Component(mlp_name(layer), "mlp", layer))
        out.append(Component(LOGITS, "logits", self.n_layers))
        return tuple(out)

    @cached_property
    def _sender_at(self) -> dict[str, int]:
        return {c.name: i for i, c in enumerate(self.senders)}

    @cached_property
    def _receiver_at(self) -> dict[str, int]:
        return {c.name: i for i, c in enumerate(self.receivers)}

    def sender(self, name: str) -> Component:
        return self.senders[self._sender_at[name]]

    def receiver(self, name: str) -> Component:
        return self.receivers[self._receiver_at[name]]

    def sender_index(self, name: str) -> int:
        return self._sender_at[name]

    def receiver_index(self, name: str) -> int:
        return self._receiver_at[name]

    def n_parents(self, r: Component) -> int:
        """How many senders precede receiver r (its parents are `senders[:n_parents(r)]`)."""
        per_layer = self.n_heads + 1
        if r.kind == "head":
            return 1 + r.layer * per_layer
        if r.kind == "mlp":
            return 1 + r.layer * per_layer + (0 if self.parallel else self.n_heads)
        return len(self.senders)

    def parents(self, r: Component) -> list[Component]:
        return list(self.senders[: self.n_parents(r)])

    @cached_property
    def edges(self) -> tuple[tuple[int, int], ...]:
        """(sender index, receiver index) pairs, receivers in forward order, then senders."""
        return tuple((u, v) for v, r in enumerate(self.receivers) for u in range(self.n_parents(r)))

    def edge_name(self, u: int, v: int) -> str:
        return f"{self.senders[u].name}->{self.receivers[v].name}"

    def acdc_order(self) -> list[tuple[int, list[int]]]:
        """ACDC's sweep: receivers output first (reverse topological order), and for each its
        parents latest first. Returns (receiver index, [sender indices in test order])."""
        return [(v, list(reversed(range(self.n_parents(r))))) for v, r in reversed(list(enumerate(self.receivers)))]

    def tables(self, edges: Iterable[tuple[int, int, float]]) -> tuple[pl.DataFrame, pl.DataFrame]:
        """(nodes, edges) tables for the `graph` chart, for the given (u, v, weight) edges.

        A sender and a receiver of the same name (a head, an MLP) are one node."""
        edges = list(edges)
        names: dict[str, Component] = {}
        for u, v, _ in edges:
            names.setdefault(self.senders[u].name, self.senders[u])
            names.setdefault(self.receivers[v].name, self.receivers[v])
        order = {c.name: i for i, c in enumerate([self.senders[0], *self.receivers])}
        comps = sorted(names.values(), key=lambda c: order[c.name])
        nodes = pl.DataFrame({
            "node": [c.name for c in comps],
            "layer": [float(c.x) for c in comps],
            "index": [c.index for c in comps],
            "kind": [c.kind for c in comps],
        }, schema={"node": pl.Utf8, "layer": pl.Float64, "index": pl.Int64, "kind": pl.Utf8})
        table = pl.DataFrame({
            "src": [self.senders[u].name for u, _, _ in edges],
            "dst": [self.receivers[v].name for _, v, _ in edges],
            "weight": [float(w) for _, _, w in edges],
        }, schema={"src": pl.Utf8, "dst": pl.Utf8, "weight": pl.Float64})
        return nodes, table
