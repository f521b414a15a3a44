"""`probe resid_post in all layers of m on sent using logistic`: probing classifiers with a control
task and selectivity (Hewitt & Liang, 2019).

For each layer, a probe is fitted on the activation at every labelled token of the dataset (its
``label_pos``: the last token of a sentence, or every token of a token-level set) and scored on
rows held out by `seed` (a `test` fraction of the sentences, so no sentence is on both sides).
Every layer is fitted in one batched problem (`stdlib/representations/probes.py`):

- ``using logistic`` (default): L2-regularised logistic / multinomial regression, the objective of
  scikit-learn's ``LogisticRegression(C=1/l2)`` on standardised features, solved exactly (L-BFGS);
- ``using mlp``: one hidden ReLU layer of `hidden` units, full-batch AdamW for `steps` steps.

The control task gives each word type of the dataset (its ``label_type``: the adjective of a
sentiment sentence, the token of a token-level set) a random label from the task's label
distribution; the same probe is fitted to it. Selectivity = task accuracy - control accuracy on the
held-out rows: high when the layer makes the property easy to read but not word identity.

Tables: "result" (long: layer, series = task | control | selectivity | majority, accuracy; the
default chart), "per_layer" (wide: task and control accuracy and loss, selectivity, train accuracy,
the majority-class rate). Tensors: the fitted probes (W, b, mean, std per layer, for the task and
the control), so a probe is a cache node that later statements can read.
"""

from __future__ import annotations

from typing import Any

import polars as pl
import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib import interventions as iv
from mechstudy.stdlib.models.batching import capture_dataset
from mechstudy.stdlib.models.sites import Site, component, words
from mechstudy.stdlib.representations import probes as P

COMPONENTS = words(lambda k: k.per_layer and len(k.seq_axes) == 1)
METHODS = ("logistic", "mlp")


def captures(params: dict) -> dict[str, tuple[str, str]]:
    return {"acts": (component(params["component"]).kind.name, "clean")}


def captured(inputs: dict[str, Artifact], dataset: Artifact, kind: str, ctx: Any) -> dict[int, torch.Tensor]:
    """layer -> activation [N, S, ...] of `kind` on the dataset: the plan's shared capture node, or
    captured now when the operator runs on its own."""
    art = inputs.get("acts")
    named = art.tensors if art is not None else capture_dataset(ctx.model(inputs["model"]), dataset, kind, "clean",
                                                                ctx.max_rows)
    return {Site.parse(name).layer: torch.as_tensor(t) for name, t in named.items()}


def features(acts: dict[int, torch.Tensor], layers: list[int], lab: P.Labelled) -> torch.Tensor:
    """[L, M, D]: each layer's activation at every labelled token, trailing axes flattened."""
    return torch.stack([acts[l][lab.row, lab.pos].reshape(lab.n, -1) for l in layers]).double()


def fit(method: str, x: torch.Tensor, y: torch.Tensor, n_classes: int, train: torch.Tensor, params: dict) -> P.Fit:
    mean, std = P.standardise(x, train)
    if method == "logistic":
        return P.fit_linear(x[:, train], y[train], n_classes, params["l2"], params["steps"], mean, std)
    return P.fit_mlp(x[:, train], y[train], n_classes, params["hidden"], params["steps"], l2=params["l2"],
                     seed=params["seed"], mean=mean, std=std)


@spec.operator(
    "probe",
    version=1,
    verb="probe",
    components=COMPONENTS,
    params=[
        Param("component", str, "resid_post", choices=COMPONENTS, doc="the activation probed"),
        Param("layers", spec.LAYERS, "all", doc="layers to probe"),
        Param("model", spec.MODEL),
        Param("dataset", spec.DATASET, doc="a labelled dataset (sentiment, entities, a file with label=)"),
        Param("method", str, "logistic", choices=METHODS, doc="logistic (linear, L2) or mlp (one hidden layer)"),
        Param("l2", float, 1.0, sweepable=True, minimum=0.0, doc="L2 strength (scikit-learn's 1/C) for logistic; weight decay for mlp"),
        Param("test", float, 0.25, above=0.0, below=1.0, doc="fraction of the dataset's rows held out for scoring"),
        Param("seed", int, 0, minimum=0, doc="the train/test split, the control task's labels and the mlp's init"),
        Param("hidden", int, 64, minimum=1, ceiling=100_000, doc="mlp: hidden units"),
        Param("steps", int, 300, minimum=1, ceiling=1_000_000, doc="logistic: L-BFGS iterations at most; mlp: AdamW steps"),
    ],
    output="table",
    uses_model=True,
    default_chart="line",
    requires=frozenset({"labels"}),
    plan=lambda params, b: b.node("probe", {**params, **iv.plan_captures(b, params, captures(params))}),
    example='model m = zoo "mini"\ndataset sent = sentiment()\nprobe resid_post in all layers of m on sent using logistic',
)
def run(inputs: dict[str, Artifact], params: dict, ctx: Any) -> Artifact:
    """Linear or MLP probes per layer, with a control task and selectivity (Hewitt & Liang)."""
    dataset = inputs["dataset"]
    lab = P.labelled(dataset)
    kind = component(params["component"]).kind.name
    acts = captured(inputs, dataset, kind, ctx)
    layers = sorted(acts) if params["layers"] in (None, "all") else [int(l) for l in params["layers"]]
    x = features(acts, layers, lab)
    n_rows = int(lab.row.max()) + 1
    test_row = P.held_out_rows(n_rows, params["test"], params["seed"])
    test, train = test_row[lab.row], ~test_row[lab.row]
    y = lab.label
    ctrl = P.control_labels(lab.type, y, lab.n_classes, params["seed"])
    method = params["method"]
    task_fit = fit(method, x, y, lab.n_classes, train, params)
    ctrl_fit = fit(method, x, ctrl, lab.n_classes, train, params)
    t_test, c_test = P.score(task_fit, x[:, test], y[test]), P.score(ctrl_fit, x[:, test], ctrl[test])
    t_train = P.score(task_fit, x[:, train], y[train])
    majority = float(torch.bincount(y[test], minlength=lab.n_classes).max()) / int(test.sum())
    sel = t_test.accuracy - c_test.accuracy
    per_layer = pl.DataFrame({
        "layer": layers, "accuracy": t_test.accuracy.tolist(), "control_accuracy": c_test.accuracy.tolist(),
        "selectivity": sel.tolist(), "loss": t_test.loss.tolist(), "control_loss": c_test.loss.tolist(),
        "train_accuracy": t_train.accuracy.tolist(), "majority": [majority] * len(layers)})
    long = pl.concat([
        pl.DataFrame({"layer": layers, "series": [name] * len(layers), "accuracy": vals})
        for name, vals in (("task", t_test.accuracy.tolist()), ("control", c_test.accuracy.tolist()),
                           ("selectivity", sel.tolist()), ("majority", [majority] * len(layers)))])
    best = int(t_test.accuracy.argmax())
    best_sel = int(sel.argmax())
    tensors = {"accuracy": t_test.accuracy.float(), "control_accuracy": c_test.accuracy.float(),
               "selectivity": sel.float(), "loss": t_test.loss.float()}
    for tag, f in (("task", task_fit), ("control", ctrl_fit)):
        tensors.update({f"{tag}_W": f.W.float(), f"{tag}_b": f.b.float(), f"{tag}_mean": f.mean.float(),
                        f"{tag}_std": f.std.float()})
        if f.W2 is not None:
            tensors.update({f"{tag}_W2": f.W2.float(), f"{tag}_b2": f.b2.float()})
    return Artifact(
        tensors=tensors,
        tables={"result": long, "per_layer": per_layer},
        data={"site": kind, "layers": layers, "method": method, "classes": lab.classes,
              "entries": lab.n, "test_entries": int(test.sum()), "rows": n_rows, "test_rows": int(test_row.sum()),
              "word_types": int(lab.type.max()) + 1,
              "control": "each word type gets a label drawn from the task's label distribution (Hewitt & Liang)",
              "convention": "accuracy on held-out rows; selectivity = task accuracy - control accuracy; features "
                            "standardised on the training rows",
              "chart": {"x": "layer", "y": "accuracy", "color": "series",
                        "title": f"{method} probe on {kind}: task, control and selectivity per layer"},
              "headline": [
                  {"label": "best task accuracy", "value": float(t_test.accuracy[best]),
                   "detail": f"layer {layers[best]} (control {float(c_test.accuracy[best]):.3g}, majority {majority:.3g})"},
                  {"label": "best selectivity", "value": float(sel[best_sel]), "detail": f"layer {layers[best_sel]}"},
                  {"label": "held-out entries", "value": int(test.sum()),
                   "detail": f"{int(test_row.sum())} of {n_rows} rows, {int(lab.type.max()) + 1} word types"}]},
    )
