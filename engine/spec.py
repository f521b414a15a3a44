"""The operator API: the one module that `lang`, `engine` and `stdlib` all share.

Everything here is data. The stdlib fills the registries (operators, model sources,
dataset generators, metrics, chart kinds) where each thing is defined, with the
decorators below; `lang` reads them to check a study before anything runs; the
engine reads them to plan and execute. Nothing here imports torch, lark or dask.

A statement's clauses map onto an operator's parameters by a fixed vocabulary, so a
new operator only declares parameters and never touches the grammar:

=================  ==================  ====================================
clause             parameter name      example
=================  ==================  ====================================
first bare word    ``component``       ``patch heads ...``
``in LAYERS``      ``layers``          ``in layer 9``, ``in all layers``
``at POSITIONS``   ``positions``       ``at every position``
``of NAME``        ``model``           ``of gpt2``
``on NAME``        ``dataset``         ``on ioi``
``with NAME``      ``metric``          ``with logit_diff``
``using NAME``     ``method``          ``using mean``
``over NAME``      ``corpus``          ``over web`` (a declared corpus)
bare word ``w``    the param whose     ``noising`` -> ``direction="noising"``
                   ``choices`` has w
``w VALUE``        ``w``               ``threshold 0.01``
``k=VALUE``        ``k``               ``chunk=16``
=================  ==================  ====================================
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()

# Parameter types. Plain Python types for scalars, plus these tags for the structured ones.
LAYERS = "layers"  # resolved to a tuple of ints, or the string "all"
POSITIONS = "positions"  # "all" (every position at once), "each" (every position separately),
#                          "last", or a tuple of ints
MODEL = "model"  # a reference to a declared model; becomes an input node
DATASET = "dataset"  # a reference to a declared dataset; becomes an input node
METRIC = "metric"  # a name in METRICS
RESULT = "result"  # a reference to another named statement's result
CORPUS = "corpus"  # a reference to a declared corpus (`over NAME`); becomes an input node like a dataset
CORPUS_PREFIX = "corpus."  # corpus sources live in DATASETS as "corpus.<source>"


@dataclass(frozen=True)
class Param:
    """One parameter of an operator (or dataset generator, or model source).

    Attributes:
        name: the parameter name; clause names per the table in the module docstring.
        type: int | float | str | bool | one of the tags LAYERS, POSITIONS, MODEL, DATASET,
            METRIC, RESULT.
        default: REQUIRED, or the default value.
        choices: allowed values for a str parameter (also how bare-word flags are matched).
        keyed: whether it is part of the node key. True for anything that can change numbers
            (dtype, seed, padding side ...); False only for execution details (chunk size,
            progress, log level). Decide explicitly for each parameter. Keyed or not, `run`
            receives every declared parameter with its default filled in: keying is a
            separate question from delivery. Changing what a key holds means bumping the
            operator's version.
        sweepable: a list or range value makes a sweep: one node per point.
        doc: one line.
    """

    name: str
    type: Any
    default: Any = REQUIRED
    choices: tuple | None = None
    keyed: bool = True
    sweepable: bool = False
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass(frozen=True)
class Artifact:
    """What an operator returns and what the store keeps. Safe formats only.

    tensors -> one safetensors file; tables -> one parquet file each (polars DataFrames);
    data -> one JSON file (small values, Vega-Lite specs). Nothing is ever pickled.
    """

    tensors: Mapping[str, Any] = field(default_factory=dict)  # name -> torch.Tensor
    tables: Mapping[str, Any] = field(default_factory=dict)  # name -> polars.DataFrame
    data: Mapping[str, Any] = field(default_factory=dict)  # JSON-serialisable
    # The store entry's directory when the artifact was read from the store (None when built in
    # memory). Not part of its value: it lets an operator re-open a large input's safetensors file
    # window by window (the activation store) instead of keeping every page it touched mapped.
    path: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class OpSpec:
    """An operator: its statement form, parameters, version and implementation.

    `run(inputs, params, ctx) -> Artifact` is pure: same inputs and params, same numbers.
    `inputs` maps input names to loaded `Artifact`s; `params` holds plain values.
    `plan(params, builder) -> Node`, when given, expands a statement into plan nodes (e.g.
    a patch statement that shares activation-capture nodes with others); without it the
    statement becomes one node of this op whose inputs are its MODEL/DATASET/RESULT params.
    Bump `version` whenever the numbers `run` produces change.
    """

    name: str
    version: int
    params: tuple[Param, ...]
    run: Callable[..., Artifact]
    verb: str | None = None  # statement verb; None for internal ops (capture, chart, ...)
    components: tuple[str, ...] = ()  # allowed target words for `component`
    output: str = "table"  # informal kind, for docs and default charts
    plan: Callable[..., Any] | None = None
    uses_model: bool = False  # model-bound nodes are serialised per device
    default_chart: str | None = None
    requires: frozenset[str] = frozenset()  # dataset capabilities it needs (e.g. {"labels"})
    model_features: frozenset[str] = frozenset()  # model features it needs (keys of FEATURES)
    doc: str = ""
    example: str | None = None  # a runnable statement, checked by tests
    module: str = ""
    # validate(params) -> None, called by the checker with each sweep point's values (defaults filled
    # in; models, datasets and results as references): raises ValueError for a mistake that no single
    # parameter's type or choices catch (a combination, a range), optionally with `.message`,
    # `.option` (the parameter to point the caret at) and `.hint`, like DatasetSpec.prepare.
    validate: Callable[[dict], None] | None = None

    def param(self, name: str) -> Param | None:
        for p in self.params:
            if p.name == name:
                return p
        return None

    def complete(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """`params` with every declared parameter's default filled in (what `run` receives).

        >>> spec = OpSpec("demo", 1, (Param("a", int), Param("b", int, 2)), run=lambda *a: None)
        >>> spec.complete({"a": 1})
        {'b': 2, 'a': 1}
        """
        return {**{p.name: p.default for p in self.params if not p.required}, **params}

    def execute(self, inputs: Mapping[str, Any], params: Mapping[str, Any], ctx: Any) -> Artifact:
        """`run` with every default filled in: how the engine (and a test) calls an operator."""
        return self.run(dict(inputs), self.complete(params), ctx)


# Model features an operator may need (OpSpec.model_features); the checker refuses a statement on
# a model without one, with these words as the reason.
FEATURES: dict[str, str] = {
    "causal": "a causal language model (next-token predictions)",
    "lm_head": "an unembedding (a language-model head that gives logits)",
    "residual_stream": "a pre-norm residual stream that ends in a final norm and the unembedding "
                       "(every block adds to it, so the final stream is the sum of every write)",
}


@dataclass(frozen=True)
class ModelInfo:
    """What the checker (and every operator) needs to know about a model before loading its weights.

    d_head defaults to d_model / n_heads and n_kv_heads to n_heads (no grouped-query attention).
    `features` are keys of FEATURES.
    """

    arch: str  # architecture table name: "gpt2", "neox", "llama", "bert", ...
    n_layers: int
    n_heads: int
    d_model: int
    d_vocab: int
    n_ctx: int | None = None
    d_head: int = 0
    n_kv_heads: int = 0
    d_mlp: int = 0
    parallel: bool = False  # attention and MLP read the same input (GPT-NeoX parallel residual)
    features: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not self.d_head:
            object.__setattr__(self, "d_head", self.d_model // self.n_heads)
        if not self.n_kv_heads:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        object.__setattr__(self, "features", frozenset(self.features))

    @property
    def dims(self) -> dict[str, int]:
        """Axis sizes by name (what site shapes are computed from)."""
        return {"n_layers": self.n_layers, "n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads,
                "d_model": self.d_model, "d_head": self.d_head, "d_mlp": self.d_mlp, "d_vocab": self.d_vocab}

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["features"] = sorted(self.features)
        return out


@dataclass(frozen=True)
class ModelSource:
    """`model NAME = <kind> "REF"`: how to describe, fingerprint and load one kind of model.

    describe(ref, options) -> ModelInfo: cheap (reads config only); raises LookupError with a
        message that says how to get the weights when the model is absent.
    locate(ref, options) -> str: the local directory the weights live in.
    load(model_data, device) -> the loaded model adapter; `model_data` is a `model` node's
        artifact data (path, options, fingerprint ...). Called by `Context.model`, once per
        process and device.
    """

    kind: str  # "hf", "zoo"
    describe: Callable[[str, Mapping[str, Any]], ModelInfo]
    locate: Callable[[str, Mapping[str, Any]], str]
    load: Callable[[Mapping[str, Any], str], Any]
    options: tuple[Param, ...] = ()
    names: Callable[[], list[str]] | None = None  # known refs, for did-you-mean
    doc: str = ""


@dataclass(frozen=True)
class DatasetSpec:
    """`dataset NAME = GENERATOR(k=v, ...)`: a built-in generator.

    provides: capabilities the checker uses, e.g. {"answers", "corrupted", "labels"}.
    run(inputs, params, ctx) -> Artifact with the dataset's tensors/tables.
    needs_model: the generator tokenises with the model's tokenizer (the model node is an input).
    """

    name: str
    version: int
    params: tuple[Param, ...]
    run: Callable[..., Artifact]
    provides: frozenset[str] = frozenset()
    needs_model: bool = True
    doc: str = ""
    module: str = ""
    # Optional, for generators whose declaration depends on something outside the study text (a file):
    # prepare(params) -> params is called by the checker with the declared params (defaults filled);
    #   it validates them (raising ValueError, optionally with `.message`, `.option` naming the option
    #   to point at, and `.hint`) and may add derived keyed params, e.g. a file's content hash, which
    #   then key the dataset node.
    # provides_for(params) -> capabilities of this one declaration (default: `provides`).
    prepare: Callable[[dict], dict] | None = None
    provides_for: Callable[[dict], frozenset[str]] | None = None
    example: str | None = None  # a declaration `study check` accepts (the reference shows it; a test checks it)

    def provides_of(self, params: Mapping[str, Any]) -> frozenset[str]:
        return frozenset(self.provides_for(dict(params)) if self.provides_for else self.provides)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    requires: frozenset[str] = frozenset()  # dataset capabilities it needs
    doc: str = ""


@dataclass(frozen=True)
class ChartSpec:
    """`plot NAME as KIND`: `render(artifact, title) -> dict` returns a Vega-Lite spec."""

    kind: str
    render: Callable[[Artifact, str | None], dict]
    doc: str = ""


OPS: dict[str, OpSpec] = {}
MODEL_SOURCES: dict[str, ModelSource] = {}
DATASETS: dict[str, DatasetSpec] = {}
METRICS: dict[str, MetricSpec] = {}
CHARTS: dict[str, ChartSpec] = {}


def _register(registry: dict, key: str, value: Any) -> Any:
    old = registry.get(key)
    if old is not None and getattr(old, "module", None) != getattr(value, "module", None):
        raise ValueError(f"{key!r} registered twice ({old.module} and {value.module})")
    registry[key] = value
    return value


def operator(
    name: str,
    *,
    version: int,
    params: Iterable[Param] = (),
    verb: str | None = None,
    **kw: Any,
) -> Callable[[Callable[..., Artifact]], Callable[..., Artifact]]:
    """Register the decorated `run(inputs, params, ctx)` as operator `name`.

    >>> @operator("demo_double", version=1, params=[Param("x", int, 1)])
    ... def run(inputs, params, ctx):
    ...     return Artifact(data={"y": 2 * params["x"]})
    >>> OPS["demo_double"].run({}, {"x": 3}, None).data["y"]
    6
    >>> _ = OPS.pop("demo_double")
    """

    def deco(fn: Callable[..., Artifact]) -> Callable[..., Artifact]:
        spec = OpSpec(
            name=name,
            version=version,
            params=tuple(params),
            run=fn,
            verb=verb,
            doc=kw.pop("doc", None) or (fn.__doc__ or "").strip(),
            module=fn.__module__,
            **kw,
        )
        _register(OPS, name, spec)
        return fn

    return deco


def dataset(name: str, *, version: int, params: Iterable[Param] = (), **kw: Any):
    def deco(fn: Callable[..., Artifact]) -> Callable[..., Artifact]:
        spec = DatasetSpec(
            name=name,
            version=version,
            params=tuple(params),
            run=fn,
            doc=kw.pop("doc", None) or (fn.__doc__ or "").strip(),
            module=fn.__module__,
            **kw,
        )
        _register(DATASETS, name, spec)
        return fn

    return deco


def corpus(source: str, *, version: int, params: Iterable[Param] = (), **kw: Any):
    """Register a corpus source: `corpus NAME = SOURCE "REF" k=v ...`. A corpus is a dataset of
    packed text rows (tensors input_ids, attention_mask; capability "text"), registered in DATASETS
    as "corpus.SOURCE", so it is planned, keyed and checked like any dataset; its first param takes
    the declaration's string. Operators read it through a CORPUS param (`over NAME`) or, for
    evaluation on text, through a DATASET param (`on NAME`)."""
    kw.setdefault("provides", frozenset({"text"}))
    return dataset(CORPUS_PREFIX + source, version=version, params=params, **kw)


def is_corpus(generator: str) -> bool:
    return generator.startswith(CORPUS_PREFIX)


def register_model_source(src: ModelSource) -> ModelSource:
    MODEL_SOURCES[src.kind] = src
    return src


def register_metric(m: MetricSpec) -> MetricSpec:
    METRICS[m.name] = m
    return m


def chart(kind: str, doc: str = ""):
    def deco(fn: Callable[[Artifact, str | None], dict]):
        CHARTS[kind] = ChartSpec(kind=kind, render=fn, doc=doc or (fn.__doc__ or "").strip())
        return fn

    return deco


def verbs() -> dict[str, list[OpSpec]]:
    """Statement verbs -> the operators that use them (a verb may have several ops,
    told apart by their component words, e.g. `train toy` vs `train model`)."""
    out: dict[str, list[OpSpec]] = {}
    for spec in OPS.values():
        if spec.verb:
            out.setdefault(spec.verb, []).append(spec)
    return out


def suggest(word: str, candidates: Iterable[str]) -> str | None:
    """The closest candidate, for "did you mean ...?" messages.

    >>> suggest("logit_dif", ["logit_diff", "kl", "prob"])
    'logit_diff'
    """
    got = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return got[0] if got else None
