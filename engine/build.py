"""Resolved study -> plan. The only place statements turn into nodes.

Operators with a `plan` hook expand themselves through the `Builder` (sharing sub-work by
key); the others become one node whose inputs are their model/dataset/result parameters.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from typing import Any, Mapping

from mechstudy.engine import spec
from mechstudy.engine.fingerprint import model_fingerprint
from mechstudy.engine.plan import Node, make_node, walk
from mechstudy.lang.resolved import Call, Ref, ResolvedStudy, Span

# Library versions that can change numbers are part of every model node's key.
_NUMERIC_LIBS = ("torch", "transformers")


def _lib_versions() -> dict[str, str]:
    out = {}
    for lib in _NUMERIC_LIBS:
        try:
            v = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            v = "absent"
        out[lib] = ".".join(v.split("+")[0].split(".")[:2])
    return out


@dataclass
class Result:
    """A named statement's nodes: one per sweep point, plus its chart node(s)."""

    name: str
    call: Call | None
    nodes: list[Node]
    points: list[dict[str, Any]]
    charts: list[Node] = field(default_factory=list)
    span: Span | None = None
    plotted: bool = False  # an explicit `plot` replaced the default chart

    def charts_for(self, i: int) -> list[Node]:
        """The chart nodes drawn from sweep point i's node."""
        key = self.nodes[i].key
        return [c for c in self.charts if c.input("result").key == key]


@dataclass
class Plan:
    study: ResolvedStudy
    results: dict[str, Result]
    models: dict[str, Node]
    datasets: dict[str, Node]

    def roots(self) -> list[Node]:
        out: list[Node] = []
        for r in self.results.values():
            out.extend(r.nodes)
            out.extend(r.charts)
        return out

    def nodes(self) -> list[Node]:
        return list(walk(self.roots()))


class Builder:
    """Passed to `OpSpec.plan` hooks: makes nodes, keeping one per key."""

    def __init__(self) -> None:
        self._nodes: dict[str, Node] = {}

    def node(self, op: str, params: Mapping[str, Any], inputs: Mapping[str, Node] | None = None) -> Node:
        """One node of `op`. Node-valued params become inputs of that name (so a plan hook can pass
        a statement's params straight through); the spec decides which of the rest are keyed."""
        inputs = {**{k: v for k, v in params.items() if isinstance(v, Node)}, **(inputs or {})}
        plain = {k: v for k, v in params.items() if not isinstance(v, Node)}
        n = make_node(op, plain, inputs)
        return self._nodes.setdefault(n.key, n)


def build_plan(study: ResolvedStudy) -> Plan:
    b = Builder()
    models: dict[str, Node] = {}
    for name, decl in study.models.items():
        src = spec.MODEL_SOURCES[decl.source]
        path = src.locate(decl.ref, dict(decl.options))
        models[name] = b.node(
            "model",
            {
                "source": decl.source,
                "ref": decl.ref,
                "options": dict(decl.options),
                "fingerprint": model_fingerprint(path),
                "libs": _lib_versions(),
            },
        )
    datasets: dict[str, Node] = {}  # "name" or "name@model" -> node

    def dataset_node(name: str, model: str | None) -> Node:
        """A dataset is tokenised by the model that reads it: one node per (dataset, model)."""
        d = study.datasets[name]
        ds = spec.DATASETS[d.generator]
        model = d.model or model
        if ds.needs_model and model is None:
            # The checker refused every statement for which this is ambiguous (lang.statement).
            (model,) = models
        inputs = {"model": models[model]} if ds.needs_model else {}
        node = b.node(
            "dataset",
            {"generator": d.generator, "generator_version": ds.version, "params": dict(d.params)},
            inputs,
        )
        datasets[f"{name}@{model}" if ds.needs_model else name] = node
        return node

    results: dict[str, Result] = {}
    for call in study.calls:
        s = spec.OPS[call.op]
        nodes, points = [], []
        for point in call.points:
            model_name = next((v.name for _, v in point if isinstance(v, Ref) and v.kind == "model"), None)
            params = {k: _deref(v, models, dataset_node, model_name, results) for k, v in point}
            node = s.plan(s.complete(params), b) if s.plan else b.node(call.op, params)
            nodes.append(node)
            points.append(dict(point))
        res = Result(call.name, call, nodes, points, span=call.span)
        if s.default_chart and s.default_chart in spec.CHARTS:
            res.charts = [_chart(b, n, s.default_chart, None) for n in nodes]
        results[call.name] = res
    for plot in study.plots:
        # The first `plot` of a result replaces its default chart; further plots add charts.
        res = results[plot.target]
        if not res.plotted:
            res.charts, res.plotted = [], True
        res.charts += [_chart(b, n, plot.kind, plot.title) for n in res.nodes]
    return Plan(study, results, models, datasets)


def _chart(b: Builder, node: Node, kind: str, title: str | None) -> Node:
    return b.node("chart", {"kind": kind, "title": title}, {"result": node})


def _deref(v: Any, models: dict, dataset_node: Any, model_name: str | None, results: dict) -> Any:
    if isinstance(v, Ref):
        if v.kind == "model":
            return models[v.name]
        if v.kind == "dataset":
            return dataset_node(v.name, model_name)
        if v.kind == "result":
            nodes = results[v.name].nodes
            return nodes[0] if len(nodes) == 1 else nodes
    return v
