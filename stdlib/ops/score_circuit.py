"""`score circuit acdc`: edge precision and recall of a discovered circuit against the true one.

For the ground-truth models (zoo "induction-handwired", "tracr-xproportion", "tracr-reverse"),
whose circuit is known by construction (`truth.json` beside the weights, derived by
`stdlib/groundtruth/truth.py`), this scores what a circuit method found, edge by edge on the
component graph (input, a{L}.h{H}, m{L} -> a{L}.h{H}, m{L}, logits). The model is the scored
result's own. Up to four results in one statement (`score circuit acdc eap direct to_l1`):

- ACDC (`discover circuit ...`): the kept edges are the prediction; a threshold sweep gives one
  operating point per threshold.
- EAP (`attribute edges ...`): edges ranked by |score|; one operating point per top-k cut
  (ties enter together; an edge scoring exactly 0 is never predicted).
- path patching (`patch path from heads|mlp ... [to heads|q|k|v in LAYERS | to logits]`): each
  (sender, receiver) pair measured gets |patched - baseline| (the baseline is the clean run for
  noising, the corrupted run for denoising); every path result given is pooled and ranked like
  EAP. Path patching measures only head and MLP senders into heads or the logits, so it is
  scored on those edges alone (`scope`), and a receiver set (`to heads in layer 1`) gives each
  of its heads the set's score.

The true circuit is the edges that carry token information into the output path: a prompt pair
of one length shares its positions, so no patching method can see an edge that carries only
positions (`truth.json` lists those apart; `recall_structural` counts them as missed).

Tables: "result" every operating point (method, setting, precision, recall, f1, tp, fp, fn,
predicted, scope), drawn as precision against recall; "summary" one row per method (the best F1
and where it is, average precision for the ranked methods, and for ACDC the precision and recall
at each threshold); data["truth"] the true edges.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib.groundtruth.truth import average_precision, load_truth, precision_recall, ranked_curve

SLOTS = ("result", "result2", "result3", "result4")


def _plan(params: dict, b: Any) -> Any:
    nodes = []
    for slot in SLOTS:
        v = params.get(slot)
        if v is not None:
            nodes += list(v) if isinstance(v, (list, tuple)) else [v]
    inputs = {f"r{i:02d}": n for i, n in enumerate(nodes)}
    model = next((dict(n.inputs).get("model") for n in nodes if "model" in dict(n.inputs)), None)
    if model is not None:
        inputs["model"] = model
    plain = {k: v for k, v in params.items() if k not in SLOTS}
    return b.node("score_circuit", plain, inputs)


def kind_of(art: Artifact) -> str:
    d = art.data or {}
    if d.get("method") == "ACDC":
        return "acdc"
    if d.get("method") == "edge attribution patching":
        return "eap"
    if "sender" in d and "receiver" in d:
        return "path"
    raise ValueError("score circuit takes ACDC (`discover circuit`), EAP (`attribute edges`) or path patching "
                     "(`patch path`) results")


def path_scores(art: Artifact, n_heads: int) -> dict[str, float]:
    """Edge -> |patched - baseline| of one path-patching result."""
    d, df = art.data, art.tables["result"]
    base = d["clean_mean"] if d.get("direction", "noising") == "noising" else d["corrupted_mean"]
    send, recv = d["sender"]["component"], d["receiver"]
    if send not in ("heads", "mlp"):
        raise ValueError(f"score circuit: a path's sender must be heads or mlp (one component each), not {send!r}")
    if "position" in df.columns and df.schema["position"] != pl.Utf8:
        raise ValueError("score circuit: path patching per position is not an edge score; use all positions")
    if recv.get("component", "logits") == "logits":
        receivers = ["logits"]
    else:
        heads = recv.get("index") or list(range(n_heads))
        receivers = [f"a{layer}.h{h}" for layer in recv["layers"] for h in heads]
    out: dict[str, float] = {}
    for row in df.iter_rows(named=True):
        src = f"a{row['layer']}.h{row['head']}" if send == "heads" else f"m{row['layer']}"
        for r in receivers:
            out[f"{src}->{r}"] = abs(float(row["patched"]) - float(base))
    return out


def _row(method: str, setting: str, value: float | None, pr: dict, scope: int) -> dict:
    return {"method": method, "setting": setting, "value": value, **{k: pr[k] for k in (
        "precision", "recall", "f1", "tp", "fp", "fn", "predicted")}, "scope": scope}


@spec.operator(
    "score_circuit",
    version=1,
    verb="score",
    components=("circuit",),
    params=[
        Param("result", spec.RESULT, doc="an ACDC, EAP or path-patching result (a sweep: one point per threshold)"),
        Param("result2", spec.RESULT, None, doc="another result to score beside it"),
        Param("result3", spec.RESULT, None, doc="another result to score beside it"),
        Param("result4", spec.RESULT, None, doc="another result to score beside it"),
    ],
    output="table",
    plan=_plan,
    default_chart="line",
    example=('model m = zoo "induction-handwired"\n'
             "dataset seqs = induction(n=8, length=10)\n"
             "acdc = discover circuit of m on seqs with kl threshold [0.01, 0.1]\n"
             "eap = attribute edges of m on seqs with logit_diff\n"
             "score circuit acdc eap"),
)
def run(inputs: dict[str, Artifact], params: dict, ctx: Any) -> Artifact:
    """Edge precision and recall of ACDC / EAP / path patching against the model's true circuit."""
    model = inputs.get("model")
    if model is None:
        raise ValueError("score circuit: the scored result has no model")
    t = load_truth(Path(model.data["path"]))
    truth, positional = set(t["circuit"]), set(t["positional"])
    n_heads, total = int(t["graph"]["n_heads"]), int(t["graph"]["edges_total"])
    rows, summary, paths = [], [], {}
    acdc_points: list[tuple[float, dict]] = []
    for name in sorted(k for k in inputs if k.startswith("r")):
        art = inputs[name]
        kind = kind_of(art)
        if kind == "acdc":
            df = art.tables["result"].filter(pl.col("kept"))
            kept = [f"{s}->{d}" for s, d in zip(df["src"], df["dst"])]
            thr = float(art.data["threshold"])
            pr = precision_recall(kept, truth)
            pr["recall_structural"] = len(set(kept) & (truth | positional)) / max(1, len(truth | positional))
            acdc_points.append((thr, pr))
            rows.append(_row("ACDC", f"threshold {thr:g}", thr, pr, total))
        elif kind == "eap":
            df = art.tables["result"]
            scores = {f"{s}->{d}": float(v) for s, d, v in zip(df["src"], df["dst"], df["score"])}
            curve = ranked_curve(scores, truth)
            label = "EAP" if int(art.data.get("ig_steps") or 1) == 1 else f"EAP-IG ({art.data['ig_steps']} steps)"
            rows += [_row(label, f"top {c['k']}", c["cut"], c, total) for c in curve]
            summary.append(_ranked_summary(label, curve, truth, scores))
        else:
            paths.update(path_scores(art, n_heads))
    if paths:
        scope = set(paths)
        t_in = truth & scope
        curve = ranked_curve(paths, t_in)
        rows += [_row("path patching", f"top {c['k']}", c["cut"], c, len(scope)) for c in curve]
        summary.append(_ranked_summary("path patching", curve, t_in, paths))
    if acdc_points:
        acdc_points.sort(key=lambda p: p[0])
        best = max(acdc_points, key=lambda p: (p[1]["f1"], p[0]))
        summary.insert(0, {"method": "ACDC", "best_f1": best[1]["f1"], "at": f"threshold {best[0]:g}",
                           "precision": best[1]["precision"], "recall": best[1]["recall"],
                           "average_precision": None, "true_in_scope": len(truth), "scope": total})
    result = pl.DataFrame(rows, schema={"method": pl.Utf8, "setting": pl.Utf8, "value": pl.Float64,
                                        "precision": pl.Float64, "recall": pl.Float64, "f1": pl.Float64,
                                        "tp": pl.Int64, "fp": pl.Int64, "fn": pl.Int64, "predicted": pl.Int64,
                                        "scope": pl.Int64})
    summ = pl.DataFrame(summary, schema={"method": pl.Utf8, "best_f1": pl.Float64, "at": pl.Utf8,
                                         "precision": pl.Float64, "recall": pl.Float64,
                                         "average_precision": pl.Float64, "true_in_scope": pl.Int64,
                                         "scope": pl.Int64})
    headline = [{"label": "true circuit", "value": f"{len(truth)} of {total} edges",
                 "detail": " ".join(sorted(truth))}]
    for thr, pr in acdc_points:
        headline.append({"label": f"ACDC, threshold {thr:g}", "value": f"P {pr['precision']:.2f} / R {pr['recall']:.2f}",
                         "detail": f"{pr['predicted']} edges kept, {pr['tp']} true"})
    for s in summary:
        if s["method"] != "ACDC":
            headline.append({"label": s["method"], "value": f"AP {s['average_precision']:.2f}",
                             "detail": f"at {s['at']}: P {s['precision']:.2f} / R {s['recall']:.2f} "
                                       f"({s['true_in_scope']} true of {s['scope']} scored edges)"})
    return Artifact(
        tables={"result": result, "summary": summ},
        data={"model": t["model"], "truth": sorted(truth), "positional": sorted(positional),
              "acdc": [{"threshold": thr, **pr} for thr, pr in acdc_points],
              "chart": {"x": "recall", "y": "precision", "color": "method"},
              "headline": headline},
    )


def _ranked_summary(method: str, curve: list[dict], truth: set[str], scores: dict[str, float]) -> dict:
    """Average precision, and precision / recall at k = the number of true edges in scope."""
    n = len(truth)
    at_k = next((c for c in curve if c["k"] >= n), curve[-1] if curve else None)
    return {"method": method, "best_f1": max((c["f1"] for c in curve), default=0.0),
            "at": f"top {at_k['k']}" if at_k else "nothing scored",
            "precision": at_k["precision"] if at_k else 1.0, "recall": at_k["recall"] if at_k else 0.0,
            "average_precision": average_precision(curve, n), "true_in_scope": n, "scope": len(scores)}
