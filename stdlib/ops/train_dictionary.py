"""`train sae|transcoder`: dictionary learning on the activation store, in cached,
resumable checkpoints.

    sae = train sae resid_post in layer 1 of m over web width=1024 k=32 steps=2000
    tcs = train transcoder in all layers of m over web           # one per layer (a sweep)
    l1  = train sae using relu in layer 1 of m over web l1=5 steps=2000
    jr  = train sae using jumprelu on acts width=64 l0=0.01      # a dataset of activations (planted)
    tc  = train transcoder in layer 1 of m over web              # resid_mid -> mlp_out
    cc  = train crosscoder resid_post in all layers of m over web   # stdlib/ops/train_crosscoder.py

The statement plans the activation store's shards (`stdlib/activations`: one cached node per
shard of the corpus at the site, shared with every other statement on that site), then a chain of
checkpoints: one node per `checkpoint` steps, each resuming from the one before. No key holds the
total number of steps (the learning rate and sparsity warm-ups are the only schedules), so a run
twice as long reuses every checkpoint of the shorter one and computes only the extra steps, and an
interrupted run restarts from its last finished checkpoint.

Architectures (`using ...` or the bare word): relu (L1 on f * ||d_f||, Anthropic's 2024 update; or
plain L1 with unit-norm decoder rows: decoder_norm=unit), topk, batchtopk, jumprelu (L0 penalty
through straight-through estimators). Dead features: AuxK (topk, batchtopk) or resampling (relu,
jumprelu) by default (`dead=`). A transcoder reads `site` (default resid_mid) and writes `target`
(default mlp_out) of one layer; a crosscoder reads and writes the site at every listed layer (its
statement is `train_crosscoder`'s). Several layers for an SAE or a transcoder make a sweep: one
dictionary (one checkpoint chain) per layer, which `attribute features` reads as a set.

The artifact (the last checkpoint): the dictionary on raw activations (tensors W_enc [d_in, F],
b_enc, W_dec [F, d_out], b_dec, threshold or log_threshold) plus the training state (`state.*`);
table "history" (every `log_every` steps: loss, mse, fvu, l0, sparsity, aux, dead_fraction, lr, on
the training batches); data: the shape, sites, final numbers, and on a dataset with planted
directions the ground-truth recovery (mean over true directions of the max cosine with a decoder
direction). Held-out evaluation, with the model's loss, is `score` (stdlib/ops/score_dictionary.py).
"""

from __future__ import annotations

from typing import Any, Mapping

import polars as pl
import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib.activations import STORABLE, ActivationStore, plan_shards, shard_inputs
from mechstudy.stdlib.dictionary.model import ARCHS, Dictionary, Shape
from mechstudy.stdlib.dictionary.use import load  # noqa: F401  (the trained dictionary of this op's artifacts)
from mechstudy.stdlib.dictionary.train import HISTORY, Hyper, Layout, State, init_state, train_segment
from mechstudy.stdlib.models.sites import KINDS, component, words

KINDS_OF = ("sae", "transcoder", "crosscoder")
SITE_WORDS = words(lambda k: k.name in STORABLE)
DEFAULT_SITE = {"sae": "resid_post", "transcoder": "resid_mid", "crosscoder": "resid_post"}
DEFAULT_DEAD = {"relu": "resample", "jumprelu": "resample", "topk": "aux", "batchtopk": "aux"}
# Params that only some architectures read: spelled as None in the others' keys.
ONLY = {"k": ("topk", "batchtopk"), "l1": ("relu",), "l0": ("jumprelu",), "bandwidth": ("jumprelu",),
        "l1_warmup": ("relu", "jumprelu")}

PARAMS = (
    Param("component", str, "sae", choices=KINDS_OF, doc="sae, transcoder or crosscoder"),
    Param("site", str, None, choices=SITE_WORDS, doc="the site read (and written): resid_post for an SAE or "
          "crosscoder, resid_mid for a transcoder"),
    Param("target", str, None, choices=SITE_WORDS, doc="a transcoder's output site (default mlp_out)"),
    Param("layers", spec.LAYERS, None, sweepable=True, doc="the layer (several: one dictionary per layer)"),
    Param("model", spec.MODEL, None),
    Param("corpus", spec.CORPUS, None, doc="the text whose activations train it (`over CORPUS`)"),
    Param("dataset", spec.DATASET, None, doc="or a dataset of activations (`on acts`, e.g. planted)"),
    Param("method", str, "topk", choices=ARCHS, doc="architecture: relu, topk, batchtopk or jumprelu"),
    Param("width", int, 0, minimum=0, ceiling=1_000_000, doc="features (0: 8 x the input width)"),
    Param("k", int, 32, minimum=1, doc="active features per token (topk; batchtopk: on average)"),
    Param("l1", float, 5.0, minimum=0.0, doc="L1 coefficient (relu), on normalised activations"),
    Param("l0", float, 1.0, minimum=0.0, doc="L0 coefficient (jumprelu)"),
    Param("lr", float, 1e-3, above=0.0, doc="Adam learning rate"),
    Param("warmup", int, 50, minimum=0, doc="steps of linear learning-rate warm-up"),
    Param("l1_warmup", int, 100, minimum=0, doc="steps of linear sparsity-coefficient warm-up (relu, jumprelu)"),
    Param("batch", int, 4096, minimum=1, ceiling=1_000_000, doc="tokens per step"),
    Param("steps", int, 2000, keyed=False, minimum=1, ceiling=10_000_000, doc="training steps (shapes the checkpoint chain; not in any key)"),
    Param("checkpoint", int, 500, keyed=False, minimum=1, doc="steps per checkpoint node"),
    Param("seed", int, 0, minimum=0, doc="initialisation and data-order seed"),
    Param("decoder_norm", str, "auto", choices=("auto", "unit", "penalty"),
          doc="unit-norm decoder rows, or their norms in the L1 penalty (auto: penalty for relu and crosscoders)"),
    Param("dead", str, "auto", choices=("auto", "aux", "resample", "none"),
          doc="dead features: AuxK loss or resampling (auto: aux for topk/batchtopk, resample otherwise)"),
    Param("dead_steps", int, 100, minimum=1, doc="steps without firing after which a feature counts as dead"),
    Param("aux_k", int, 0, minimum=0, doc="AuxK's k (0: half the input width)"),
    Param("aux_coef", float, 1 / 32, minimum=0.0, doc="AuxK's coefficient"),
    Param("bandwidth", float, 0.05, above=0.0, doc="JumpReLU's straight-through kernel width"),
    Param("normalize", bool, True, doc="scale activations to E||x|| = sqrt(width) while training"),
    Param("shard_tokens", int, 65_536, minimum=1, ceiling=10_000_000, doc="tokens per activation-store shard"),
    Param("window", int, 4, minimum=1, ceiling=10_000, doc="shards shuffled together"),
    Param("store_dtype", str, "float32", choices=("float32", "float16", "bfloat16"), doc="stored activations' precision"),
    Param("log_every", int, 10, minimum=1, doc="steps per history row"),
)


MAX_CHECKPOINTS = 1_000  # checkpoint nodes per statement (each is planned, keyed and stored)


def resolved(params: Mapping[str, Any]) -> dict[str, Any]:
    """Params with the 'auto' and None defaults spelled out and unread ones set to None, so that
    equivalent statements key the same node."""
    p = dict(params)
    kind, arch = p["component"], p["method"]
    p["site"] = component(p["site"] or DEFAULT_SITE[kind]).kind.name
    p["target"] = component(p["target"] or "mlp_out").kind.name if kind == "transcoder" else None
    if p["decoder_norm"] == "auto":
        p["decoder_norm"] = "penalty" if arch == "relu" or kind == "crosscoder" else "unit"
    if p["dead"] == "auto":
        p["dead"] = DEFAULT_DEAD[arch]
    for name, archs in ONLY.items():
        if arch not in archs:
            p[name] = None
    if p["dead"] != "aux":
        p["aux_k"] = p["aux_coef"] = None
    return p


def validate(params: Mapping[str, Any]) -> None:
    """Check-time errors (raised as ValueError with `.option`, like dataset `prepare` hooks)."""
    p = resolved(params)
    kind, layers = p["component"], p["layers"]

    def bad(msg: str, option: str | None = None, hint: str | None = None) -> None:
        e = ValueError(msg)
        e.message, e.option, e.hint = msg, option, hint  # type: ignore[attr-defined]
        raise e

    if p["dataset"] is None and (p["model"] is None or p["corpus"] is None):
        bad(f"train {kind} needs a model and a corpus (`of MODEL over CORPUS`) or a dataset of activations "
            "(`on DATASET`)")
    if p["dataset"] is not None and kind != "sae":
        bad(f"a {kind} reads a model's activations: use `of MODEL over CORPUS`", "dataset")
    if p["model"] is not None and p["dataset"] is None:
        n = len(layers) if isinstance(layers, (list, tuple)) else 0
        if layers is None or n == 0:
            bad(f"train {kind} needs `in layer L`" + (" (or `in layers ...`)" if kind == "crosscoder" else ""), "layers")
        if kind != "crosscoder" and n != 1:
            bad(f"a {kind} reads one layer; got {n}", "layers",
                "train one per layer, or a crosscoder over several layers")
        if not KINDS[p["site"]].per_layer:
            bad(f"site {p['site']} has no layer", "site")
    for name, lo in (("width", 0), ("batch", 1), ("steps", 1), ("checkpoint", 1), ("dead_steps", 1),
                     ("shard_tokens", 1), ("window", 1), ("log_every", 1)):
        if int(p[name]) < lo:
            bad(f"{name} must be at least {lo}, got {p[name]}", name)
    if p["k"] is not None and p["k"] < 1:
        bad(f"k must be at least 1, got {p['k']}", "k")
    if p["width"] and p["k"] is not None and p["k"] > p["width"]:
        bad(f"k ({p['k']}) is larger than the width ({p['width']})", "k")
    if p["lr"] <= 0:
        bad(f"lr must be positive, got {p['lr']}", "lr")
    nodes = -(-int(p["steps"]) // int(p["checkpoint"]))
    if nodes > MAX_CHECKPOINTS and not spec.ceilings_lifted():
        bad(f"steps={p['steps']} in checkpoints of {p['checkpoint']} makes {nodes:,} checkpoint nodes, over the ceiling "
            f"of {MAX_CHECKPOINTS:,}", "checkpoint", f"checkpoint={-(-int(p['steps']) // MAX_CHECKPOINTS)} or more; "
            + spec.CEILING_HINT)
    if p["checkpoint"] % p["log_every"]:
        bad(f"checkpoint ({p['checkpoint']}) must be a multiple of log_every ({p['log_every']})", "checkpoint")


def columns(p: Mapping[str, Any], b: Any) -> list[list[Any]]:
    """The store columns (lists of shard nodes) a statement reads."""
    model, corpus = p["model"], p["corpus"]
    layers = list(p["layers"])
    kw = {"shard_tokens": p["shard_tokens"], "dtype": p["store_dtype"]}
    if p["component"] == "transcoder":
        return [plan_shards(b, model, corpus, p["site"], layers[0], **kw),
                plan_shards(b, model, corpus, p["target"], layers[0], **kw)]
    return [plan_shards(b, model, corpus, p["site"], l, **kw) for l in layers]


def schedule(steps: int, every: int) -> list[tuple[int, int]]:
    """Checkpoint segments: [(0, c), (c, 2c), ..., (.., steps)].

    >>> schedule(1100, 500)
    [(0, 500), (500, 1000), (1000, 1100)]
    """
    return [(a, min(a + every, steps)) for a in range(0, steps, every)]


def plan(params: dict, b: Any) -> Any:
    """Shards, then one node per checkpoint, each resuming the previous one."""
    p = resolved(params)
    inputs: dict[str, Any] = {}
    if p["dataset"] is None:
        inputs.update(shard_inputs(*columns(p, b)))
        inputs.update(model=p["model"], corpus=p["corpus"])
    else:
        inputs["dataset"] = p["dataset"]
    return chain("train_dictionary", p, inputs, b)


def chain(op: str, p: Mapping[str, Any], inputs: Mapping[str, Any], b: Any) -> Any:
    """The checkpoint nodes of `op` over `inputs` (shards, model, corpus ...); the last one."""
    fixed = {k: v for k, v in p.items() if k not in ("model", "corpus", "dataset", *inputs)}
    node = None
    for a, z in schedule(int(p["steps"]), int(p["checkpoint"])):
        extra = {"resume": node} if node is not None else {}
        node = b.node(op, {**fixed, **inputs, **extra, "start": a, "stop": z})
    return node


def _layout(p: Mapping[str, Any]) -> Layout:
    return Layout(p["component"])


@spec.operator(
    "train_dictionary",
    version=1,
    verb="train",
    components=("sae", "transcoder"),
    params=PARAMS,
    plan=plan,
    validate=validate,
    output="table",
    default_chart="loss_curve",
    doc=__doc__.split("\n\n")[0],
    example="dataset acts = planted(features=32, d=16)\n"
            "sae = train sae using topk on acts width=64 k=4 steps=100 checkpoint=50",
)
def run(inputs: Mapping[str, Artifact], params: dict, ctx: Any) -> Artifact:
    """Train a dictionary from the previous checkpoint (`resume` input) to step `stop`."""
    p = resolved(params)
    store = ActivationStore.of(inputs)
    hp = Hyper.of({**p, "arch": p["method"]})
    layout = _layout(p)
    stop = int(params.get("stop", p["steps"]))
    prev = inputs.get("resume")
    if prev is not None:
        state = State.of(Shape(**prev.data["shape"]), {k[len("state."):]: v for k, v in prev.tensors.items()
                                                          if k.startswith("state.")},
                         prev.tables["history"].to_dicts() if "history" in prev.tables else [])
    else:
        state = init_state(store, layout, hp)
    start = state.step
    if int(params.get("start", start)) != start:
        raise ValueError(f"checkpoint mismatch: resuming at step {start}, planned {params.get('start')}")
    state = train_segment(state, store, layout, hp, stop, getattr(ctx, "progress", None))
    raw = state.raw()
    tensors = {**raw.tensors(), **{f"state.{k}": v for k, v in state.tensors().items()}}
    history = pl.DataFrame(state.history, schema={h: (pl.Int64 if h == "step" else pl.Float64) for h in HISTORY})
    last = state.history[-1] if state.history else {}
    data: dict[str, Any] = {
        "kind": p["component"], "arch": p["method"], "shape": state.sae.shape.as_dict(),
        "site": store.names, "target": p["target"], "layers": list(p["layers"] or []),
        "steps": state.step, "segment": [start, state.step], "tokens_seen": state.step * hp.batch,
        "store_tokens": store.n, "final": last,
        "chart": {"title": "Training curves (on the training batches)"},
        "convention": "history rows average the training batches since the previous row; fvu = "
                      "||y - y^||^2 / ||y - mean y||^2 per batch; l0 = active features per token",
        "headline": [{"label": "FVU (training batches)", "value": last.get("fvu")},
                     {"label": "L0", "value": last.get("l0")},
                     {"label": "dead fraction", "value": last.get("dead_fraction")}],
    }
    truth = inputs.get("dataset")
    if truth is not None and "directions" in truth.tensors:
        rec = recovery(raw, torch.as_tensor(truth.tensors["directions"]).float())
        data["recovery"] = rec
        data["headline"].append({"label": "planted directions recovered (mean max cosine)", "value": rec})
    return Artifact(tensors=tensors, tables={"history": history}, data=data)


def recovery(sae: Dictionary, directions: torch.Tensor) -> float:
    """Mean over true directions [n, d] of the largest cosine with a decoder direction."""
    d = directions / directions.norm(dim=-1, keepdim=True)
    return float((d @ sae.directions().detach().T).max(-1).values.mean())

