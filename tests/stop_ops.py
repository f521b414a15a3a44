"""An operator with a verb for the interruption tests, imported only by the subprocesses they
start (a verb registered in the test process would count as a stdlib operator in test_registry).

    x = dawdle steps=600 sleep=0.05                     calls ctx.progress every step
    x = dawdle steps=600 sleep=0.05 cooperative=false   never does: only a hard exit stops it
"""

from __future__ import annotations

import os
import time

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param

if "t_dawdle" not in spec.OPS:

    @spec.operator("t_dawdle", version=1, verb="dawdle", params=[
        Param("steps", int, 100), Param("sleep", float, 0.05), Param("cooperative", bool, True)])
    def t_dawdle(inputs, params, ctx):
        """Sleeps `steps` times `sleep` seconds."""
        mark = os.environ.get("MECHSTUDY_TEST_MARK")
        if mark:
            open(mark, "a").write(f"started {time.time()}\n")
        for i in range(params["steps"]):
            if params["cooperative"]:
                ctx.progress(i, params["steps"], "steps")
            time.sleep(params["sleep"])
        return Artifact(data={"steps": params["steps"]})
