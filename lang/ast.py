"""The syntax tree of a `.study` file: frozen dataclasses, each carrying its source `Span`.

The parser (lang/parser.py) builds these straight from Lark's tree; nothing here knows about
Lark. The tree is purely syntactic: names are unresolved `Name`s and values are literals as
written. `lang.check` turns it into a `lang.resolved.ResolvedStudy`.

>>> from mechstudy.lang import parse
>>> stmt = parse('patch heads in layer 9 of gpt2 on ioi with logit_diff').statements[0]
>>> stmt.verb.text, [type(c).__name__ for c in stmt.clauses]
('patch', ['Word', 'In', 'Link', 'Link', 'Link'])
>>> stmt.clauses[1].layers.value.value, stmt.span.column, stmt.span.end_column
(9, 1, 54)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from mechstudy.lang.resolved import Span

__all__ = [
    "Span", "Name", "Int", "Float", "Str", "Bool", "Ident", "Range", "List", "Value", "Literal",
    "LayerSet", "PositionSet", "Word", "WordValue", "Option", "In", "At", "Link", "Marker", "Clause",
    "StudyHeader", "Use", "ModelStmt", "DatasetStmt", "OpStmt", "PlotStmt", "Statement", "Study",
]


@dataclass(frozen=True)
class Name:
    """An identifier as written (a declared name, a verb, a word, an option key)."""

    text: str
    span: Span


# -- values ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Int:
    value: int
    span: Span


@dataclass(frozen=True)
class Float:
    value: float
    span: Span


@dataclass(frozen=True)
class Str:
    value: str
    span: Span


@dataclass(frozen=True)
class Bool:
    value: bool
    span: Span


@dataclass(frozen=True)
class Ident:
    """A bare identifier used as a value: `dtype=float32`, `model=gpt2`."""

    name: str
    span: Span


@dataclass(frozen=True)
class Range:
    """`lo..hi`, both ends inclusive (a sweep, or a set of layers/positions)."""

    lo: Int | Float
    hi: Int | Float
    span: Span


@dataclass(frozen=True)
class List:
    items: tuple[Value, ...]
    span: Span


Literal = Union[Int, Float, Str, Bool, Range, List]
Value = Union[Int, Float, Str, Bool, Ident, Range, List]

# -- layer and position sets ------------------------------------------------------------------


@dataclass(frozen=True)
class LayerSet:
    """`layer 9` / `layers 0..5` / `layers [1, 3]` (kind "given", `value` set), `all layers`
    (kind "all") or `every layer` (kind "every")."""

    kind: str
    value: Literal | None
    span: Span


@dataclass(frozen=True)
class PositionSet:
    """`position 3` / `positions 0..4` / `positions [1, 2]` (kind "given"), `every position`
    ("each": each position separately), `all positions` ("all": all at once), `last position`
    ("last")."""

    kind: str
    value: Literal | None
    span: Span


# -- clauses of an operator statement --------------------------------------------------------


@dataclass(frozen=True)
class Word:
    """A bare word: the component (`heads`) or a flag matched by a param's choices (`noising`)."""

    word: Name
    span: Span


@dataclass(frozen=True)
class WordValue:
    """`WORD VALUE`: `threshold 0.01`, `neurons 10..20`."""

    word: Name
    value: Literal
    span: Span


@dataclass(frozen=True)
class Option:
    """`key=value` (in a statement, a dataset's arguments or a model declaration)."""

    key: Name
    value: Value
    span: Span


@dataclass(frozen=True)
class In:
    layers: LayerSet
    span: Span


@dataclass(frozen=True)
class At:
    positions: PositionSet
    span: Span


@dataclass(frozen=True)
class Link:
    """`of NAME`, `on NAME`, `with NAME`, `using NAME`: `prep` is the preposition."""

    prep: str
    target: Name
    span: Span


@dataclass(frozen=True)
class Marker:
    """`from` / `to`: splits the clauses into sender and receiver groups (path patching)."""

    word: str
    span: Span


Clause = Union[Word, WordValue, Option, In, At, Link, Marker]

# -- statements -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyHeader:
    title: Str
    version: Int | None
    span: Span


@dataclass(frozen=True)
class Use:
    path: Str
    span: Span


@dataclass(frozen=True)
class ModelStmt:
    """`model NAME = KIND "REF" k=v ...`."""

    name: Name
    kind: Name
    ref: Str
    options: tuple[Option, ...]
    span: Span


@dataclass(frozen=True)
class DatasetStmt:
    """`dataset NAME = GENERATOR(k=v, ...)` (`path` None) or `dataset NAME = KIND "PATH" k=v ...`;
    with kind "corpus", `corpus NAME = SOURCE "REF" k=v ...` (text streamed for training and
    evaluation: a zoo model's corpus, text files, a parquet column)."""

    name: Name
    generator: Name
    path: Str | None
    options: tuple[Option, ...]
    span: Span
    kind: str = "dataset"


@dataclass(frozen=True)
class OpStmt:
    """`[NAME =] VERB clause*`."""

    name: Name | None
    verb: Name
    clauses: tuple[Clause, ...]
    span: Span


@dataclass(frozen=True)
class PlotStmt:
    target: Name
    kind: Name
    title: Str | None
    span: Span


Statement = Union[StudyHeader, Use, ModelStmt, DatasetStmt, OpStmt, PlotStmt]


@dataclass(frozen=True)
class Study:
    path: str
    text: str
    statements: tuple[Statement, ...]
