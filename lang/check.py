"""AST -> `lang.resolved.ResolvedStudy`: names, parameters, types, layers, sweeps.

The checker reads the registries of `engine.spec` at call time (`spec.OPS`, `spec.METRICS`,
...), so whatever the stdlib (or a test) registered is what a study may use. It collects
every error in the file and in the files it `use`s, then raises them together as one
`StudyErrors`. A name whose declaration is broken is remembered as broken, so that its uses
stay quiet instead of repeating the same mistake as "unknown name" on every line.

Clauses map onto operator parameters by the table in engine/spec.py's docstring.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mechstudy.engine import spec
from mechstudy.engine.spec import Param
from mechstudy.lang import ast
from mechstudy.lang.errors import StudyError, StudyErrors, StudySyntaxError, StudyTypeError, UnknownNameError
from mechstudy.lang.parser import GRAMMAR_VERSION, parse
from mechstudy.lang.resolved import Call, DatasetDecl, ModelDecl, Plot, Ref, ResolvedStudy, Span
from mechstudy.lang.scope import Scope
from mechstudy.lang.statement import one_of as _one_of
from mechstudy.lang.statement import resolve_statement
from mechstudy.lang.values import REF_KINDS, Skip, Sweep, convert, describe, did_you_mean

# The grammar's keywords: they cannot name a model, dataset or result.
KEYWORDS = frozenset(
    "study version use model dataset corpus plot as titled in at of on with using over from to layer layers "
    "position positions all every last true false".split()
)


def check_study(study: ast.Study) -> ResolvedStudy:
    """Resolve a parsed study. Raises `StudyErrors` with every error found."""
    c = _Checker(study)
    c.file(study, included=False, stack=())
    c.plots()
    if c.errors:
        raise StudyErrors(c.errors, c.sources)
    return ResolvedStudy(
        path=study.path,
        title=c.title if c.title is not None else _default_title(study.path),
        text=study.text,
        models={k: v for k, v in c.models.items() if v is not None},
        datasets={k: v for k, v in c.datasets.items() if v is not None},
        calls=tuple(c.calls),
        plots=tuple(c.plot_list),
        grammar_version=c.version,
    )


def _default_title(path: str) -> str:
    return "untitled study" if path.startswith("<") else Path(path).stem


class _Checker:
    def __init__(self, study: ast.Study) -> None:
        # The names declared so far, shared with the statement resolver (lang.statement).
        self.scope = Scope(lookup=self.lookup)
        self.errors = self.scope.errors
        self.models, self.datasets, self.results = self.scope.models, self.scope.datasets, self.scope.results
        self.declared, self.ahead = self.scope.declared, self.scope.ahead
        self.sources: dict[str, str] = {study.path: study.text}
        self.title: str | None = None
        self.version = GRAMMAR_VERSION
        self.header: ast.StudyHeader | None = None
        self.calls: list[Call] = []
        self.plot_stmts: list[ast.PlotStmt] = []
        self.plot_list: list[Plot] = []
        self.included: set[Path] = set()

    def err(self, e: StudyError) -> None:
        self.scope.err(e)

    # -- files ------------------------------------------------------------------------------

    def file(self, study: ast.Study, included: bool, stack: tuple[Path, ...]) -> None:
        kinds = {ast.ModelStmt: "model", ast.DatasetStmt: "dataset", ast.OpStmt: "result"}
        for stmt in study.statements:  # for "declared later" hints
            if type(stmt) in kinds and getattr(stmt, "name", None) is not None:
                self.ahead.setdefault(stmt.name.text, (kinds[type(stmt)], stmt.name.span))
        for stmt in study.statements:
            try:
                if isinstance(stmt, ast.StudyHeader):
                    self.study_header(stmt, included)
                elif isinstance(stmt, ast.Use):
                    self.use(stmt, study.path, stack)
                elif isinstance(stmt, ast.ModelStmt):
                    self.model(stmt)
                elif isinstance(stmt, ast.DatasetStmt):
                    self.dataset(stmt)
                elif isinstance(stmt, ast.OpStmt):
                    if not (included and stmt.name is None):  # a used file gives its named results
                        self.op(stmt)
                elif isinstance(stmt, ast.PlotStmt) and not included:
                    self.plot_stmts.append(stmt)
            except StudyError as e:
                self.err(e)

    def study_header(self, stmt: ast.StudyHeader, included: bool) -> None:
        v = stmt.version
        if v is not None and not 1 <= v.value <= GRAMMAR_VERSION:
            raise StudySyntaxError(
                v.span,
                f"this study is written in grammar version {v.value}; this mechstudy reads version "
                f"{GRAMMAR_VERSION}" + (" and earlier" if GRAMMAR_VERSION > 1 else ""),
                "upgrade mechstudy" if v.value > GRAMMAR_VERSION else "versions start at 1",
            )
        if included:
            return
        if self.header is not None:
            h = self.header.span
            raise StudySyntaxError(stmt.span, "a second `study` header", f"the first is at line {h.line}")
        self.header, self.title = stmt, stmt.title.value
        self.version = v.value if v is not None else GRAMMAR_VERSION

    def use(self, stmt: ast.Use, here: str, stack: tuple[Path, ...]) -> None:
        base = Path.cwd() if here.startswith("<") else Path(here).parent
        target = base / stmt.path.value
        try:
            found = target.is_file()
            key = target.resolve()
        except (OSError, ValueError):  # e.g. a name too long, or with a NUL in it
            found = False
        if not found:
            try:
                near = [p.name for p in base.glob("*.study")]
            except OSError:
                near = []
            raise UnknownNameError(stmt.path.span, f"no such file: {target}",
                                   did_you_mean(Path(stmt.path.value).name, near))
        if key in stack or (not here.startswith("<") and key == Path(here).resolve()):
            raise StudyTypeError(stmt.span, f"{stmt.path.value} uses itself (through `use`)")
        if key in self.included:
            return  # already included through another `use`
        self.included.add(key)
        try:
            text = target.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise StudyTypeError(stmt.path.span, f"cannot read {target}: {e}") from None
        path = str(target)
        self.sources[path] = text
        try:
            other = parse(text, path)
        except StudyErrors as e:
            self.errors.extend(e.errors)
            return
        here_key = () if here.startswith("<") else (Path(here).resolve(),)
        self.file(other, included=True, stack=stack + here_key + (key,))

    # -- names ------------------------------------------------------------------------------

    def declare(self, name: ast.Name, kind: str) -> bool:
        """Claim `name`; on a clash, report it and return False (the statement is still checked)."""
        n = name.text
        if n in KEYWORDS:
            self.err(StudySyntaxError(name.span, f"'{n}' is a keyword and cannot name a {kind}"))
        elif n.startswith("_"):
            self.err(StudySyntaxError(name.span, f"names starting with '_' are reserved; rename '{n}'"))
        elif n in self.declared:
            what, where = self.declared[n]
            self.err(StudyTypeError(name.span, f"'{n}' is already declared (as a {what} at {where.file}:{where.line})",
                                    "pick another name"))
        else:
            self.declared[n] = (kind, name.span)
            return True
        return False

    def lookup(self, kind: str, ident: ast.Ident) -> Any:
        """A declared model / dataset / result by name, as a `Ref`; a metric as its name."""
        name = ident.name
        if kind == spec.METRIC:
            if name not in spec.METRICS:
                raise UnknownNameError(ident.span, f"unknown metric '{name}'", did_you_mean(name, spec.METRICS))
            return name
        what = REF_KINDS[kind]
        table = {"model": self.models, "dataset": self.datasets, "result": self.results, "corpus": self.datasets}[what]
        if what == "corpus" and name in table and self.declared.get(name, ("",))[0] != "corpus":
            raise StudyTypeError(ident.span, f"'{name}' is a dataset, not a corpus",
                                 'declare a corpus to train on: `corpus NAME = zoo "MODEL"` (or text, parquet)')
        if name in table:
            if table[name] is None:
                raise Skip()
            return Ref("dataset" if what == "corpus" else what, name)
        if name in self.declared:
            other = self.declared[name][0]
            raise StudyTypeError(ident.span, f"'{name}' is a {other}, not a {what}")
        hint = did_you_mean(name, table)
        later = self.ahead.get(name)
        if name in KEYWORDS:
            hint = f"'{name}' is a keyword: the {what}'s name is missing"
        elif later and later[0] == what and later[1].file == ident.span.file and later[1].line > ident.span.line:
            hint = f"'{name}' is declared at line {later[1].line}, after this use; move its declaration up"
        elif hint is None and what == "result":
            hint = "only named statements (`NAME = VERB ...`) declared above can be used"
        elif hint is None and what == "model":
            hint = f'declare it first: `model {name} = hf "{name}"`'
        elif hint is None and what == "dataset":
            gen = name if name in spec.DATASETS else "GENERATOR"
            hint = f"declare it first: `dataset {name} = {gen}(...)`"
        elif hint is None and what == "corpus":
            hint = f'declare it first: `corpus {name} = zoo "MODEL"` (or text "FILES", parquet "FILE")'
        raise UnknownNameError(ident.span, f"unknown {what} '{name}'", hint)

    # -- declarations -----------------------------------------------------------------------

    def model(self, stmt: ast.ModelStmt) -> None:
        name = stmt.name.text
        if self.declare(stmt.name, "model"):
            self.models[name] = None
        else:
            name = None  # checked, never stored
        kind = stmt.kind.text
        src = spec.MODEL_SOURCES.get(kind)
        if src is None:
            raise UnknownNameError(stmt.kind.span, f"unknown model source '{kind}'",
                                   did_you_mean(kind, spec.MODEL_SOURCES) or _one_of(spec.MODEL_SOURCES))
        options = self.options(src.options, stmt.options, f"model source {kind}", stmt.span)
        if options is None:
            return
        try:
            info = src.describe(stmt.ref.value, dict(options))
        except (LookupError, OSError, ValueError) as e:
            msg = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
            names = _safe_names(src)
            raise UnknownNameError(stmt.span, msg or f"cannot find model {stmt.ref.value!r}",
                                   did_you_mean(stmt.ref.value, names)) from None
        if name is not None:
            self.models[name] = ModelDecl(name, kind, stmt.ref.value, tuple(sorted(options.items())), info, stmt.span)

    def dataset(self, stmt: ast.DatasetStmt) -> None:
        name, gen = stmt.name.text, stmt.generator.text
        corpus = stmt.kind == "corpus"
        if self.declare(stmt.name, stmt.kind):
            self.datasets[name] = None
        else:
            name = None
        sources = sorted(k[len(spec.CORPUS_PREFIX):] for k in spec.DATASETS if spec.is_corpus(k))
        if corpus:
            if gen not in sources:
                raise UnknownNameError(stmt.generator.span, f"unknown corpus source '{gen}'",
                                       did_you_mean(gen, sources) or _one_of(sources, "corpus sources"))
            gen = spec.CORPUS_PREFIX + gen
        ds = spec.DATASETS.get(gen)
        if ds is None or (not corpus and spec.is_corpus(gen)):
            generators = [k for k in spec.DATASETS if not spec.is_corpus(k)]
            hint = did_you_mean(gen, generators) or _one_of(generators)
            if gen in sources:
                hint = f"{gen} is a corpus source: write `corpus {stmt.name.text} = {gen} \"...\"`"
            raise UnknownNameError(stmt.generator.span, f"unknown dataset generator '{gen}'", hint)
        opts = list(stmt.options)
        model = None
        declared = {p.name for p in ds.params}
        if "model" not in declared:  # `model=NAME` picks the tokenizer's model
            given = [o for o in opts if o.key.text == "model"]
            if len(given) > 1:
                raise StudyTypeError(given[1].span, "option 'model' is given twice", f"first at line {given[0].span.line}")
            for o in given:
                opts.remove(o)
                if not isinstance(o.value, ast.Ident):
                    raise StudyTypeError(o.value.span, f"model= takes a model name, not {describe(o.value)}")
                try:
                    model = self.lookup(spec.MODEL, o.value).name
                except Skip:
                    return
        if stmt.path is not None:
            # A corpus source's first param takes the declaration's string (a zoo name, a path ...).
            first = ds.params[0].name if corpus and ds.params else "path"
            if first not in declared:
                raise StudyTypeError(stmt.path.span, f"generator '{gen}' does not read a file",
                                     f"write {gen}(key=value, ...)")
            opts.insert(0, ast.Option(ast.Name(first, stmt.path.span), stmt.path, stmt.path.span))
        owner = f"corpus {gen[len(spec.CORPUS_PREFIX):]}" if corpus else f"dataset {gen}"
        params = self.options(ds.params, tuple(opts), owner, stmt.span)
        if params is not None and ds.prepare is not None:
            try:
                params = ds.prepare(dict(params))
            except (ValueError, OSError) as e:
                at = next((o.span for o in opts if o.key.text == getattr(e, "option", None)), stmt.span)
                self.err(StudyTypeError(at, getattr(e, "message", None) or str(e), getattr(e, "hint", None)))
                params = None
        if params is not None and name is not None:
            self.datasets[name] = DatasetDecl(name, gen, tuple(sorted(params.items())), model, stmt.span)

    def options(self, params: tuple[Param, ...], given: tuple[ast.Option, ...], owner: str,
                span: Span) -> dict[str, Any] | None:
        """`k=v` options checked against `params`, defaults filled in; None after any error."""
        by_name = {p.name: p for p in params}
        out: dict[str, Any] = {}
        seen: dict[str, Span] = {}
        ok = True
        for o in given:
            k = o.key.text
            try:
                p = by_name.get(k)
                if p is None:
                    raise UnknownNameError(o.key.span, f"{owner} has no option '{k}'",
                                           did_you_mean(k, by_name) or _one_of(by_name, "options"))
                if k in seen:
                    raise StudyTypeError(o.span, f"option '{k}' is given twice", f"first at line {seen[k].line}")
                seen[k] = o.span
                v = convert(p, o.value, owner, self.lookup)
                if isinstance(v, Sweep):
                    raise StudyTypeError(o.value.span, f"{owner}: '{k}' takes one value here")
                out[k] = v
            except StudyError as e:
                self.err(e)
                ok = False
            except Skip:
                ok = False
        for p in params:
            if p.name not in out and ok:
                if p.required:
                    self.err(StudyTypeError(span, f"{owner} needs option '{p.name}'", f"add {p.name}=..."))
                    ok = False
                else:
                    out[p.name] = p.default
        return out if ok else None

    # -- operator statements ------------------------------------------------------------------

    def op(self, stmt: ast.OpStmt) -> None:
        registered = False
        if stmt.name is not None:
            name, anonymous = stmt.name.text, False
            registered = self.declare(stmt.name, "result")
            if registered:
                self.results[name] = None
        else:
            name, anonymous = f"_L{stmt.span.line}", True
        call = resolve_statement(self.scope, stmt, name, anonymous)
        if call is None or not (anonymous or registered):
            return
        if not anonymous:
            self.results[name] = call
        self.calls.append(call)

    def plots(self) -> None:
        for stmt in self.plot_stmts:
            try:
                target = stmt.target.text
                if target not in self.results:
                    if target in self.declared:
                        raise StudyTypeError(stmt.target.span, f"'{target}' is a {self.declared[target][0]}, "
                                             "not a result", "plot the result of a named statement")
                    raise UnknownNameError(stmt.target.span, f"unknown result '{target}'",
                                           did_you_mean(target, self.results) or
                                           "name the statement to plot it: `NAME = VERB ...`")
                kind = stmt.kind.text
                if kind not in spec.CHARTS:
                    raise UnknownNameError(stmt.kind.span, f"unknown chart kind '{kind}'",
                                           did_you_mean(kind, spec.CHARTS) or _one_of(spec.CHARTS, "kinds"))
                if self.results[target] is not None:
                    title = stmt.title.value if stmt.title else None
                    self.plot_list.append(Plot(target, kind, title, stmt.span))
            except StudyError as e:
                self.err(e)


def _safe_names(src: spec.ModelSource) -> list[str]:
    try:
        return list(src.names()) if src.names else []
    except Exception:  # a listing is only for the hint; never let it hide the real error
        return []
