"""`capture` (internal): activations of one site kind at every layer, on clean or corrupted prompts.

Shared sub-work: every statement that needs, say, the clean `z` of `m` on `ioi` (all head-patching
sweeps in denoising direction, whatever their layers, positions or metric) plans the same capture
node through the Builder (`interventions.plan_captures`), so it is computed and stored once.
Always all layers, for that reason (a model-level kind such as `ln_final` has one site).

Output tensors are keyed by canonical site name (``blocks.3.attn.hook_z`` -> [N, S, H, d_head]),
in the model's dtype, zero at padded positions.
"""

from __future__ import annotations

from typing import Any

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib.models.batching import capture_dataset
from mechstudy.stdlib.models.sites import SITE_KINDS


@spec.operator(
    "capture",
    version=1,
    params=[
        Param("site", str, choices=tuple(SITE_KINDS), doc="site kind (TransformerLens vocabulary)"),
        Param("which", str, "clean", choices=("clean", "corrupted"), doc="which prompts to run"),
        Param("model", spec.MODEL),
        Param("dataset", spec.DATASET),
    ],
    verb=None,
    output="tensors",
    uses_model=True,
)
def run(inputs: dict[str, Artifact], params: dict, ctx: Any) -> Artifact:
    """Activations of a site kind at all layers on a dataset's clean or corrupted prompts."""
    adapter = ctx.model(inputs["model"])
    tensors = capture_dataset(adapter, inputs["dataset"], params["site"], params["which"], ctx.max_rows)
    return Artifact(tensors=tensors, data={"site": params["site"], "which": params["which"],
                                           "layers": adapter.n_layers, "names": sorted(tensors)})
