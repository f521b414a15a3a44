"""`compare atp with heads`: two results side by side, with their rank and linear correlations.

Made for attribution patching against activation patching (`attribute heads ...` vs `patch heads
...`), but works for any two results whose main tables share key columns: the rows are joined on
the columns both have among layer, position, head, neuron, src, dst (positions written as a
word, "all" / "last", count as a key too), and the value compared is each table's `effect` column
(else `score`, else `contribution`). The two value columns are named after the producing
operators ("attribute", "patch"; "_2" is appended when both are the same operator).

Output: "result" (keys, unit label, the two values) drawn as a scatter with the y = x diagonal;
"summary" and data: Spearman's rho (Pearson correlation of average ranks), Pearson's r, the
number of rows joined, and the top-k overlap of the units ranked by |value| (k = `top`).
"""

from __future__ import annotations

from typing import Any

import polars as pl

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param

KEYS = ("layer", "position", "head", "neuron", "src", "dst")
VALUES = ("effect", "score", "contribution")


def value_column(df: pl.DataFrame) -> str:
    for c in VALUES:
        if c in df.columns:
            return c
    raise ValueError(f"compare: a result needs one of the columns {', '.join(VALUES)}; it has {df.columns}")


def pearson(x: pl.Series, y: pl.Series) -> float:
    df = pl.DataFrame({"x": x.cast(pl.Float64), "y": y.cast(pl.Float64)}).drop_nulls().filter(
        pl.col("x").is_finite() & pl.col("y").is_finite())
    if df.height < 2:
        return float("nan")
    r = df.select(pl.corr("x", "y")).item()
    return float("nan") if r is None else float(r)


def spearman(x: pl.Series, y: pl.Series) -> float:
    """Spearman's rho: Pearson's r of the average ranks (ties share their mean rank).

    >>> round(spearman(pl.Series([1.0, 2.0, 3.0, 4.0]), pl.Series([10.0, 20.0, 40.0, 30.0])), 3)
    0.8
    """
    return pearson(x.rank("average"), y.rank("average"))


def _plan(params: dict, b: Any) -> Any:
    first, second = params["result"], params["metric"]
    if isinstance(first, list) or isinstance(second, list):
        raise ValueError("compare takes results with one node each (not sweeps)")
    a, c = first.op, second.op
    labels = [a, c if c != a else f"{c}_2"]
    return b.node("compare", {**params, "labels": labels})


@spec.operator(
    "compare",
    version=1,
    verb="compare",
    params=[
        Param("result", spec.RESULT, doc="the first result (e.g. attribution patching)"),
        Param("metric", spec.RESULT, doc="`with NAME`: the result to compare it with (e.g. activation patching)"),
        Param("top", int, 5, minimum=1, doc="k of the top-k overlap"),
        Param("labels", list, None, doc="names of the two value columns (set by the plan: the producing operators)"),
    ],
    output="table",
    plan=_plan,
    joins=("result", "metric"),
    default_chart="scatter",
    example=("atp = attribute heads in all layers of m on ioi with logit_diff\n"
             "heads = patch heads in all layers of m on ioi with logit_diff\n"
             "compare atp with heads"),
)
def run(inputs: dict[str, Artifact], params: dict, ctx: Any) -> Artifact:
    """Join two results on their shared keys; Spearman and Pearson correlation of their values."""
    a, b = inputs["result"].tables["result"], inputs["metric"].tables["result"]
    labels = list(params["labels"] or ["first", "second"])  # set by the plan: the producing ops' names
    keys = [k for k in KEYS if k in a.columns and k in b.columns and a.schema[k] == b.schema[k]]
    if not keys:
        raise ValueError(f"compare: the results share no key column (first has {a.columns}, second {b.columns})")
    va, vb = value_column(a), value_column(b)
    joined = a.select(keys + [pl.col(va).alias(labels[0])]).join(
        b.select(keys + [pl.col(vb).alias(labels[1])]), on=keys, how="inner")
    unit = pl.concat_str([pl.lit(f"{k}=") + pl.col(k).cast(pl.Utf8) for k in keys], separator=" ")
    joined = joined.with_columns(unit.alias("unit")).select(["unit", *keys, *labels])
    x, y = joined.get_column(labels[0]), joined.get_column(labels[1])
    k = max(1, int(params["top"]))
    top_a = set(joined.sort(pl.col(labels[0]).abs(), descending=True).head(k).get_column("unit").to_list())
    top_b = set(joined.sort(pl.col(labels[1]).abs(), descending=True).head(k).get_column("unit").to_list())
    summary = {"spearman": spearman(x, y), "pearson": pearson(x, y), "n": joined.height,
               f"top{k}_overlap": len(top_a & top_b) / min(k, max(joined.height, 1))}
    hints = {"x": labels[0], "y": labels[1], "diagonal": True}
    if "layer" in keys:
        hints["color"] = "layer"
    return Artifact(
        tables={"result": joined, "summary": pl.DataFrame({k2: [v] for k2, v in summary.items()})},
        data={**summary, "keys": keys, "labels": labels, "values": [va, vb], "chart": hints,
              "headline": [{"label": "Spearman \u03c1", "value": summary["spearman"], "detail": "rank correlation"},
                           {"label": "Pearson r", "value": summary["pearson"]},
                           {"label": f"top-{k} overlap", "value": summary[f"top{k}_overlap"],
                            "detail": f"share of the {k} largest |{labels[0]}| among the {k} largest |{labels[1]}|"},
                           {"label": "units joined", "value": joined.height}]},
    )
