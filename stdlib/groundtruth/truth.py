"""The true circuit of a ground-truth model, derived from its weights, and precision / recall against it.

Edges are those of the stdlib's component graph (`circuits.graph`: senders input, a{L}.h{H},
m{L}; receivers a{L}.h{H}, m{L}, logits). There is an edge u -> v in the *weights* when some
direction sender u can write is read by receiver v:

- what a sender writes: a head the rows of its W_O, an MLP the rows of its W_out; the input
  writes two kinds of directions, told apart because patching methods can only see one:
  "tokens" (E[t] - E[t'] for the task's tokens: what differs between two prompts) and
  "positions" (P[i] - P[0], a special token that always sits in one place (BOS), and the
  constant E[t0] + P[0]: the same in every prompt pair);
- what a receiver reads: a head through its query (u W_Q W_K^T != 0, or against the key bias),
  its key (the same from the other side) or its value (u W_V W_O != 0, the OV circuit); an MLP
  through W_in; the logits through the unembedding.

The layer norms of these models are exact identities on mean-zero vectors (see `craft`), which
`check_norms` verifies before anything is derived; the "mean_zero" dimension is read by nothing.

Then: a sender *carries tokens* when it is the input (through a token direction) or hears a
sender that carries tokens; a receiver *reaches the logits* when it is the logits or its own
output is read, edge by edge, up to the logits. The **circuit** is every edge that carries
tokens into a receiver that reaches the logits: the edges through which a prompt's tokens change
the output, which is what a method that patches one prompt's activations into another's can find
(clean and corrupted prompts of one length share their positions, so an edge that carries only
positions or constants changes nothing when patched). Edges that carry only positions or
constants into the output path are listed apart ("positional"), and so are connected edges whose
receiver never reaches the logits ("dead_ends": distractors).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from mechstudy.stdlib.circuits.graph import ComponentGraph
from mechstudy.stdlib.groundtruth.craft import LN_EPS, LN_GAIN

TRUTH_FILE = "truth.json"
TOL = 1e-9


@dataclass
class Weights:
    """A GPT-2 checkpoint's matrices in float64, per component (x @ W convention)."""

    n_layers: int
    n_heads: int
    d_head: int
    wte: np.ndarray  # [V, D]
    wpe: np.ndarray  # [P, D]
    w_u: np.ndarray  # [D, V]
    heads: dict[tuple[int, int], dict[str, np.ndarray]]  # wq wk wv [D, dh], bq bk bv [dh], wo [dh, D]
    mlps: dict[int, dict[str, np.ndarray]]  # w_in [D, M], w_out [M, D]
    sd: dict[str, np.ndarray]
    config: dict


def load_weights(model_dir: str | Path) -> Weights:
    from safetensors.numpy import load_file

    model_dir = Path(model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    sd = {k: v.astype(np.float64) for k, v in load_file(str(model_dir / "model.safetensors")).items()}
    D, H = int(cfg["n_embd"]), int(cfg["n_head"])
    dh = D // H
    heads, mlps = {}, {}
    for layer in range(int(cfg["n_layer"])):
        p = f"transformer.h.{layer}."
        w, b = sd[p + "attn.c_attn.weight"], sd[p + "attn.c_attn.bias"]
        for h in range(H):
            cols = [slice(j * D + h * dh, j * D + (h + 1) * dh) for j in range(3)]
            heads[(layer, h)] = {"wq": w[:, cols[0]], "wk": w[:, cols[1]], "wv": w[:, cols[2]],
                                 "bq": b[cols[0]], "bk": b[cols[1]], "bv": b[cols[2]],
                                 "wo": sd[p + "attn.c_proj.weight"][h * dh:(h + 1) * dh]}
        mlps[layer] = {"w_in": sd[p + "mlp.c_fc.weight"], "w_out": sd[p + "mlp.c_proj.weight"]}
    lm = sd.get("lm_head.weight", sd["transformer.wte.weight"])
    return Weights(int(cfg["n_layer"]), H, dh, sd["transformer.wte.weight"], sd["transformer.wpe.weight"], lm.T,
                   heads, mlps, sd, cfg)


def check_norms(w: Weights) -> None:
    """Raise unless every layer norm is the exact identity of `craft` (eps 2**40, gain 2**20, bias
    0) and every write is mean-zero (so the stream always is)."""
    if float(w.config.get("layer_norm_epsilon", 0)) != LN_EPS:
        raise ValueError("not a ground-truth checkpoint: layer_norm_epsilon is not 2**40")
    for k, v in w.sd.items():
        if ".ln_" in k or "ln_f" in k:
            want = LN_GAIN if k.endswith("weight") else 0.0
            if not np.all(v == want):
                raise ValueError(f"not a ground-truth checkpoint: {k} is not {want}")
    writes = [w.wte, w.wpe] + [h["wo"] for h in w.heads.values()] + [m["w_out"] for m in w.mlps.values()]
    worst = max(float(np.abs(x.sum(-1)).max() / max(1.0, np.abs(x).max())) for x in writes)
    if worst > 1e-5:
        raise ValueError(f"not a ground-truth checkpoint: a write is not mean-zero (relative row sum {worst:.2g})")


def _nonzero(x: np.ndarray) -> bool:
    return bool(x.size) and float(np.abs(x).max()) > TOL


def input_directions(w: Weights, tokens: Sequence[str], task_tokens: Sequence[str], fixed: Sequence[str]) -> dict[str, np.ndarray]:
    """The input's directions: "tokens" [n, D] (what differs between prompts), "positions" [n, D] and
    "constant" [1, D] (the same in every prompt of a length)."""
    ids = [tokens.index(t) for t in task_tokens]
    t0 = w.wte[ids[0]]
    tok = np.stack([w.wte[i] - t0 for i in ids[1:]]) if len(ids) > 1 else np.zeros((0, w.wte.shape[1]))
    pos = [w.wpe[i] - w.wpe[0] for i in range(1, w.wpe.shape[0])]
    pos += [w.wte[tokens.index(t)] - t0 for t in fixed]
    return {"tokens": tok, "positions": np.stack(pos), "constant": (t0 + w.wpe[0])[None]}


def reads(w: Weights, receiver: str, u: np.ndarray) -> list[str]:
    """Which inputs of `receiver` ("a{L}.h{H}", "m{L}", "logits") read any of the directions u [n, D]:
    "q", "k", "v" for a head, "in" for an MLP or the logits."""
    if not len(u):
        return []
    if receiver == "logits":
        return ["in"] if _nonzero(u @ w.w_u) else []
    if receiver.startswith("m"):
        return ["in"] if _nonzero(u @ w.mlps[int(receiver[1:])]["w_in"]) else []
    layer, head = (int(x) for x in receiver[1:].replace(".h", " ").split())
    h = w.heads[(layer, head)]
    out = []
    if _nonzero(u @ h["wq"] @ h["wk"].T) or _nonzero(u @ h["wq"] @ h["bk"][:, None]):
        out.append("q")
    if _nonzero(u @ h["wk"] @ h["wq"].T) or _nonzero(u @ h["wk"] @ h["bq"][:, None]):
        out.append("k")
    if _nonzero(u @ h["wv"] @ h["wo"]):
        out.append("v")
    return out


def writes(w: Weights, sender: str) -> np.ndarray:
    """[n, D] the directions a head or MLP can write."""
    if sender.startswith("m"):
        return w.mlps[int(sender[1:])]["w_out"]
    layer, head = (int(x) for x in sender[1:].replace(".h", " ").split())
    return w.heads[(layer, head)]["wo"]


def derive(model_dir: str | Path) -> dict:
    """The truth record of a ground-truth model directory (what `truth.json` holds)."""
    model_dir = Path(model_dir)
    w = load_weights(model_dir)
    check_norms(w)
    crafted = json.loads((model_dir / "crafted.json").read_text())
    tokens, meta = crafted["tokens"], crafted["meta"]
    g = ComponentGraph.of(w.n_layers, w.n_heads)
    dirs = input_directions(w, tokens, meta["task_tokens"], [crafted["bos"]])
    conn: dict[tuple[str, str], dict] = {}  # (src, dst) -> {"via": [...], "carries": [...]}
    for u, v in g.edges:
        src, dst = g.senders[u].name, g.receivers[v].name
        if src == "input":
            by_tokens = reads(w, dst, dirs["tokens"])
            fixed = set(reads(w, dst, dirs["positions"])) | set(reads(w, dst, dirs["constant"]))
            if by_tokens:
                conn[(src, dst)] = {"via": sorted(set(by_tokens) | fixed), "carries": ["tokens"],
                                    "tokens_via": by_tokens}
            elif fixed:
                conn[(src, dst)] = {"via": sorted(fixed), "carries": ["positions"]}
        else:
            got = reads(w, dst, writes(w, src))
            if got:
                conn[(src, dst)] = {"via": got, "carries": []}
    # carries tokens: forward order (senders are in topological order)
    tok = {"input": True}
    for s in g.senders[1:]:
        tok[s.name] = any(tok.get(a, False) and ("tokens" in c["carries"] if a == "input" else True)
                          for (a, b), c in conn.items() if b == s.name)
    for (a, b), c in conn.items():
        if a != "input":
            c["carries"] = ["tokens"] if tok[a] else ["positions"]
    # reaches the logits: backward order
    reach = {"logits": True}
    for s in reversed(g.senders[1:]):
        reach[s.name] = any(b == "logits" or reach.get(b, False) for (a, b) in conn if a == s.name)
    circuit, positional, dead = [], [], []
    for u, v in g.edges:
        key = (g.senders[u].name, g.receivers[v].name)
        if key not in conn:
            continue
        name, c = f"{key[0]}->{key[1]}", conn[key]
        if not (key[1] == "logits" or reach.get(key[1], False)):
            dead.append(name)
        elif "tokens" in c["carries"]:
            circuit.append(name)
        else:
            positional.append(name)
    return {
        "model": crafted["name"],
        "graph": {"n_layers": w.n_layers, "n_heads": w.n_heads, "edges_total": len(g.edges),
                  "senders": "input, a{L}.h{H}, m{L}", "receivers": "a{L}.h{H} (q, k, v), m{L}, logits"},
        "circuit": circuit,
        "positional": positional,
        "dead_ends": dead,
        "connections": {f"{a}->{b}": c for (a, b), c in conn.items()},
        "derivation": "stdlib/groundtruth/truth.py: an edge is connected when a direction its sender writes is read "
                      "by its receiver (q, k, v through W_Q W_K^T and W_V W_O; MLP W_in; unembedding); the circuit "
                      "holds the connected edges that carry token information into a receiver that reaches the logits.",
    }


def load_truth(model_dir: str | Path) -> dict:
    path = Path(model_dir) / TRUTH_FILE
    if not path.is_file():
        raise LookupError(f"{Path(model_dir).name} has no {TRUTH_FILE}: only the ground-truth models "
                          "(tracr-xproportion, tracr-reverse, induction-handwired) have a known circuit")
    return json.loads(path.read_text())


# ---- precision and recall --------------------------------------------------------------------
def precision_recall(predicted: Iterable[str], truth: Iterable[str]) -> dict:
    """Edge precision, recall and F1 of a predicted edge set against the true one.

    Precision of an empty prediction is 1 (no false edges), recall of an empty truth is 1.

    >>> precision_recall(["a->b", "b->c", "x->y"], ["a->b", "b->c", "c->d"])["precision"]
    0.6666666666666666
    """
    p, t = set(predicted), set(truth)
    tp = len(p & t)
    prec = tp / len(p) if p else 1.0
    rec = tp / len(t) if t else 1.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {"precision": prec, "recall": rec, "f1": f1, "tp": tp, "fp": len(p - t), "fn": len(t - p),
            "predicted": len(p)}


NOISE = 1e-6  # |score| at or below NOISE * the largest |score| is float32 rounding, not a signal


def ranked_curve(scores: dict[str, float], truth: Iterable[str]) -> list[dict]:
    """Precision and recall of the top-k edges by |score| for every k (ties enter together), with
    the score at the cut. An edge whose |score| is at most NOISE times the largest (float32
    rounding of an exact zero) is never predicted.

    >>> [(r["k"], r["precision"], r["recall"]) for r in ranked_curve({"a": 3.0, "b": -2.0, "c": 1e-9}, ["b"])]
    [(1, 0.0, 0.0), (2, 0.5, 1.0)]
    """
    t = set(truth)
    top = max((abs(s) for s in scores.values()), default=0.0)
    order = sorted(((abs(s), e) for e, s in scores.items() if abs(s) > NOISE * top), key=lambda x: -x[0])
    out, taken, i = [], [], 0
    while i < len(order):
        cut = order[i][0]
        while i < len(order) and order[i][0] == cut:
            taken.append(order[i][1])
            i += 1
        out.append({"k": len(taken), "cut": cut, **precision_recall(taken, t)})
    return out


def average_precision(curve: Sequence[dict], n_true: int) -> float:
    """Area under the step precision-recall curve: sum over cuts of precision * recall gained."""
    ap, last = 0.0, 0.0
    for row in curve:
        ap += row["precision"] * (row["recall"] - last)
        last = row["recall"]
    return ap if n_true else float("nan")
