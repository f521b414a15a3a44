"""Text -> `lang.ast.Study`: the Lark parser, the tree transformer, and syntax errors.

Lark's `Tree` and exceptions stay in this module: callers get AST nodes or a `StudyErrors`
of `StudySyntaxError`s. After a syntax error the rest of the file is parsed again from the
next statement line (statements are one per line), so one run reports every bad line, not
only the first. Messages come from the labelled snippets in `lang.syntax_examples`.

Lines are counted at "\n" only, as Lark counts them (not at every `str.splitlines` break).

>>> from mechstudy.lang.parser import parse
>>> parse('model gpt2 = hf "gpt2" dtype=float32').statements[0].options[0].value.name
'float32'
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken, VisitError

from mechstudy.lang import ast
from mechstudy.lang.errors import StudyError, StudyErrors, StudySyntaxError
from mechstudy.lang.resolved import Span
from mechstudy.lang.syntax_examples import EXAMPLES

GRAMMAR_VERSION = 1
_GRAMMAR = Path(__file__).with_name("study.lark")


@functools.cache
def _lark() -> Lark:
    return Lark(
        _GRAMMAR.read_text(encoding="utf-8"),
        parser="lalr",
        lexer="contextual",
        propagate_positions=True,
        maybe_placeholders=False,
    )


def _prepare(text: str) -> str:
    # Every statement ends with a newline token; the last line may not have one.
    return text if text.endswith("\n") else text + "\n"


def parse(text: str, path: str = "<study>") -> ast.Study:
    """Parse study text into its AST. Raises `StudyErrors` (of `StudySyntaxError`s)."""
    src = _prepare(text)
    try:
        tree = _lark().parse(src)
    except UnexpectedInput as first:
        raise StudyErrors(_all_syntax_errors(first, src, path), {path: text}) from None
    try:
        statements = _ToAst(path).transform(tree)
    except VisitError as e:  # unwrap: users see our error, not Lark's wrapper
        if isinstance(e.orig_exc, StudyError):
            raise StudyErrors([e.orig_exc], {path: text}) from None
        raise e.orig_exc from None
    except RecursionError:  # the transformer recurses; only absurdly nested lists get here
        raise StudyErrors([_too_deep(tree, path)], {path: text}) from None
    return ast.Study(path=path, text=text, statements=tuple(statements))


def _too_deep(tree: Tree, path: str, limit: int = 100) -> StudyError:
    depth: dict[int, int] = {}
    for t in tree.iter_subtrees():  # iterative, children before parents
        depth[id(t)] = d = 1 + max((depth[id(c)] for c in t.children if isinstance(c, Tree)), default=0)
        if d > limit:
            return StudySyntaxError(_span(path, t.meta), f"values nested more than {limit} deep")
    return StudySyntaxError(None, "the study is nested too deeply to read")


# -- tree -> AST ------------------------------------------------------------------------------


def _span(path: str, x) -> Span:
    return Span(path, x.line, x.column, x.end_line, x.end_column)


def _unquote(s: str) -> str:
    # Only \" and \\ are escapes, so Windows paths ("C:\data\x") read as written.
    return re.sub(r'\\(["\\])', r"\1", s[1:-1])


@v_args(meta=True)
class _ToAst(Transformer):
    """One method per grammar rule (or alias); each returns an AST node."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def _s(self, x) -> Span:
        return _span(self.path, x)

    def _name(self, tok: Token) -> ast.Name:
        return ast.Name(str(tok), self._s(tok))

    def _str(self, tok: Token) -> ast.Str:
        return ast.Str(_unquote(str(tok)), self._s(tok))

    def _number(self, tok: Token) -> ast.Int | ast.Float:
        if len(tok) > 100:  # Python refuses to convert very long digit strings; nobody means one
            raise StudySyntaxError(self._s(tok), f"this number is too long ({len(tok)} characters)")
        if tok.type == "INT":
            return ast.Int(int(tok), self._s(tok))
        return ast.Float(float(tok), self._s(tok))

    # statements
    def start(self, meta, children):
        return [c for c in children if c is not None]

    def eol(self, meta, children):
        return None

    def study_header(self, meta, c):
        version = self._number(c[1]) if len(c) > 1 else None
        return ast.StudyHeader(self._str(c[0]), version, self._s(meta))

    def use(self, meta, c):
        return ast.Use(self._str(c[0]), self._s(meta))

    def model_decl(self, meta, c):
        return ast.ModelStmt(self._name(c[0]), self._name(c[1]), self._str(c[2]), tuple(c[3:]), self._s(meta))

    def dataset_call(self, meta, c):
        return ast.DatasetStmt(self._name(c[0]), self._name(c[1]), None, tuple(c[2:]), self._s(meta))

    def dataset_file(self, meta, c):
        return ast.DatasetStmt(self._name(c[0]), self._name(c[1]), self._str(c[2]), tuple(c[3:]), self._s(meta))

    def corpus_decl(self, meta, c):
        return ast.DatasetStmt(self._name(c[0]), self._name(c[1]), self._str(c[2]), tuple(c[3:]), self._s(meta),
                               kind="corpus")

    def result_name(self, meta, c):
        return self._name(c[0])

    def op_statement(self, meta, c):
        name = c.pop(0) if isinstance(c[0], ast.Name) else None
        return ast.OpStmt(name, self._name(c[0]), tuple(c[1:]), self._s(meta))

    def plot(self, meta, c):
        title = self._str(c[2]) if len(c) > 2 else None
        return ast.PlotStmt(self._name(c[0]), self._name(c[1]), title, self._s(meta))

    # clauses
    def option(self, meta, c):
        return ast.Option(self._name(c[0]), c[1], self._s(meta))

    def word(self, meta, c):
        return ast.Word(self._name(c[0]), self._s(meta))

    def word_value(self, meta, c):
        return ast.WordValue(self._name(c[0]), c[1], self._s(meta))

    def in_clause(self, meta, c):
        return ast.In(c[0], self._s(meta))

    def at_clause(self, meta, c):
        return ast.At(c[0], self._s(meta))

    def _link(prep: str):  # noqa: N805 - a method factory used in the class body
        def method(self, meta, c):
            return ast.Link(prep, self._name(c[0]), self._s(meta))

        return method

    of_clause = _link("of")
    on_clause = _link("on")
    with_clause = _link("with")
    using_clause = _link("using")
    over_clause = _link("over")

    def from_marker(self, meta, c):
        return ast.Marker("from", self._s(meta))

    def to_marker(self, meta, c):
        return ast.Marker("to", self._s(meta))

    # layer and position sets
    def layers_given(self, meta, c):
        return ast.LayerSet("given", c[0], self._s(meta))

    def all_layers(self, meta, c):
        return ast.LayerSet("all", None, self._s(meta))

    def every_layer(self, meta, c):
        return ast.LayerSet("every", None, self._s(meta))

    def positions_given(self, meta, c):
        return ast.PositionSet("given", c[0], self._s(meta))

    def every_position(self, meta, c):
        return ast.PositionSet("each", None, self._s(meta))

    def all_positions(self, meta, c):
        return ast.PositionSet("all", None, self._s(meta))

    def last_position(self, meta, c):
        return ast.PositionSet("last", None, self._s(meta))

    # values
    def ident(self, meta, c):
        return ast.Ident(str(c[0]), self._s(meta))

    def int(self, meta, c):
        return self._number(c[0])

    def float(self, meta, c):
        return self._number(c[0])

    def string(self, meta, c):
        return self._str(c[0])

    def true(self, meta, c):
        return ast.Bool(True, self._s(meta))

    def false(self, meta, c):
        return ast.Bool(False, self._s(meta))

    def range(self, meta, c):
        return ast.Range(self._number(c[0]), self._number(c[1]), self._s(meta))

    def list(self, meta, c):
        return ast.List(tuple(c), self._s(meta))


# -- syntax errors ----------------------------------------------------------------------------

_BY_LABEL = {ex.label: ex for ex in EXAMPLES}

# How terminals read in "expected ..." messages.
_SHOW = {
    "NAME": "a name",
    "INT": "a whole number",
    "FLOAT": "a number",
    "STRING": 'a "string"',
    "_NL": "end of line",
    "$END": "end of file",
}


def _show_terminal(name: str) -> str:
    if name in _SHOW:
        return _SHOW[name]
    for t in _lark().terminals:
        if t.name == name and t.pattern.type == "str":
            return f"'{t.pattern.value}'"
    return name.lower()


def _show_token(tok: Token) -> str:
    if tok.type in ("_NL", "$END"):
        return _SHOW[tok.type]
    text = _clip(str(tok))
    if tok.type == "NAME":
        return f"name '{text}'"
    if tok.type in ("INT", "FLOAT"):
        return f"number {text}"
    if tok.type == "STRING":
        return f"string {text}"
    return f"'{text}'"


def _clip(text: str, n: int = 24) -> str:
    """A token as messages quote it: at most `n` characters, non-printable ones escaped (the text
    may come from a file that is not a study at all)."""
    from mechstudy.lang.errors import _escape

    return _escape(text[:n]) + ("..." if len(text) > n else "")


def _normalise(e: UnexpectedInput) -> UnexpectedInput:
    """Compare parser states by number alone.

    Errors found by the contextual lexer carry the whole `ParserState`, which compares equal
    only at the same stack depth, and the depth differs between the first statement of a file
    and the others. The parser's own errors carry the state number; use that for both.
    """
    if hasattr(e.state, "position"):
        e.state = e.state.position
    return e


@functools.cache
def _example_error(snippet: str) -> UnexpectedInput | None:
    try:
        _lark().parse(_prepare(snippet))
    except UnexpectedInput as e:
        return _normalise(e)
    return None


def _replay(snippet: str):
    """A parse function for `match_examples` that replays each snippet's (cached) error."""
    e = _example_error(snippet)
    if e is not None:
        raise e


@functools.cache
def _examples_by_state() -> dict[int, list[tuple[str, list[str]]]]:
    """The token-error snippets grouped by the state they fail in, in table order.

    `match_examples` skips every snippet that fails in another state than the error; handing
    it only the same-state ones gives the same answer without looping over the whole table.
    """
    out: dict[int, dict[str, list[str]]] = {}
    for ex in EXAMPLES:
        for s in ex.snippets:
            e = _example_error(s)
            if isinstance(e, UnexpectedToken):
                out.setdefault(e.state, {}).setdefault(ex.label, []).append(s)
    return {state: list(by_label.items()) for state, by_label in out.items()}


def match_label(e: UnexpectedInput) -> str | None:
    """The label of the example snippet that fails like `e` (Lark's `match_examples`).

    Only token errors are matched: for a lexer error Lark compares nothing but the parser
    state, which says nothing about the offending character, so `_syntax_error` decides
    those by the character itself (a `"` starts an unclosed string, anything else is stray).
    """
    if not isinstance(e, UnexpectedToken) or e.state is None:
        return None
    _normalise(e)
    examples = _examples_by_state().get(e.state, [])
    label = e.match_examples(_replay, examples, use_accepts=True, token_type_match_fallback=True)
    # Lark falls back to any snippet that failed in the same state; keep its label only when
    # one of them also failed on the same kind of token (a `)` is not a "missing value").
    kind = _token_kind(e.token)
    if label is not None and any(
        (x := _example_error(s)) is not None and x.state == e.state and _token_kind(x.token) == kind
        for s in _BY_LABEL[label].snippets
        if isinstance(_example_error(s), UnexpectedToken)
    ):
        return label
    return None


def _token_kind(tok: Token) -> str:
    return "_NL" if tok.type == "$END" else tok.type


def _lines(src: str) -> list[str]:
    return (src[:-1] if src.endswith("\n") else src).split("\n")


def _syntax_error(e: UnexpectedInput, src: str, path: str) -> StudySyntaxError:
    lines = _lines(src)
    if isinstance(e, UnexpectedToken):
        label = match_label(e)
        tok = e.token
        if tok.type == "$END":
            span = Span(path, len(lines), len(lines[-1]) + 1, len(lines), len(lines[-1]) + 2)
        elif tok.type == "_NL":
            span = Span(path, tok.line, tok.column, tok.line, tok.column + 1)
        else:
            span = _span(path, tok)
        found = _show_token(tok)
        if label is not None:
            ex = _BY_LABEL[label]
            return StudySyntaxError(span, f"{ex.message} (found {found})", ex.hint)
        accepts = sorted({_show_terminal(t) for t in (e.accepts or e.expected)})
        want = accepts[0] if len(accepts) == 1 else "one of " + ", ".join(accepts)
        return StudySyntaxError(span, f"unexpected {found}; expected {want}")
    # A lexer error (UnexpectedCharacters): no token starts here.
    line = lines[e.line - 1] if 1 <= e.line <= len(lines) else ""
    char = line[e.column - 1 : e.column] or "?"
    if char == '"':
        ex = _BY_LABEL["unclosed-string"]
        return StudySyntaxError(Span(path, e.line, e.column, e.line, len(line) + 1), ex.message, ex.hint)
    ex = _BY_LABEL["stray-char"]
    return StudySyntaxError(Span(path, e.line, e.column, e.line, e.column + 1), f"{ex.message} {char!r}", ex.hint)


def _logical_lines(src: str) -> list[tuple[int, int, str]]:
    """(first line, last line, text) of each statement line, joining backslash continuations."""
    out: list[tuple[int, int, str]] = []
    start, buf = 1, []
    lines = [line + "\n" for line in _lines(src)]
    for i, line in enumerate(lines, 1):
        if not buf:
            start = i
        buf.append(line)
        if not re.search(r"\\[ \t]*\r?\n$", line):
            out.append((start, i, "".join(buf)))
            buf = []
    if buf:
        out.append((start, len(lines), "".join(buf)))
    return out


def _all_syntax_errors(first: UnexpectedInput, src: str, path: str) -> list[StudyError]:
    """The first error, then one per later bad statement line.

    LALR stops at the first bad token, so every line before it is fine. The rest of the file
    is parsed again from the line after the bad one (padded with newlines so that positions
    stay right), as often as it takes: one parse per error.
    """
    errors: list[StudyError] = [_syntax_error(first, src, path)]
    logical = _logical_lines(src)
    e: UnexpectedInput = first
    done = -1  # index of the last logical line reported
    while isinstance(e.line, int):
        after = [k for k, (lo, hi, _) in enumerate(logical) if hi >= e.line]
        if not after or after[0] <= done or after[0] + 1 >= len(logical):
            break
        done = after[0]
        rest = logical[done + 1 :]
        padded = "\n" * (rest[0][0] - 1) + "".join(t for _, _, t in rest)
        try:
            _lark().parse(padded)
            break
        except UnexpectedInput as again:
            e = again
            errors.append(_syntax_error(e, padded, path))
    return errors
