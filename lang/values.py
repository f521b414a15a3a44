"""Literal values -> parameter values: type checks, sweeps, layer and position sets.

Used by `lang.check`. Each function raises a `StudyError` pointing at the offending value;
the checker catches it per parameter so that one bad value does not hide the next.

>>> from mechstudy.lang.resolved import Span
>>> sp = Span("s", 1, 1, 1, 2)
>>> layer_indices(ast.LayerSet("given", ast.Range(ast.Int(2, sp), ast.Int(4, sp), sp), sp), 12, "gpt2")
(2, 3, 4)
>>> convert(Param("threshold", float, 0.1, sweepable=True),
...         ast.List((ast.Int(1, sp), ast.Float(0.5, sp)), sp), "discover", None)
Sweep(values=(1.0, 0.5))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from mechstudy.engine import spec
from mechstudy.engine.spec import Param
from mechstudy.lang import ast
from mechstudy.lang.errors import StudyTypeError, UnknownNameError

MAX_SWEEP_POINTS = 10_000  # per statement; far beyond any useful sweep, short of a frozen checker

# Words for "expected ..." in type errors.
_TYPE_WORDS = {int: "a whole number", float: "a number", str: "a word or a string", bool: "true or false"}

# The words in clauses that are parameter types of their own.
REF_KINDS = {spec.MODEL: "model", spec.DATASET: "dataset", spec.RESULT: "result", spec.CORPUS: "corpus"}


class Skip(Exception):
    """A reference to something that is declared but broken: already reported, stay quiet."""


@dataclass(frozen=True)
class Sweep:
    """A swept parameter's values, one plan node per point."""

    values: tuple


def did_you_mean(word: str, candidates) -> str | None:
    best = spec.suggest(word, sorted(set(candidates)))
    return f"did you mean '{best}'?" if best else None


def describe(node: ast.Value) -> str:
    if isinstance(node, ast.Str):
        return f'the string "{node.value}"'
    if isinstance(node, ast.Ident):
        return f"'{node.name}'"
    if isinstance(node, ast.Bool):
        return "true" if node.value else "false"
    if isinstance(node, (ast.Int, ast.Float)):
        return f"{node.value}"
    if isinstance(node, ast.Range):
        return "a range"
    return "a list"


# Resolves a name given for a MODEL / DATASET / RESULT / METRIC param: (param type, ident) -> value.
Resolver = Callable[[Any, ast.Ident], Any]


def convert(p: Param, node: ast.Value, owner: str, resolve: Resolver | None) -> Any:
    """The value of param `p` written as `node`: a plain value, or a `Sweep` of them."""
    if isinstance(node, (ast.List, ast.Range)) and p.type not in (list, tuple):
        if not p.sweepable:
            raise StudyTypeError(
                node.span,
                f"{owner}: '{p.name}' takes one value, not {describe(node)}",
                f"'{p.name}' is not sweepable; give a single value",
            )
        values = tuple(scalar(p, item, owner, resolve) for item in items(node, p))
        if not values:
            raise StudyTypeError(node.span, f"{owner}: empty sweep for '{p.name}'")
        return Sweep(values)
    return scalar(p, node, owner, resolve)


def items(node: ast.List | ast.Range, p: Param | None = None) -> tuple[ast.Value, ...]:
    """The elements of a list, or of a whole-number range (both ends included)."""
    if isinstance(node, ast.List):
        return node.items
    lo, hi = node.lo, node.hi
    if not (isinstance(lo, ast.Int) and isinstance(hi, ast.Int)):
        raise StudyTypeError(node.span, "a range runs over whole numbers", "list other values: [0.01, 0.1]")
    if lo.value > hi.value:
        raise StudyTypeError(node.span, f"empty range {lo.value}..{hi.value}", f"write {hi.value}..{lo.value}")
    if hi.value - lo.value >= MAX_SWEEP_POINTS:
        raise StudyTypeError(node.span, f"range {lo.value}..{hi.value} is too long (limit {MAX_SWEEP_POINTS})")
    return tuple(ast.Int(v, node.span) for v in range(lo.value, hi.value + 1))


def scalar(p: Param, node: ast.Value, owner: str, resolve: Resolver | None) -> Any:
    """One value of param `p` (no sweep)."""
    t = p.type
    if t in REF_KINDS or t == spec.METRIC:
        if not isinstance(node, (ast.Ident, ast.Str)) or resolve is None:
            what = "metric" if t == spec.METRIC else REF_KINDS.get(t, "name")
            raise StudyTypeError(node.span, f"{owner}: '{p.name}' takes a {what} name, not {describe(node)}")
        ident = node if isinstance(node, ast.Ident) else ast.Ident(node.value, node.span)
        return resolve(t, ident)
    if t in (list, tuple):
        elems = items(node) if isinstance(node, (ast.List, ast.Range)) else (node,)
        if p.nonempty and not elems:
            raise StudyTypeError(node.span, f"{owner}: '{p.name}' needs at least one value", f"e.g. {p.name}=[...]")
        out = tuple(scalar(Param(p.name, _elem_type(x)), x, owner, None) for x in elems)
        for x, v in zip(elems, out):
            bounded(p, v, x, owner)
        if any(isinstance(x, float) for x in out) and all(type(x) in (int, float) for x in out):
            out = tuple(float(x) for x in out)  # [0, 0.9] means [0.0, 0.9]: one key for both spellings
        return out
    if t is bool:
        if isinstance(node, ast.Bool):
            return node.value
    elif t is int:
        if isinstance(node, ast.Int):
            return bounded(p, node.value, node, owner)
    elif t is float:
        if isinstance(node, (ast.Int, ast.Float)):
            v = float(node.value) if abs(node.value) < 1e308 else math.inf
            if not math.isfinite(v):
                raise StudyTypeError(node.span, f"{owner}: '{p.name}' is out of the range of a float")
            return bounded(p, v, node, owner)
    elif t is str:
        if isinstance(node, (ast.Str, ast.Ident)):
            v = node.value if isinstance(node, ast.Str) else node.name
            if p.choices is not None and v not in p.choices:
                raise UnknownNameError(
                    node.span,
                    f"{owner}: '{p.name}' must be one of {', '.join(map(str, p.choices))}; got '{v}'",
                    did_you_mean(v, map(str, p.choices)),
                )
            return v
    else:
        raise StudyTypeError(node.span, f"{owner}: '{p.name}' cannot be set in a study")
    want = _TYPE_WORDS[t]
    raise StudyTypeError(node.span, f"{owner}: '{p.name}' takes {want}, not {describe(node)}")


def bounded(p: Param, v: Any, node: ast.Value, owner: str) -> Any:
    """`v`, unless it breaks `p`'s declared limits (engine/spec.py `Param.problem`): then an error at
    the value, saying what is allowed."""
    why = p.problem(v)
    if why is None:
        return v
    shown = f"{v:,}" if isinstance(v, int) and abs(v) >= 10_000 else f"{v}"
    if why.startswith("is over the ceiling"):
        raise StudyTypeError(node.span, f"{owner}: '{p.name}' = {shown} {why}", spec.CEILING_HINT)
    raise StudyTypeError(node.span, f"{owner}: '{p.name}' {why}; got {shown}", p.doc or None)


def _elem_type(node: ast.Value) -> type:
    return {ast.Int: int, ast.Float: float, ast.Bool: bool}.get(type(node), str)


def layer_indices(node: ast.LayerSet, n_layers: int, model: str) -> tuple[int, ...]:
    """Expand a layer set against a model with `n_layers` layers."""
    if node.kind in ("all", "every"):
        return tuple(range(n_layers))
    return _indices(node.value, "layer", n_layers, f"model {model} has {n_layers} layers", _layer_hint(n_layers, model))


def _layer_hint(n: int, model: str) -> str:
    return f"layers of {model} run 0..{n - 1}" if n > 1 else f"{model} has only layer 0"


def position_value(node: ast.PositionSet, n_ctx: int | None) -> str | tuple[int, ...]:
    """"each" | "all" | "last" | a tuple of positions (checked against the context length)."""
    if node.kind != "given":
        return node.kind
    limit = n_ctx if n_ctx else None
    return _indices(node.value, "position", limit, f"the model's context has {n_ctx} positions",
                    f"positions run 0..{(n_ctx or 1) - 1}")


def _indices(value: ast.Value | None, what: str, limit: int | None, why: str, hint: str) -> tuple[int, ...]:
    if isinstance(value, ast.Range) and isinstance(value.lo, ast.Int) and isinstance(value.hi, ast.Int):
        # Check the ends first: `layers 0..99999999` must not build a huge tuple to say so.
        for end in (value.lo, value.hi):
            _index(end, what, limit, why, hint)
    elems = items(value) if isinstance(value, (ast.List, ast.Range)) else (value,)
    if not elems:
        raise StudyTypeError(value.span, f"empty list of {what}s")
    out = tuple(_index(e, what, limit, why, hint) for e in elems)
    if len(set(out)) != len(out):
        raise StudyTypeError(value.span, f"a {what} appears twice in {describe(value)}")
    return out


def _index(node: ast.Value | None, what: str, limit: int | None, why: str, hint: str) -> int:
    if not isinstance(node, ast.Int):
        raise StudyTypeError(node.span, f"a {what} is a whole number, not {describe(node)}")
    if node.value < 0 or (limit is not None and node.value >= limit):
        if node.value < 0:
            raise StudyTypeError(node.span, f"{what}s count from 0; got {node.value}", hint)
        raise StudyTypeError(node.span, f"{what} {node.value} is out of range: {why}", hint)
    return node.value
