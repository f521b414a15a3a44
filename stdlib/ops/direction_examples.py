"""`examples direction v of m over web top 20`: top-activating examples of a direction in the
residual stream (a steering vector, a binary probe's weights), with interval samples and histograms.

The activation of a token is the component, along the direction scaled to unit length, of the
activation at the direction's own site and layer(s) (a `contrast` / `actadd` vector's; a binary
logistic probe's weights taken back to the raw activation space, pointing toward class 1:
`stdlib/representations/steering.directions`), one unit per layer; `in LAYERS` picks among them.
Everything else is `examples neurons ...` (stdlib/ops/top_examples.py): the same tables, chart and
machinery (`stdlib/representations/examples.py`), threshold 0 (density = share of tokens with a
positive component).
"""

from __future__ import annotations

from typing import Any

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib.datasets import Prompts
from mechstudy.stdlib.models.sites import Site
from mechstudy.stdlib.ops.top_examples import SETTINGS, collect_units, direction_reader
from mechstudy.stdlib.representations.steering import directions


@spec.operator(
    "direction_examples",
    version=1,
    verb="examples",
    components=("direction",),
    params=[
        Param("direction", spec.RESULT, doc="a steering vector (`contrast`, `actadd`) or a binary logistic probe"),
        Param("layers", spec.LAYERS, None, doc="which of the direction's layers (default: all of them)"),
        Param("model", spec.MODEL),
        Param("corpus", spec.CORPUS, doc="the text read (`over NAME`)"),
        *SETTINGS,
    ],
    output="table",
    uses_model=True,
    default_chart="examples",
    example='corpus web = text "README.md" tokens=512 context=64\n'
            'w = actadd resid_pre in layer 1 of m positive " good" negative " bad"\n'
            "examples direction w of m over web top 5",
)
def run(inputs: dict[str, Artifact], params: dict, ctx: Any) -> Artifact:
    """Top-activating corpus examples of a direction (steering vector or probe) at its layer(s)."""
    adapter = ctx.model(inputs["model"])
    prompts = Prompts.of(inputs["corpus"])
    d = directions(inputs["direction"])
    given = None if params["layers"] in (None, "all") else [int(l) for l in params["layers"]]
    keep = [i for i, l in enumerate(d.layers) if given is None or l in given]
    if not keep:
        raise ValueError(f"the direction is at layer(s) {d.layers}, none of {given}")
    layers = [d.layers[i] for i in keep]
    sites = [Site(l, d.site) for l in layers]
    units = {"layer": layers, "direction": [d.method] * len(layers)}
    return collect_units(adapter, prompts, sites, direction_reader(sites, d.vectors[keep]), units, params, ctx,
                         {"site": d.site, "direction": d.method})
