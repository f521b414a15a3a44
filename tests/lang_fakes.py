"""A small fake registry for the language tests (tests/test_lang_*.py).

The real stdlib operators are written elsewhere; these tests only need signatures. The
`registry` fixture swaps every registry in `engine.spec` for these with monkeypatch.
"""

from __future__ import annotations

import pytest

from mechstudy.engine import spec
from mechstudy.engine.spec import (
    DATASET, LAYERS, METRIC, MODEL, POSITIONS, RESULT, ChartSpec, DatasetSpec, MetricSpec, ModelInfo,
    ModelSource, OpSpec, Param,
)

LM = frozenset({"causal", "lm_head", "residual_stream"})
GPT2 = ModelInfo(arch="gpt2", n_layers=12, n_heads=12, d_model=768, d_vocab=50257, n_ctx=1024, features=LM)
TINY = ModelInfo(arch="gpt2", n_layers=2, n_heads=4, d_model=64, d_vocab=1000, features=LM)
BERT = ModelInfo(arch="bert", n_layers=6, n_heads=12, d_model=384, d_vocab=30522, n_ctx=512)


def _run(inputs, params, ctx):  # never called: the language only reads signatures
    raise AssertionError("not run in language tests")


def _op(name, params, verb=None, components=(), **kw):
    return OpSpec(name=name, version=1, params=tuple(params), run=_run, verb=verb or name,
                  components=tuple(components), module="tests.lang_fakes", **kw)


def ops() -> dict[str, OpSpec]:
    common = [Param("model", MODEL), Param("dataset", DATASET), Param("metric", METRIC)]
    out = [
        _op("patch", [
            Param("component", str),
            Param("component_index", int, None, sweepable=True),
            Param("layers", LAYERS, "all"),
            Param("positions", POSITIONS, "all"),
            *common,
            Param("direction", str, "denoising", choices=("denoising", "noising")),
            Param("chunk", int, 16, keyed=False),
        ], components=("heads", "resid", "attn", "mlp", "neurons"), model_features=frozenset({"causal", "lm_head"})),
        _op("evaluate", common),
        _op("discover", [
            Param("component", str), *common,
            Param("threshold", float, 0.01, sweepable=True),
            Param("method", str, "acdc", choices=("acdc", "eap")),
        ], components=("circuit",)),
        _op("sweep_layers", [Param("component", str), Param("layers", LAYERS, sweepable=True), *common],
            verb="scan", components=("resid",)),
        _op("train_toy", [Param("component", str), Param("steps", int, 100), Param("lr", float, 1e-3),
                          Param("sparsity", list, [0.0])], verb="train", components=("toy",)),
        # no `component` param: the word `model` only picks this op among the verb's
        _op("train_lm", [Param("method", str, choices=("attn2", "mini")), Param("steps", int, None)],
            verb="train", components=("model",)),
        _op("train_probe", [Param("component", str), Param("model", MODEL), Param("dataset", DATASET),
                            Param("layers", LAYERS)], verb="train", components=("probe",)),
        _op("compare", [Param("a", RESULT), Param("b", RESULT), Param("label", str, "")]),
        _op("trace", [Param("component", str, "path"), Param("sender", dict), Param("receiver", dict), *common],
            components=("path", "heads", "mlp")),
    ]
    return {o.name: o for o in out}


def _describe(ref, options):
    if ref == "gpt2":
        return GPT2
    if ref == "tiny":
        return TINY
    if ref == "bert":
        return BERT
    raise LookupError(f"model {ref!r} is not in the local cache; download it with `hf download {ref}`")


def model_sources() -> dict[str, ModelSource]:
    opts = (Param("dtype", str, "float32", choices=("float32", "bfloat16", "float16")),
            Param("revision", str, "main"))
    return {k: ModelSource(kind=k, describe=_describe, locate=lambda r, o: f"/models/{r}", load=_run, options=opts,
                           names=lambda: ["gpt2", "tiny", "bert"]) for k in ("hf", "zoo")}


def datasets() -> dict[str, DatasetSpec]:
    return {
        "ioi": DatasetSpec("ioi", 1, (Param("n", int, 128), Param("seed", int, 0)), _run,
                           provides=frozenset({"answers", "corrupted"})),
        "sentiment": DatasetSpec("sentiment", 1, (Param("n", int, 64), Param("split", str, "train")), _run,
                                 provides=frozenset({"labels"})),
    }


def file_generator() -> DatasetSpec:
    return DatasetSpec("file", 1, (Param("path", str), Param("text", str, "text"), Param("label", str, None)),
                       _run, provides=frozenset({"labels"}))


def metrics() -> dict[str, MetricSpec]:
    return {
        "logit_diff": MetricSpec("logit_diff", frozenset({"answers"})),
        "kl": MetricSpec("kl"),
        "prob": MetricSpec("prob", frozenset({"answers"})),
    }


def charts() -> dict[str, ChartSpec]:
    return {k: ChartSpec(k, lambda a, t: {}) for k in ("heatmap", "line")}


@pytest.fixture
def registry(monkeypatch):
    """Install the fake registries; returns the `spec` module for further tweaks."""
    monkeypatch.setattr(spec, "OPS", ops())
    monkeypatch.setattr(spec, "MODEL_SOURCES", model_sources())
    monkeypatch.setattr(spec, "DATASETS", datasets())
    monkeypatch.setattr(spec, "METRICS", metrics())
    monkeypatch.setattr(spec, "CHARTS", charts())
    return spec


def install() -> None:
    """Install the fakes for good (for scripts and benchmarks, not tests)."""
    spec.OPS, spec.MODEL_SOURCES, spec.DATASETS = ops(), model_sources(), datasets()
    spec.METRICS, spec.CHARTS = metrics(), charts()
