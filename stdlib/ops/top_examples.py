"""`examples neurons 0..9 in layer 2 of m over web top 20`: top-activating dataset examples per MLP
neuron, with the surrounding tokens highlighted, interval samples and activation histograms.

For each neuron (its `mlp_post` activation: the MLP's hidden unit after the nonlinearity) over every
real token of the corpus: the `top` tokens where it fires most, each shown with `before` tokens
before it and `after` after it and the neuron's activation on each of them; `per_band` tokens
drawn at random from each of `bands` equal intervals of (0, max] (what the neuron does at a fifth,
two fifths ... of its maximum, not only at its peak); a histogram over `bins` bins; its max, mean
and density (the fraction of tokens where it is above 0). The machinery is
`stdlib/representations/examples.py`, shared with the dictionary features' dashboards.

Tables: "result" (one row per neuron: layer, neuron, max, mean, min, density, tokens), "examples"
(one row per example: its group, "top" or "interval" with its `band`, the activation, corpus row
and position, the token, the context as `text` with the token in [[ ]], and `tokens`/`acts` for
highlighting), "histogram". The default chart draws the top examples of the first neurons with
every token shaded by the neuron's activation on it.

Any direction instead of neurons: `examples v of m over web` with `v` a steering vector
(`contrast`, `actadd`) or a binary logistic probe reads the activation at the direction's site and
layer(s) along it (scaled to unit length; a probe's weights taken back to the raw activation space),
one unit per layer; `in LAYERS` then picks among the direction's layers.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib.datasets import Prompts
from mechstudy.stdlib.models.batching import chunks, trimmed
from mechstudy.stdlib.models.sites import Site, component
from mechstudy.stdlib.representations import examples as ex

COMPONENTS = ("neurons",)
IN_MEMORY = 32_000_000  # activation values kept between the two passes (else the forwards run twice)


def neuron_reader(sites: list[Site], index: torch.Tensor) -> Callable[[dict], torch.Tensor]:
    """acts -> [B, S, len(sites) * len(index)]: the neurons `index` of each site (site-major)."""
    return lambda acts: torch.cat([acts[s][..., index].float().cpu() for s in sites], -1)


def direction_reader(sites: list[Site], vectors: torch.Tensor) -> Callable[[dict], torch.Tensor]:
    """acts -> [B, S, len(sites)]: each site's activation (trailing axes flattened) along its
    direction, scaled to unit length."""
    unit = vectors.float() / vectors.float().norm(dim=-1, keepdim=True).clamp(min=1e-12)
    return lambda acts: torch.stack([acts[s].flatten(2).float().cpu() @ unit[i] for i, s in enumerate(sites)], -1)


def unit_batches(adapter: Any, prompts: Prompts, sites: list[Site], read: Callable[[dict], torch.Tensor], units: int,
                 max_rows: int) -> ex.Batches:
    """Batches of [B, S, units] activations over the prompts (`read` turns the captured sites into
    units), by chunked forwards; kept in memory between the two passes when small, else recomputed."""
    n = prompts.n
    keep = n * prompts.ids.shape[1] * units <= IN_MEMORY
    memo: list[ex.Batch] = []

    def forward() -> Iterator[ex.Batch]:
        with torch.no_grad():
            for rows in chunks(n, max_rows):
                ids, mask = trimmed(prompts.ids, prompts.attention_mask, rows)
                yield ex.Batch(read(adapter.capture(ids, mask, sites)), ids, mask.bool(), rows)

    def batches() -> Iterator[ex.Batch]:
        if memo:
            yield from memo
            return
        for b in forward():
            if keep:
                memo.append(b)
            yield b

    return batches


def example_params(top: int = 20, after: int = 4, per_band: int = 3, bins: int = 32,
                   bins_doc: str = "histogram bins between the min and the max") -> tuple[Param, ...]:
    """What to collect per unit (`settings_of` reads them back); shared by `examples neurons`,
    `examples direction` and the dictionary `dashboard`, each with its own defaults."""
    return (
        Param("top", int, top, minimum=1, ceiling=10_000, doc="top-activating examples per unit"),
        Param("before", int, 8, minimum=0, ceiling=1_000, doc="tokens shown before an example's token"),
        Param("after", int, after, minimum=0, ceiling=1_000, doc="tokens shown after it"),
        Param("bands", int, 5, minimum=1, ceiling=1_000, doc="equal intervals of (0, max] sampled from"),
        Param("per_band", int, per_band, minimum=0, ceiling=1_000, doc="examples drawn from each interval"),
        Param("bins", int, bins, minimum=1, ceiling=100_000, doc=bins_doc),
        Param("seed", int, 0, minimum=0, doc="seed of the interval samples"),
    )


SETTINGS = example_params()


@spec.operator(
    "examples",
    version=1,
    verb="examples",
    components=COMPONENTS,
    params=[
        Param("component", str, "neurons", choices=COMPONENTS, doc="neurons: the MLP's hidden units (mlp_post)"),
        Param("component_index", list, None, minimum=0, nonempty=True, doc="which neurons (`neurons 0..9`); default all"),
        Param("layers", spec.LAYERS, spec.REQUIRED, doc="the layers whose neurons are read"),
        Param("model", spec.MODEL),
        Param("corpus", spec.CORPUS, doc="the text the neurons are read over (`over NAME`)"),
        *SETTINGS,
    ],
    output="table",
    uses_model=True,
    default_chart="examples",
    example='corpus web = text "README.md" tokens=512 context=64\n'
            'examples neurons 0..3 in layer 1 of m over web top 5',
)
def run(inputs: dict[str, Artifact], params: dict, ctx: Any) -> Artifact:
    """Top-activating corpus examples, interval samples and histograms of MLP neurons."""
    adapter = ctx.model(inputs["model"])
    prompts = Prompts.of(inputs["corpus"])
    kind = component(params["component"]).kind
    per_layer = kind.n_units(adapter.dims)
    index = list(range(per_layer)) if not params["component_index"] else [int(i) for i in params["component_index"]]
    bad = [i for i in index if not 0 <= i < per_layer]
    if bad:
        raise ValueError(f"neuron {bad[0]} out of range: the model has {per_layer} per layer")
    layers = list(range(adapter.n_layers)) if params["layers"] in (None, "all") else [int(l) for l in params["layers"]]
    sites = [Site(l, kind.name) for l in layers]
    units = {"layer": [l for l in layers for _ in index], "neuron": [i for _ in layers for i in index]}
    return collect_units(adapter, prompts, sites, neuron_reader(sites, torch.tensor(index)), units, params, ctx,
                         {"site": kind.name, "neurons": index})


def settings_of(params: dict, active_only: bool = False) -> ex.Settings:
    """The collection settings of `example_params` values."""
    return ex.Settings(k=params["top"], before=params["before"], after=params["after"], bands=params["bands"],
                       per_band=params["per_band"], bins=params["bins"], threshold=0.0, active_only=active_only,
                       seed=params["seed"])


def collect_units(adapter: Any, prompts: Prompts, sites: list[Site], read: Callable[[dict], torch.Tensor],
                  units: dict[str, list], params: dict, ctx: Any, extra: dict) -> Artifact:
    """The artifact of an `examples` statement: collect over the corpus, tables, headline."""
    settings = settings_of(params)
    n_units = len(next(iter(units.values())))
    found = ex.collect(unit_batches(adapter, prompts, sites, read, n_units, ctx.max_rows), n_units, settings)
    tok = adapter.tokenizer
    tables = found.tables(lambda i: tok.decode([i]), units)
    stats = tables.pop("stats")
    best = stats.sort("max", descending=True).row(0, named=True)
    name = f"L{best['layer']} N{best['neuron']}" if "neuron" in best else f"L{best['layer']} {best['direction']}"
    return Artifact(
        tensors=found.tensors(),
        tables={"result": stats, **tables},
        data={**extra, "layers": sorted(set(units["layer"])), "tokens": found.count,
              "settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__},
              "convention": "activation = the unit's value on each token (neurons: mlp_post, after the nonlinearity; "
                            "directions: the component along the unit vector); density = fraction of tokens above 0; "
                            "intervals: equal fifths of (0, max], sampled uniformly",
              "chart": {"title": "Top-activating examples (token shade = the unit's activation)"},
              "headline": [{"label": "tokens read", "value": found.count},
                           {"label": "strongest unit", "value": name,
                            "detail": f"max {best['max']:.3g}, density {best['density']:.3g}"}]},
    )
