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
import math
import os
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

    What values are allowed is declared here too, once, and checked by `study check` for every
    value written in a study (each point of a sweep, each element of a list param), with the span:
        minimum, maximum: inclusive bounds (e.g. minimum=1 for a count);
        above, below: exclusive bounds (e.g. above=0 for a learning rate, below=1 for a sparsity);
        ceiling: a sane size; a larger value is refused unless ceilings are lifted
            (`study ... --no-ceilings` or MECHSTUDY_NO_CEILINGS=1), because it would run for hours
            or exhaust memory rather than fail;
        nonempty: a list value needs at least one element.
    `PROBABILITY` (minimum 0, maximum 1) and `COUNT` (minimum 1) spell the common ones:
    `Param("p", float, 0.5, **PROBABILITY)`.
    """

    name: str
    type: Any
    default: Any = REQUIRED
    choices: tuple | None = None
    keyed: bool = True
    sweepable: bool = False
    doc: str = ""
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    below: float | None = None
    ceiling: float | None = None
    nonempty: bool = False

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def bounded(self) -> bool:
        return any(x is not None for x in (self.minimum, self.maximum, self.above, self.below, self.ceiling)) or self.nonempty

    def problem(self, value: Any) -> str | None:
        """What is wrong with one value of this parameter (an element, for a list param), or None.
        A value over the ceiling is a problem only while ceilings are on (`ceilings_lifted`).

        >>> Param("n", int, 8, minimum=1, ceiling=1000).problem(0)
        'must be at least 1'
        >>> Param("sparsity", float, 0.9, minimum=0, below=1).problem(1.0)
        'must be less than 1'
        """
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if isinstance(value, float) and math.isnan(value):
            return "must be a number (not NaN)"
        if self.minimum is not None and value < self.minimum:
            return f"must be at least {_num(self.minimum)}"
        if self.above is not None and value <= self.above:
            return f"must be greater than {_num(self.above)}"
        if self.maximum is not None and value > self.maximum:
            return f"must be at most {_num(self.maximum)}"
        if self.below is not None and value >= self.below:
            return f"must be less than {_num(self.below)}"
        if self.ceiling is not None and value > self.ceiling and not ceilings_lifted():
            return f"is over the ceiling of {_num(self.ceiling)}"
        return None

    def limits(self) -> str:
        """The allowed values in words, for docs ("at least 1, at most 100,000 (ceiling)")."""
        parts = []
        if self.minimum is not None:
            parts.append(f">= {_num(self.minimum)}")
        if self.above is not None:
            parts.append(f"> {_num(self.above)}")
        if self.maximum is not None:
            parts.append(f"<= {_num(self.maximum)}")
        if self.below is not None:
            parts.append(f"< {_num(self.below)}")
        if self.ceiling is not None:
            parts.append(f"<= {_num(self.ceiling)} unless --no-ceilings")
        if self.nonempty:
            parts.append("not empty")
        return ", ".join(parts)


class OptionError(ValueError):
    """A mistake in the options of a declaration or statement, raised by the checker's hooks
    (`DatasetSpec.prepare`, `DatasetSpec.fits`, `OpSpec.validate`): `message`, the `option` to put the
    caret on, and a `hint`."""

    def __init__(self, message: str, option: str | None = None, hint: str | None = None) -> None:
        super().__init__(message + (f"; {hint}" if hint else ""))
        self.message, self.option, self.hint = message, option, hint


PROBABILITY: dict[str, Any] = {"minimum": 0.0, "maximum": 1.0}
COUNT: dict[str, Any] = {"minimum": 1}
CEILING_HINT = ("a size this large would run for hours or run out of memory rather than fail; if you mean "
                "it, run with --no-ceilings (or set MECHSTUDY_NO_CEILINGS=1)")


def ceilings_lifted() -> bool:
    """Whether sizes over a parameter's `ceiling` are allowed (`--no-ceilings`, MECHSTUDY_NO_CEILINGS=1)."""
    return os.environ.get("MECHSTUDY_NO_CEILINGS", "").strip().lower() not in ("", "0", "false", "no")


def _num(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() and abs(x) >= 10_000 else (str(int(x)) if float(x).is_integer() else repr(x))


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
    # The key columns of the main table for given params (e.g. ("layer", "head")): lets the checker
    # tell, before anything runs, whether two results can be joined row by row.
    result_keys: Callable[[Mapping[str, Any]], tuple[str, ...]] | None = None
    # Two RESULT params whose main tables the op joins row by row (`compare A with B`): the checker
    # refuses one result twice, a sweep, and results whose `result_keys` differ.
    joins: tuple[str, str] | None = None
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
    prepare() -> None: import the libraries `load` and tokenizers need; the engine calls it once,
        before running nodes that compute, so no node's time includes a library's import.
    """

    kind: str  # "hf", "zoo"
    describe: Callable[[str, Mapping[str, Any]], ModelInfo]
    locate: Callable[[str, Mapping[str, Any]], str]
    load: Callable[[Mapping[str, Any], str], Any]
    options: tuple[Param, ...] = ()
    names: Callable[[], list[str]] | None = None  # known refs, for did-you-mean
    doc: str = ""
    prepare: Callable[[], None] | None = None


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
    # fits(params, model_info) -> None, called by the checker for each statement that reads the dataset
    # with that statement's model: raises ValueError (with `.message`, `.option`, `.hint`) when the
    # declaration cannot work with that model (sequences longer than its context, token ids past its
    # vocabulary) -- what no single option's limits can say.
    fits: Callable[[dict, ModelInfo], None] | None = None
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
# Component word -> (the ModelInfo.dims field its index counts, what a result table calls one unit),
# e.g. "neurons" -> ("d_mlp", "neuron"); filled by the stdlib's site vocabulary, read by the checker
# to refuse `neurons 100000..` on a model with 512.
COMPONENT_UNITS: dict[str, tuple[str, str]] = {}
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
