"""The site vocabulary (one record per site kind) and the per-architecture tables that place sites
on Hugging Face modules.

`SITE_KINDS` is the only place a kind of activation is described: its TransformerLens name, its
axes (hence its shape, head axis, sequence axes and unit), the statement words that name it,
its default positions in a sweep, and what may be done with it (written, differentiated, written
back into the residual stream, read as an attention input). Patching, ablation, attribution,
path patching, capture, gradients and every later operator derive what they need from these
records (`kind`, `component`, `words`); nothing restates them.

A `Site` names one activation (`Site(9, "z", head=3)` is head 3's slice of `blocks.9.attn.hook_z`;
`Site(None, "ln_final")` the final norm's output). An `ArchTable` says, for one family of Hugging
Face `model_type`s, which native module carries each site kind and everything else operators need
about the architecture (final norm, attention and MLP norms, the attention module, parallel or
sequential blocks, which HF class loads it, what it supports). One table per architecture, one
file each under `archs/`, registered here by `model_type`; nothing dispatches on architecture
names with `if` ladders. Nothing here imports torch: the checker reads tables before any model
loads.

>>> Site(9, "z", head=3).name
'blocks.9.attn.hook_z'
>>> str(Site(9, "z", head=3))
'blocks.9.attn.hook_z[3]'
>>> Site.parse("blocks.2.hook_resid_pre")
Site(layer=2, kind='resid_pre', head=None)
>>> Site.parse("ln_final.hook_normalized")
Site(layer=None, kind='ln_final', head=None)
>>> component("heads").kind.name, component("heads").unit, KINDS["k"].unit_axis
('z', 'head', 'kv_head')
>>> KINDS["pattern"].shape({"n_heads": 4}, batch=2, seq=5, head=1)
(2, 5, 5)
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from mechstudy.engine import spec as _spec
from mechstudy.engine.spec import ModelInfo

# Axis name -> the ModelInfo field giving its size ("seq" is the input's length, "one" is 1).
AXIS_SIZE = {"d_model": "d_model", "d_head": "d_head", "d_mlp": "d_mlp", "d_vocab": "d_vocab",
             "head": "n_heads", "kv_head": "n_kv_heads"}
# Axes that enumerate units a sweep visits one at a time, and what a result table calls a unit.
UNIT_AXES = {"head": "head", "kv_head": "head", "d_mlp": "neuron"}


@dataclass(frozen=True)
class SiteKind:
    """One kind of activation site.

    Attributes:
        name: the kind ("z", "resid_pre", ...).
        hook: the TransformerLens hook name, with `{layer}` for per-layer kinds.
        axes: the activation's axes after the batch axis, e.g. ("seq", "head", "d_head"); sizes
            come from the model (`AXIS_SIZE`), so the shape, the head axis, the sequence axes and
            the unit swept by a statement all derive from this one tuple.
        words: the statement words that name it (`patch heads ...`); the first is its usual name.
        positions: default positions of a statement on it: "all" (per-unit kinds: a head is patched
            everywhere at once) or "each" (whole-width kinds: one variant per position).
        write: how a value is written: "self" (at the site), another kind (a pattern is written
            exactly through z = pattern @ v), or None (read only).
        grad: a metric's gradient can be read here (an additive zero edit on the site).
        residual_write: its output is added to the residual stream (a path-patching sender).
        attn_input: it is one of attention's q, k, v inputs (a path-patching receiver).
        stream: it is a state of the residual stream itself (what lenses decode, steering vectors
            are added to, probes and dictionaries are usually trained on).
        per_layer: one site per layer (False for model-level sites such as the final norm).
        doc: one line, for the generated reference.
    """

    name: str
    hook: str
    axes: tuple[str, ...]
    words: tuple[str, ...] = ()
    positions: str = "each"
    write: str | None = "self"
    grad: bool = True
    residual_write: bool = False
    attn_input: bool = False
    stream: bool = False
    per_layer: bool = True
    doc: str = ""

    @property
    def unit_axis(self) -> str | None:
        """The axis a statement sweeps unit by unit ("head", "kv_head", "d_mlp"), if any."""
        return next((a for a in self.axes if a in UNIT_AXES), None)

    @property
    def unit(self) -> str | None:
        """What a result table calls one unit ("head", "neuron"), or None for a whole-site kind."""
        return UNIT_AXES.get(self.unit_axis) if self.unit_axis else None

    @property
    def head_axis(self) -> int | None:
        """Index of the head axis in the full activation (batch first), if any."""
        for i, a in enumerate(self.axes):
            if a in ("head", "kv_head"):
                return i + 1
        return None

    @property
    def seq_axes(self) -> tuple[int, ...]:
        """Indices of the sequence axes in the full activation (a pattern has two)."""
        return tuple(i + 1 for i, a in enumerate(self.axes) if a == "seq")

    def size(self, axis: str, dims: Mapping[str, int], seq: int) -> int:
        if axis == "seq":
            return seq
        if axis == "one":
            return 1
        return int(dims[AXIS_SIZE[axis]])

    def shape(self, dims: Mapping[str, int], batch: int, seq: int, head: int | None = None) -> tuple[int, ...]:
        """The activation's shape for a [batch, seq] input; with `head` set the head axis is dropped."""
        full = (batch, *(self.size(a, dims, seq) for a in self.axes))
        if head is not None:
            ax = self.head_axis
            full = full[:ax] + full[ax + 1:]
        return full

    def n_units(self, dims: Mapping[str, int]) -> int:
        """Units per layer (heads, key/value heads or neurons); 1 for a whole-site kind."""
        ax = self.unit_axis
        return int(dims[AXIS_SIZE[ax]]) if ax else 1


def _kinds(*kinds: SiteKind) -> dict[str, SiteKind]:
    return {k.name: k for k in kinds}


SITE_KINDS: dict[str, SiteKind] = _kinds(
    SiteKind("resid_pre", "blocks.{layer}.hook_resid_pre", ("seq", "d_model"), ("resid", "resid_pre"), stream=True,
             doc="the residual stream entering the block"),
    SiteKind("resid_mid", "blocks.{layer}.hook_resid_mid", ("seq", "d_model"), ("resid_mid",), stream=True,
             doc="the residual stream after attention (resid_pre + attn_out in pre-norm blocks)"),
    SiteKind("resid_post", "blocks.{layer}.hook_resid_post", ("seq", "d_model"), ("resid_post",), stream=True,
             doc="the residual stream leaving the block"),
    SiteKind("attn_out", "blocks.{layer}.hook_attn_out", ("seq", "d_model"), ("attn", "attn_out"),
             residual_write=True, doc="attention's output (all heads plus the output bias)"),
    SiteKind("mlp_out", "blocks.{layer}.hook_mlp_out", ("seq", "d_model"), ("mlp", "mlp_out"),
             residual_write=True, doc="the MLP's output"),
    SiteKind("z", "blocks.{layer}.attn.hook_z", ("seq", "head", "d_head"), ("heads", "z"), "all",
             residual_write=True, doc="each head's weighted sum of values (the output projection's input)"),
    SiteKind("q", "blocks.{layer}.attn.hook_q", ("seq", "head", "d_head"), ("q",), "all", attn_input=True,
             doc="each head's queries (before rotary embeddings)"),
    SiteKind("k", "blocks.{layer}.attn.hook_k", ("seq", "kv_head", "d_head"), ("k",), "all", attn_input=True,
             doc="each key/value head's keys (before rotary embeddings); key/value heads under GQA"),
    SiteKind("v", "blocks.{layer}.attn.hook_v", ("seq", "kv_head", "d_head"), ("v",), "all", attn_input=True,
             doc="each key/value head's values; key/value heads under GQA"),
    SiteKind("pattern", "blocks.{layer}.attn.hook_pattern", ("head", "seq", "seq"), ("pattern",), "all",
             write="z", grad=False, doc="attention probabilities [query, key] (eager attention)"),
    SiteKind("mlp_post", "blocks.{layer}.mlp.hook_post", ("seq", "d_mlp"), ("neurons", "mlp_post"), "all",
             doc="the MLP's hidden activations (its output projection's input)"),
    SiteKind("ln_final", "ln_final.hook_normalized", ("seq", "d_model"), per_layer=False,
             doc="the final norm's output, which the unembedding reads"),
    SiteKind("ln_final_scale", "ln_final.hook_scale", ("seq", "one"), per_layer=False, write=None, grad=False,
             doc="the final norm's scale (sigma of LayerNorm, root mean square of RMSNorm), for frozen-scale attributions"),
    SiteKind("logits", "unembed.hook_logits", ("seq", "d_vocab"), per_layer=False, write=None, grad=False,
             doc="the unembedding's output (only at the positions a forward asks logits for)"),
)
KINDS = SITE_KINDS  # short alias
LAYER_KINDS: tuple[str, ...] = tuple(k for k, v in SITE_KINDS.items() if v.per_layer)


@dataclass(frozen=True)
class Component:
    """A statement word resolved: the site kind it names (the word itself is kept for tables)."""

    word: str
    kind: SiteKind

    @property
    def unit(self) -> str | None:
        return self.kind.unit

    @property
    def positions(self) -> str:
        return self.kind.positions


WORDS: dict[str, SiteKind] = {w: k for k in SITE_KINDS.values() for w in k.words}


def component(word: str) -> Component:
    """The site kind a statement word names; ValueError listing the words otherwise."""
    try:
        return Component(word, WORDS[word])
    except KeyError:
        raise ValueError(f"unknown component {word!r}; known: {', '.join(WORDS)}") from None


def words(where: Callable[[SiteKind], bool] = lambda k: True) -> tuple[str, ...]:
    """The statement words of every kind that satisfies `where`, in vocabulary order.

    >>> words(lambda k: k.residual_write)
    ('attn', 'attn_out', 'mlp', 'mlp_out', 'heads', 'z')
    """
    return tuple(w for k in SITE_KINDS.values() if where(k) for w in k.words)


def default_positions(word: str, positions: Any) -> Any:
    """A statement's positions, or its component's default when none were given."""
    return component(word).positions if positions is None else positions


_NAME_RE = {
    re.compile("^" + re.escape(k.hook).replace(r"\{layer\}", r"(\d+)") + "$"): name for name, k in SITE_KINDS.items()
}


def _layer_key(layer: int | None) -> int:
    return 1 << 30 if layer is None else layer  # model-level sites sort after every layer


@dataclass(frozen=True)
class Site:
    """One activation site: a layer (None for a model-level kind), a kind and optionally one head.

    Shapes follow the kind's axes (`SiteKind.axes`), batch first; with `head` set, the head axis
    is dropped (z [B, S, H, d_head] -> [B, S, d_head]; pattern [B, H, S, S] -> [B, S, S]).
    """

    layer: int | None
    kind: str
    head: int | None = None

    def __post_init__(self) -> None:
        k = SITE_KINDS.get(self.kind)
        if k is None:
            raise ValueError(f"unknown site kind {self.kind!r}; known: {', '.join(SITE_KINDS)}")
        if self.head is not None and k.head_axis is None:
            raise ValueError(f"site kind {self.kind!r} has no heads")
        if (self.layer is None) == k.per_layer:
            raise ValueError(f"site kind {self.kind!r} " + ("needs a layer" if k.per_layer else "has no layer"))

    @property
    def spec(self) -> SiteKind:
        return SITE_KINDS[self.kind]

    @property
    def name(self) -> str:
        """The canonical TransformerLens-style name (without the head)."""
        return self.spec.hook.format(layer=self.layer)

    @property
    def whole(self) -> "Site":
        """The same site with every head."""
        return Site(self.layer, self.kind)

    def __str__(self) -> str:
        return self.name if self.head is None else f"{self.name}[{self.head}]"

    def __lt__(self, other: "Site") -> bool:
        return (_layer_key(self.layer), self.kind, self.head or -1) < (_layer_key(other.layer), other.kind, other.head or -1)

    @classmethod
    def parse(cls, name: str) -> "Site":
        """`blocks.9.attn.hook_z` or `blocks.9.attn.hook_z[3]` -> Site."""
        head = None
        m = re.match(r"^(.*)\[(\d+)\]$", name)
        if m:
            name, head = m.group(1), int(m.group(2))
        for rx, kind in _NAME_RE.items():
            hit = rx.match(name)
            if hit:
                return cls(int(hit.group(1)) if hit.groups() else None, kind, head)
        raise ValueError(f"not a site name: {name!r}")


def layer_sites(kind: str, layers: Iterable[int]) -> list[Site]:
    return [Site(l, kind) for l in layers]


# --------------------------------------------------------------------------- architecture tables


@dataclass(frozen=True)
class HookPoint:
    """Where one site kind lives on the native modules.

    Attributes:
        module: dotted module path with `{layer}`, e.g. "transformer.h.{layer}.attn.c_proj".
        on: "input" (forward pre-hook; positional argument 0 or the `hidden_states` keyword)
            or "output" (forward hook).
        index: element of a tuple output (attention modules return (out, weights)); None reads
            the output itself (or element 0 of a tuple).
        split_heads: view the last axis as [heads, d_head] (the kind's head axis says how many).
        writable: False for sites that can be read but not edited through a module boundary.
        eager_only: needs attn_implementation="eager" (attention probabilities).
        write_via: (kind, base_kind) when the site cannot be written where it is read: editing it
            to value v edits `kind` instead, to v - base (replace) or by the same delta (add). The
            residual after attention is `resid_pre + attn_out` in a sequential block, and the only
            module that sees it (the second layer norm) does not feed the residual branch.
        part: (i, n): the site is the i-th of n equal parts of the last axis: of the whole axis
            (GPT-2's fused `c_attn` output is [q | k | v]) or, with `per_head`, of each head's
            block (GPT-NeoX's `query_key_value` output is [q_h | k_h | v_h] for each head h);
            reads and edits touch that part only.
        derive: read a quantity computed from the module's tensor rather than the tensor itself
            ("norm_scale": the scale a LayerNorm / RMSNorm divides its input by); read only.
    """

    module: str
    on: str
    index: int | None = None
    split_heads: bool = False
    writable: bool = True
    eager_only: bool = False
    write_via: tuple[str, str] | None = None
    part: tuple[int, int] | None = None
    per_head: bool = False
    derive: str | None = None


def _never(cfg: Mapping[str, Any]) -> bool:
    return False


def _causal_lm(cfg: Mapping[str, Any]) -> str:
    return "AutoModelForCausalLM"


@dataclass(frozen=True)
class ArchTable:
    """Everything mechstudy knows about one architecture. Pure data: no torch, no subclasses.

    Attributes:
        model_types: the HF `model_type`s it covers.
        arch: its name ("gpt2", "neox", "llama", "bert").
        points: site kind -> HookPoint (kinds absent here are refused with a LookupError).
        info: config.json dict -> ModelInfo (dimensions, features), read without loading weights.
        attention: the attention module of a layer (its forward computes every head's z).
        attn_norm, mlp_norm: the norms in front of attention and the MLP (their inputs are what
            those sub-blocks read from the residual stream); None where there are none (post-LN).
        final_norm: the norm the unembedding reads through; None when there is none.
        parallel: config -> whether attention and MLP both read the block's input (GPT-NeoX's
            use_parallel_residual); then resid_mid is read as resid_pre + attn_out.
        auto_class: config -> the transformers Auto class that loads a checkpoint of it.
        base_relative: module paths are relative to `model.base_model` (prefixed when a task head
            wraps the encoder).
    """

    model_types: tuple[str, ...]
    arch: str
    points: Mapping[str, HookPoint]
    info: Callable[[Mapping[str, Any]], ModelInfo]
    attention: str
    attn_norm: str | None = None
    mlp_norm: str | None = None
    final_norm: str | None = None
    parallel: Callable[[Mapping[str, Any]], bool] = _never
    auto_class: Callable[[Mapping[str, Any]], str] = _causal_lm
    base_relative: bool = False
    doc: str = field(default="", compare=False)


ARCHS: dict[str, ArchTable] = {}


def register_arch(table: ArchTable) -> ArchTable:
    unknown = set(table.points) - set(SITE_KINDS)
    if unknown:
        raise ValueError(f"{table.arch}: hook points for unknown site kinds {sorted(unknown)}")
    for mt in table.model_types:
        old = ARCHS.get(mt)
        if old is not None and old.arch != table.arch:
            raise ValueError(f"model_type {mt!r} mapped twice ({old.arch} and {table.arch})")
        ARCHS[mt] = table
    return table


def _import_tables() -> None:
    # Tables register where they are defined; import every module of the archs package so a lookup
    # never depends on what happened to be imported first. The package imports no torch.
    pkg = importlib.import_module("mechstudy.stdlib.models.archs")
    for mod in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + "."):
        importlib.import_module(mod.name)


def arch_for(model_type: str) -> ArchTable:
    """The table for a HF `model_type`; LookupError (with the known ones) when none."""
    if model_type not in ARCHS:
        _import_tables()
    try:
        return ARCHS[model_type]
    except KeyError:
        known = ", ".join(sorted(ARCHS)) or "none"
        raise LookupError(f"no adapter for model_type {model_type!r} (adapters exist for: {known})") from None


# For the checker (which reads the registries, never the stdlib): the model dimension each component
# word's index counts, and what a result table calls its unit.
_spec.COMPONENT_UNITS.update({w: (AXIS_SIZE[k.unit_axis], k.unit) for w, k in WORDS.items() if k.unit_axis})
