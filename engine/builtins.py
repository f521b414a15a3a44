"""The engine's own node kinds: model, dataset and chart. Registered like any operator."""

from __future__ import annotations

from typing import Any

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param


@spec.operator("model", version=1, params=[Param("source", str), Param("ref", str), Param("options", dict, {}),
                                           Param("fingerprint", str), Param("libs", dict, {})])
def run_model(inputs: dict, params: dict, ctx: Any) -> Artifact:
    """A model declaration: records where the weights are and their fingerprint.
    Weights are loaded by the ops that use them (`ctx.model(...)`), once per process."""
    src = spec.MODEL_SOURCES[params["source"]]
    info = src.describe(params["ref"], params["options"])
    return Artifact(data={**params, "path": src.locate(params["ref"], params["options"]), "info": info.as_dict()})


@spec.operator("dataset", version=1, params=[Param("generator", str), Param("generator_version", int),
                                             Param("params", dict, {})])
def run_dataset(inputs: dict, params: dict, ctx: Any) -> Artifact:
    """A dataset declaration: runs its generator (tokenising with the model when it needs one)."""
    ds = spec.DATASETS[params["generator"]]
    return ds.run(inputs, dict(params["params"]), ctx)


@spec.operator("chart", version=2, params=[Param("kind", str), Param("title", str, None)])
def run_chart(inputs: dict, params: dict, ctx: Any) -> Artifact:
    """A chart of a result: a Vega-Lite spec stored as JSON."""
    render = spec.CHARTS[params["kind"]].render
    return Artifact(data={"vega_lite": render(inputs["result"], params["title"])})
