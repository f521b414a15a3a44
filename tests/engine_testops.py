"""Small operators for engine tests (no model): registered on import, also in subprocesses."""

from __future__ import annotations

import os
import time

import polars as pl
import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param

CALLS: list[str] = []  # op names in call order (in-process runs only)


if "t_source" not in spec.OPS:

    @spec.operator("t_source", version=1, params=[Param("n", int), Param("seed", int, 0)])
    def t_source(inputs, params, ctx):
        CALLS.append("t_source")
        g = torch.Generator().manual_seed(params["seed"])
        return Artifact(tensors={"x": torch.randn(params["n"], generator=g)})

    @spec.operator("t_scale", version=1, params=[Param("factor", float)])
    def t_scale(inputs, params, ctx):
        CALLS.append("t_scale")
        x = inputs["src"].tensors["x"] * params["factor"]
        return Artifact(
            tensors={"x": x},
            tables={"result": pl.DataFrame({"i": list(range(len(x))), "value": x.tolist()})},
            data={"sum": float(x.sum())},
        )

    @spec.operator("t_slow", version=1, params=[Param("seconds", float), Param("tag", str, "")])
    def t_slow(inputs, params, ctx):
        CALLS.append("t_slow")
        # Write a large payload slowly so a SIGKILL lands mid-write as well as mid-compute.
        time.sleep(params["seconds"])
        big = torch.arange(2_000_000, dtype=torch.float32) + float(len(params["tag"]))
        if os.environ.get("MECHSTUDY_TEST_MARK"):
            open(os.environ["MECHSTUDY_TEST_MARK"], "a").write(params["tag"] + "\n")
        return Artifact(tensors={"x": big})

    @spec.operator("t_params", version=1, params=[Param("a", int), Param("b", float, 0.5),
                                                  Param("chunk", int, 16, keyed=False)])
    def t_params(inputs, params, ctx):
        # Echoes what run received: every declared param, defaults filled, keyed or not.
        return Artifact(data={"received": dict(params)})

    @spec.operator("t_fail", version=1, params=[])
    def t_fail(inputs, params, ctx):
        raise RuntimeError("boom")


if "t_loop" not in spec.OPS:

    @spec.operator("t_loop", version=1, params=[Param("steps", int), Param("sleep", float, 0.01)])
    def t_loop(inputs, params, ctx):
        """Calls ctx.progress once per step."""
        CALLS.append("t_loop")
        for i in range(params["steps"]):
            ctx.progress(i, params["steps"], "steps")
            time.sleep(params["sleep"])
        return Artifact(data={"steps": params["steps"]})


if "t_where" not in spec.OPS:

    @spec.operator("t_where", version=1, params=[Param("tag", int), Param("seconds", float, 0.2)], uses_model=True)
    def t_where(inputs, params, ctx):
        """A model-bound node (no model): which process ran it."""
        time.sleep(params["seconds"])
        return Artifact(data={"pid": os.getpid(), "tag": params["tag"]})
