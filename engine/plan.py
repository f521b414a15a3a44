"""Plan: the resolved study as a DAG of content-keyed nodes.

A node's key is `xxh3_128(canonical JSON of op, op version, params, input keys)`, computed
once at construction. Two statements that need the same sub-work build equal nodes, and the
builder keeps one of each key, so shared work (a capture of the residual stream of `m` on
`ioi`) is one node however many statements read it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import xxhash

from mechstudy.engine import spec


def canonical(value: Any) -> Any:
    """A JSON-ready, order-independent form of a parameter value. Refuses what it can't key.

    >>> canonical({"b": (1, 2), "a": 0.5})
    {'a': 0.5, 'b': [1, 2]}
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return {"__float__": repr(value)}
        return value
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): canonical(value[k]) for k in sorted(value, key=str)}
    # Never fall back to a random or repr-based key: a silent miss is worse than an error.
    raise TypeError(f"cannot key a parameter of type {type(value).__name__}: {value!r}")


def canonical_json(value: Any) -> str:
    return json.dumps(canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def hash_text(text: str) -> str:
    return xxhash.xxh3_128_hexdigest(text.encode())


@dataclass(frozen=True, slots=True, eq=False)
class Node:
    """One unit of cached work. Equality and hashing go by key.

    `params` are the keyed parameters (defaults spelled out), `settings` the values of non-keyed
    ones (execution details that cannot change numbers): they reach the operator's `run` but not
    the key, so two nodes differing only in settings are the same node.
    """

    op: str
    version: int
    params: tuple[tuple[str, Any], ...]
    inputs: tuple[tuple[str, "Node"], ...]
    settings: tuple[tuple[str, Any], ...] = ()
    key: str = field(init=False)

    def __post_init__(self) -> None:
        body = {
            "op": self.op,
            "version": self.version,
            "params": dict(self.params),
            "inputs": {name: n.key for name, n in self.inputs},
        }
        object.__setattr__(self, "key", hash_text(canonical_json(body)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Node) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    @property
    def dask_key(self) -> str:
        """Legible in progress bars and dashboards: "patch-7c1e0d9a4b2f3e11"."""
        return f"{self.op}-{self.key[:16]}"

    def param(self, name: str, default: Any = None) -> Any:
        return dict(self.params).get(name, default)

    def input(self, name: str) -> "Node":
        return dict(self.inputs)[name]


def make_node(op: str, params: Mapping[str, Any], inputs: Mapping[str, Node], version: int | None = None) -> Node:
    """Build a node of a registered op; params are canonicalised (so lists == tuples).

    Each param goes where its spec says: keyed ones (and params a plan hook derives, which the
    spec does not declare) into the key, non-keyed ones into `settings`.
    """
    s = spec.OPS[op]
    if version is None:
        version = s.version
    unkeyed = {p.name for p in s.params if not p.keyed}
    # Defaults are part of the key: a node built without a defaulted param must equal one
    # built with it spelled out, and changing a default must change the key.
    keyed = {**{p.name: p.default for p in s.params if not p.required and p.keyed},
             **{k: v for k, v in params.items() if k not in unkeyed}}
    # Values are stored in canonical form (lists, not tuples; dicts with sorted keys), so
    # run() sees exactly what was keyed. Node hashing goes by key, so they need not be hashable.
    items = tuple(sorted((k, canonical(v)) for k, v in keyed.items()))
    settings = tuple(sorted((k, canonical(v)) for k, v in params.items() if k in unkeyed))
    return Node(op, version, items, tuple(sorted(inputs.items())), settings)


def walk(roots: list[Node]) -> Iterator[Node]:
    """Every node reachable from roots, each once, dependencies before dependents."""
    seen: set[str] = set()

    def visit(n: Node) -> Iterator[Node]:
        if n.key in seen:
            return
        seen.add(n.key)
        for _, child in n.inputs:
            yield from visit(child)
        yield n

    for r in roots:
        yield from visit(r)
