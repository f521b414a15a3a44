"""`attribute features tcs of m on facts`: an attribution graph over transcoder features for one
prompt (the circuit tracer): which features, through which others, make the model's next token.

    tcs = train transcoder in all layers of m over web width=512 k=16   # one transcoder per layer
    g   = attribute features tcs of m on facts prompt 3                 # the dataset's 4th prompt
    g2  = attribute features tcs of m text "The Eiffel Tower is in"     # any text

The prompt is read up to its answer position (a dataset's), or to its last token. Every MLP is
replaced by its layer's transcoder plus an error node; attention patterns and norm scales are frozen
at their values on the prompt, which leaves a linear model whose edges are exact (the method and
its conventions: stdlib/dictionary/attribution.py). Nodes: the prompt's embeddings, every active
feature (at most `max_features`, the strongest), error nodes per layer and position, and the most
likely next tokens (`logits` at most, until `mass` of the probability). The graph is pruned to the
features carrying `node_threshold` of the influence on the logits and the edges carrying
`edge_threshold`; replacement and completeness scores say how much of it the features (rather than
the errors) explain, on the full and the pruned graph.

Tables: "result" (the kept features by influence: layer, position, token, feature, activation,
influence), "nodes" and "edges" (the pruned graph, drawn by the `attribution` chart), "all_nodes"
(every node of the full graph, in the order of the tensor "adjacency" [N, N], adjacency[t, s] =
edge s -> t).
"""

from __future__ import annotations

from typing import Any, Mapping

import polars as pl

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib.datasets import Prompts, encode
from mechstudy.stdlib.dictionary import attribution as at
from mechstudy.stdlib.models.sites import Site
from mechstudy.stdlib.dictionary.use import load, model_of

PREFIX = "transcoder_"


def dictionaries(value: Any) -> list[Any]:
    """A RESULT param's nodes: one, or a sweep's (one dictionary per layer)."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def validate(params: Mapping[str, Any]) -> None:
    def bad(msg: str, option: str) -> None:
        e = ValueError(msg)
        e.option = option  # type: ignore[attr-defined]
        raise e

    if (params["dataset"] is None) == (params["text"] is None):
        bad("attribute features needs one prompt: `on DATASET` (with `prompt N`) or `text \"...\"`", "text")


def plan(params: dict, b: Any) -> Any:
    nodes = dictionaries(params["dictionary"])
    inputs = {f"{PREFIX}{i:03d}": n for i, n in enumerate(nodes)}
    inputs.update({f"trained_on_{i:03d}": m for i, n in enumerate(nodes) if (m := model_of(n)) is not None})
    rest = {k: v for k, v in params.items() if k != "dictionary"}
    return b.node("attribute_features", {**rest, **inputs})


def transcoders(inputs: Mapping[str, Artifact], model: Artifact) -> list[at.Transcoder]:
    out = []
    fp = model.data.get("fingerprint")
    for name in sorted(k for k in inputs if k.startswith(PREFIX)):
        art = inputs[name]
        if art.data.get("kind") != "transcoder":
            raise ValueError(f"attribute features reads transcoders; this result is a {art.data.get('kind')} "
                             "(train them with `train transcoder in all layers of MODEL over CORPUS`)")
        trained = inputs.get("trained_on_" + name[len(PREFIX):])
        if trained is not None and fp and trained.data.get("fingerprint") != fp:
            raise ValueError("a transcoder was trained on another model than the one attributed")
        read, write = (Site.parse(s).kind for s in art.data["site"])
        out.append(at.Transcoder(int(art.data["layers"][0]), load(art), read, write))
    return out


def _name(n: dict[str, Any]) -> str:
    k = n["kind"]
    if k == at.EMB:
        return f"emb@{n['position']}"
    if k == at.FEATURE:
        return f"L{n['layer']}F{n['feature']}@{n['position']}"
    if k == at.ERROR:
        return f"err L{n['layer']}@{n['position']}"
    return f"logit {n['token']!r}"


def _label(n: dict[str, Any]) -> str:
    if n["kind"] == at.FEATURE:
        return f"L{n['layer']}F{n['feature']}"
    if n["kind"] == at.LOGIT:
        return repr(n["token"])
    return n["token"]


@spec.operator(
    "attribute_features",
    version=1,
    verb="attribute",
    components=("features",),
    params=[
        Param("component", str, "features", choices=("features",), doc="features: transcoder features"),
        Param("dictionary", spec.RESULT, doc="transcoders, one per layer (`train transcoder in all layers ...`)"),
        Param("model", spec.MODEL),
        Param("dataset", spec.DATASET, None, doc="prompts (`on DATASET`), read at their answer position"),
        Param("prompt", int, 0, minimum=0, doc="which prompt of the dataset"),
        Param("text", str, None, doc="or a prompt given as text"),
        Param("logits", int, 5, minimum=1, ceiling=1_000, doc="most likely next tokens attributed (at most)"),
        Param("mass", float, 0.95, above=0, maximum=1, doc="... until their probability reaches this"),
        Param("max_features", int, 2048, minimum=1, ceiling=1_000_000, doc="active features kept as nodes (the strongest)"),
        Param("node_threshold", float, 0.8, above=0, maximum=1, doc="pruning: share of the influence the kept features carry"),
        Param("edge_threshold", float, 0.98, above=0, maximum=1, doc="pruning: share of the influence the kept edges carry"),
        Param("rows", int, 32, keyed=False, doc="targets per backward pass"),
    ],
    plan=plan,
    validate=validate,
    uses_model=True,
    model_features=frozenset({"causal", "lm_head"}),
    output="table",
    default_chart="attribution",
    example='corpus web = text "README.md" tokens=2048 context=32\n'
            "tcs = train transcoder in all layers of m over web width=128 k=4 batch=256 steps=20 checkpoint=10\n"
            'g = attribute features tcs of m text "When Mary and John went to the store, John gave a drink to"',
)
def run(inputs: Mapping[str, Artifact], params: dict, ctx: Any) -> Artifact:
    """The attribution graph of one prompt over transcoder features, pruned."""
    adapter = ctx.model(inputs["model"])
    tcs = transcoders(inputs, inputs["model"])
    if params["text"] is not None:
        ids = encode(adapter.tokenizer, params["text"], None)
        where = "text"
    else:
        prompts = Prompts.of(inputs["dataset"])
        if params["prompt"] >= prompts.n:
            raise ValueError(f"prompt {params['prompt']} of a dataset of {prompts.n}")
        end = int(prompts.read_pos[params["prompt"]]) + 1
        ids = prompts.ids[params["prompt"], :end].tolist()
        where = f"prompt {params['prompt']}"
    g = at.attribute(adapter, ids, tcs, max_logits=params["logits"], logit_mass=params["mass"],
                     max_features=params["max_features"], rows=params["rows"], progress=getattr(ctx, "progress", None))
    keep, edges = at.prune(g, params["node_threshold"], params["edge_threshold"])
    inf = at.influence(at.normalized(g.adjacency), at.logit_weights(g))
    full, pruned = at.scores(g.adjacency, g), at.scores(g.adjacency * edges, g)
    names = [_name(n) for n in g.nodes]
    rows = [{"node": names[i], "kind": n["kind"], "layer": n["layer"], "position": n["position"], "token": n["token"],
             "feature": n["feature"], "activation": n["activation"], "value": float(g.value[i]),
             "influence": float(inf[i]), "kept": bool(keep[i]), "label": _label(n)} for i, n in enumerate(g.nodes)]
    schema = {"node": pl.Utf8, "kind": pl.Utf8, "layer": pl.Int64, "position": pl.Int64, "token": pl.Utf8,
              "feature": pl.Int64, "activation": pl.Float64, "value": pl.Float64, "influence": pl.Float64,
              "kept": pl.Boolean, "label": pl.Utf8}
    all_nodes = pl.DataFrame(rows, schema=schema)
    kept = all_nodes.filter(pl.col("kept"))
    src_dst = edges.nonzero().tolist()
    edge_table = pl.DataFrame({"src": [names[s] for t, s in src_dst], "dst": [names[t] for t, s in src_dst],
                               "weight": [float(g.adjacency[t, s]) for t, s in src_dst]},
                              schema={"src": pl.Utf8, "dst": pl.Utf8, "weight": pl.Float64})
    result = (kept.filter(pl.col("kind") == at.FEATURE).sort("influence", descending=True)
              .select("layer", "position", "token", "feature", "activation", "influence"))
    n_feat = int(g.kinds(at.FEATURE).sum())
    top = ", ".join(f"{n['token']!r} {n['activation']:.2f}" for n in g.nodes if n["kind"] == at.LOGIT)
    text = adapter.tokenizer.decode(ids)
    data = {
        "prompt": text, "where": where, "tokens": len(ids), "layers": [t.layer for t in tcs],
        "scores": {"full": full, "pruned": pruned},
        "nodes": {"features": n_feat, "kept_features": int(result.height), "edges": int((g.adjacency != 0).sum()),
                  "kept_edges": len(src_dst)},
        "convention": "edge s -> t = write of s . d t / d(its site) in the prompt's local replacement model "
                      "(MLPs -> transcoders + errors, attention patterns and norm scales frozen); a feature's "
                      "value is its pre-activation, a logit's is logit - mean logit; influence = weighted "
                      "paths to the logits through |edges| normalised per target",
        "chart": {"title": f"Attribution graph of {text!r} (next: {top})"},
        "headline": [
            {"label": "replacement score (pruned graph)", "value": pruned["replacement"],
             "detail": f"full graph {full['replacement']:.3f}: the share of the logits' influence from the "
                       "prompt's tokens rather than error nodes"},
            {"label": "completeness (pruned graph)", "value": pruned["completeness"],
             "detail": f"full graph {full['completeness']:.3f}"},
            {"label": "features kept", "value": f"{result.height} of {n_feat}",
             "detail": f"{len(src_dst)} edges of {int((g.adjacency != 0).sum())}"},
            {"label": "next tokens attributed", "value": top}],
    }
    if result.height == 0:
        data["empty"] = "No feature carries influence on the logits: every path runs through error nodes."
    return Artifact(tensors={"adjacency": g.adjacency, "value": g.value, "bias": g.bias},
                    tables={"result": result, "nodes": kept, "edges": edge_table, "all_nodes": all_nodes}, data=data)
