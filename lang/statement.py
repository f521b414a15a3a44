"""One operator statement -> one `lang.resolved.Call`.

`[NAME =] VERB clause*`: the verb is looked up in `spec.verbs()`, the clauses are mapped onto
the operator's parameters by the table in engine/spec.py's docstring, then each value is
type-checked, layers are expanded against the model, metrics are checked against the
dataset, defaults are filled in and sweeps are expanded into points.

The mapping of a bare word, in order: a flag (the param whose `choices` has the word), the
component (while none is given; checked against `OpSpec.components`), a declared model /
dataset / result name for an unfilled parameter of that type (`evaluate m on ioi`).
"""

from __future__ import annotations

import itertools
from typing import Any

from mechstudy.engine import spec
from mechstudy.engine.spec import OpSpec
from mechstudy.lang import ast
from mechstudy.lang.errors import StudyError, StudyTypeError, UnknownNameError
from mechstudy.lang.resolved import Call, Ref, Span
from mechstudy.lang.scope import Scope
from mechstudy.lang.values import (
    MAX_SWEEP_POINTS, Skip, Sweep, convert, did_you_mean, layer_indices, position_value,
)

LINKS = {"of": "model", "on": "dataset", "with": "metric", "using": "method", "over": "corpus"}
_CLAUSE_FOR = {"model": "`of MODEL`", "dataset": "`on DATASET`", "metric": "`with METRIC`",
               "layers": "`in LAYERS`", "positions": "`at POSITIONS`", "method": "`using METHOD`",
               "corpus": "`over CORPUS`",
               "sender": "`from COMPONENT in LAYERS`", "receiver": "`to COMPONENT in LAYERS`"}
# Dataset capabilities in words, for metric / dataset mismatches.
CAPABILITY = {"answers": "answer tokens", "corrupted": "corrupted prompts", "labels": "labels", "text": "text"}


def one_of(names, what: str = "known") -> str | None:
    names = sorted(names)
    if not names:
        return None
    return f"{what}: " + ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")


def resolve_statement(c: Scope, stmt: ast.OpStmt, name: str, anonymous: bool) -> Call | None:
    """The statement's `Call`, or None after reporting its errors to the checker."""
    verbs = spec.verbs()
    verb = stmt.verb.text
    if verb not in verbs:
        hint = did_you_mean(verb, verbs)
        if hint is None and verb in c.declared:
            hint = "to name a result, write `NAME = VERB ...`"
        raise UnknownNameError(stmt.verb.span, f"unknown verb '{verb}'", hint or one_of(verbs, "verbs"))
    op = _pick_op(verbs[verb], stmt)
    m = _Mapper(c, op, verb)
    for clause in stmt.clauses:
        try:
            m.clause(clause)
        except StudyError as e:
            c.err(e)
            m.ok = False
            if isinstance(clause, ast.Marker):
                break  # the clauses after a rejected `from`/`to` would only repeat the mistake
    if not m.ok:
        return None
    values = m.resolve(stmt)
    if values is None:
        return None
    points, swept = sweep_points(values, stmt.span)
    if op.validate is not None and not _validated(c, m, op, points, stmt):
        return None
    return Call(name=name, op=op.name, points=points, sweep=swept, span=stmt.span, anonymous=anonymous)


def _validated(c: Scope, m: "_Mapper", op: OpSpec, points: tuple, stmt: ast.OpStmt) -> bool:
    """The operator's own check of each point's values (`OpSpec.validate`); errors at the option."""
    for point in points:
        try:
            op.validate(op.complete(dict(point)))
        except ValueError as e:
            option = getattr(e, "option", None)
            span = m.given[option][1] if option in m.given else stmt.span
            c.err(StudyTypeError(span, f"'{stmt.verb.text}': " + (getattr(e, "message", None) or str(e)),
                                 getattr(e, "hint", None)))
            return False
    return True


def _pick_op(ops: list[OpSpec], stmt: ast.OpStmt) -> OpSpec:
    """The verb's op whose components contain the statement's first component word. With a
    `from`/`to` marker the verb's ops that take senders and receivers are tried first, without
    one the others (`patch heads ...` vs `patch path from heads ... to heads ...`)."""
    if len(ops) == 1:
        return ops[0]
    marked = any(isinstance(cl, ast.Marker) for cl in stmt.clauses)
    ops = sorted(ops, key=lambda op: (op.param("sender") is not None) != marked)  # stable
    words = [cl.word for cl in stmt.clauses if isinstance(cl, (ast.Word, ast.WordValue))]
    for w in words:
        for op in ops:
            if w.text in op.components:
                return op
    every = sorted({x for op in ops for x in op.components})
    at = words[0].span if words else stmt.verb.span
    raise UnknownNameError(
        at,
        f"'{stmt.verb.text}' needs one of these words after it: {', '.join(every)}",
        did_you_mean(words[0].text, every) if words else None,
    )


class _Mapper:
    """Collects clause values per parameter name, then resolves them."""

    def __init__(self, c: Scope, op: OpSpec, verb: str) -> None:
        self.c, self.op, self.verb = c, op, verb
        self.given: dict[str, tuple[Any, Span]] = {}  # param -> (AST value / LayerSet / ..., span)
        self.group: dict[str, tuple[Any, Span]] | None = None  # inside `from ...` / `to ...`
        self.picked = False  # a component word of an op without a `component` param was seen
        self.ok = True

    def give(self, pname: str, value: Any, span: Span) -> None:
        grouped = ("component", "component_index", "layers", "positions")
        target = self.given if self.group is None or pname not in grouped else self.group
        if pname in target:
            first = target[pname][1]
            raise StudyTypeError(span, f"'{pname}' is given twice", f"first at line {first.line}, column {first.column}")
        target[pname] = (value, span)

    def param_or_fail(self, pname: str, clause: str, span: Span):
        if self.op.param(pname) is None:
            raise StudyTypeError(span, f"'{self.verb}' does not take {clause}",
                                 one_of([p.name for p in self.op.params], "its parameters"))

    def clause(self, cl: ast.Clause) -> None:
        op = self.op
        if isinstance(cl, ast.Link):
            pname = LINKS[cl.prep]
            w = cl.target.text
            if (cl.prep == "on" and w not in self.c.datasets and w not in self.c.declared
                    and any(p.choices and w in p.choices and p.name not in ("component", "sender", "receiver")
                            for p in op.params)):
                # `train sae on resid_post ...`: `on` before one of the op's words (a site) reads as that word
                return self.word(ast.Word(cl.target, cl.span))
            self.param_or_fail(pname, f"`{cl.prep} ...` ({pname})", cl.span)
            self.give(pname, ast.Ident(cl.target.text, cl.target.span), cl.span)
        elif isinstance(cl, ast.In):
            if self.group is None:
                self.param_or_fail("layers", "`in LAYERS`", cl.span)
            self.give("layers", cl.layers, cl.span)
        elif isinstance(cl, ast.At):
            if self.group is None:
                self.param_or_fail("positions", "`at POSITIONS`", cl.span)
            self.give("positions", cl.positions, cl.span)
        elif isinstance(cl, ast.Option):
            k = cl.key.text
            if op.param(k) is None:
                raise UnknownNameError(cl.key.span, f"'{self.verb}' has no parameter '{k}'",
                                       did_you_mean(k, [p.name for p in op.params]))
            self.give(k, cl.value, cl.span)
        elif isinstance(cl, ast.Word):
            self.word(cl)
        elif isinstance(cl, ast.WordValue):
            self.word_value(cl)
        elif isinstance(cl, ast.Marker):
            self.marker(cl)

    def word(self, cl: ast.Word) -> None:
        w, op = cl.word.text, self.op
        for p in op.params:
            # a sender's / receiver's `choices` are its component words, not flags
            if p.name not in ("component", "sender", "receiver") and p.choices and w in p.choices:
                return self.give(p.name, ast.Str(w, cl.span), cl.span)
        comp = op.param("component")
        if comp is not None and "component" not in (self.group if self.group is not None else self.given):
            return self.give("component", self.component(cl.word), cl.span)
        if comp is None and w in op.components and not self.picked:
            self.picked = True  # the word only chose this op among the verb's (`train model ...`)
            return None
        ident = ast.Ident(w, cl.span)
        for kind, table in ((spec.MODEL, self.c.models), (spec.DATASET, self.c.datasets),
                            (spec.RESULT, self.c.results)):
            if w in table:
                free = [p for p in op.params if p.type == kind and p.name not in self.given]
                if free:
                    return self.give(free[0].name, ident, cl.span)
        p = op.param(w)
        if p is not None:
            hint = (f"write the value alone ({', '.join(map(str, p.choices))}) or `{w}=VALUE`" if p.choices
                    else f"write `{w} VALUE` or `{w}=VALUE`")
            raise StudyTypeError(cl.span, f"'{w}' needs a value", hint)
        flags = [str(x) for p in op.params if p.choices and p.name != "component" for x in p.choices]
        hint = did_you_mean(w, flags + list(op.components)) or one_of(flags, "its flags")
        later = self.c.ahead.get(w)
        if later and later[1].file == cl.span.file and later[1].line > cl.span.line:
            hint = f"'{w}' is declared at line {later[1].line}, after this use; move its declaration up"
        raise UnknownNameError(cl.span, f"'{self.verb}' does not understand '{w}'", hint)

    def component(self, word: ast.Name) -> ast.Str:
        allowed = self.op.components or (self.op.param("component").choices or ())
        if allowed and word.text not in allowed:
            raise UnknownNameError(word.span, f"unknown component '{word.text}' for '{self.verb}'",
                                   did_you_mean(word.text, allowed) or one_of(allowed, "components"))
        return ast.Str(word.text, word.span)

    def word_value(self, cl: ast.WordValue) -> None:
        w, op = cl.word.text, self.op
        if w != "component" and op.param(w) is not None:
            return self.give(w, cl.value, cl.span)
        if w in op.components and op.param("component") is not None:
            self.give("component", ast.Str(w, cl.word.span), cl.span)
            if op.param("component_index") is None and self.group is None:
                raise StudyTypeError(cl.value.span, f"component '{w}' of '{self.verb}' takes no index")
            return self.give("component_index", cl.value, cl.span)
        raise UnknownNameError(cl.word.span, f"'{self.verb}' has no parameter '{w}'",
                               did_you_mean(w, [p.name for p in op.params] + list(op.components)))

    def marker(self, cl: ast.Marker) -> None:
        if self.op.param("sender") is None or self.op.param("receiver") is None:
            raise StudyTypeError(cl.span, f"'{self.verb}' does not take `from ... to ...`",
                                 "`from` and `to` are for operators with sender and receiver parameters")
        pname = "sender" if cl.word == "from" else "receiver"
        self.group = {}
        self.give(pname, self.group, cl.span)

    # -- values -------------------------------------------------------------------------------

    def resolve(self, stmt: ast.OpStmt) -> dict[str, Any] | None:
        op, c, owner = self.op, self.c, self.verb
        self.span = stmt.span
        values: dict[str, Any] = {}
        ok = True
        # MODEL / DATASET / RESULT / METRIC / scalar params first: layers need the model.
        for p in op.params:
            if p.name not in self.given or p.type in (spec.LAYERS, spec.POSITIONS) or p.name in ("sender", "receiver"):
                continue
            try:
                values[p.name] = convert(p, self.given[p.name][0], owner, c.lookup)
            except StudyError as e:
                c.err(e)
                ok = False
            except Skip:
                ok = False
        try:
            info, model = self.model_info(values)
            self.ok_model = True
        except Skip:
            info, model, ok = None, None, False
            self.ok_model = False
        if info is not None and not self.check_model(info, model):
            ok = False
        for p in op.params:
            try:
                if p.name in ("sender", "receiver") and p.name in self.given:
                    values[p.name] = self.endpoint(self.given[p.name][0], info, model, p)
                elif p.type in (spec.LAYERS, spec.POSITIONS) and p.name in self.given:
                    values[p.name] = self.sites(p, self.given[p.name][0], info, model)
            except StudyError as e:
                c.err(e)
                ok = False
            except Skip:
                ok = False
        for p in op.params:
            if p.name in values or p.name in self.given:
                continue
            if p.required:
                if p.name == "component":
                    hint = one_of(op.components, "add a component word") or "add a component word"
                elif p.name in _CLAUSE_FOR:
                    hint = f"add {_CLAUSE_FOR[p.name]}"
                else:
                    hint = f"add `{p.name} VALUE` or `{p.name}=VALUE`"
                c.err(StudyTypeError(stmt.span, f"'{self.verb}' needs its {p.name}", hint))
                ok = False
            elif p.type == spec.LAYERS and p.default == "all" and info is not None:
                values[p.name] = tuple(range(info.n_layers))
            else:
                values[p.name] = p.default
        if ok:
            ok = self.check_dataset(values)
        if ok and info is not None:
            ok = self.check_units(values, info, model)
        if ok and op.joins:
            ok = self.check_join(values)
        return values if ok else None

    def check_fits(self, gen, decl, values: dict[str, Any]) -> bool:
        """The dataset's declaration works with this statement's model (`DatasetSpec.fits`)."""
        model = next((v for p in self.op.params if p.type == spec.MODEL and isinstance(v := values.get(p.name), Ref)),
                     None)
        mdecl = self.c.models.get(decl.model or (model.name if model else ""))
        if mdecl is None:
            return True
        try:
            gen.fits(dict(decl.params), mdecl.info)
        except ValueError as e:
            at = self.given.get("dataset")
            msg = getattr(e, "message", None) or str(e)
            self.c.err(StudyTypeError(at[1] if at else self.span, f"dataset {decl.name} ({decl.generator}) does not "
                                      f"fit model {mdecl.name}: {msg}", getattr(e, "hint", None)))
            return False
        return True

    def check_units(self, values: dict[str, Any], info, model: str) -> bool:
        """Component indices (`neurons 10..20`, `from heads [0, 2] ...`) exist in the model: each is
        below the model dimension its component counts (`spec.COMPONENT_UNITS`)."""
        groups = [(values.get("component"), values.get("component_index"), self.given.get("component_index"))]
        for end in ("sender", "receiver"):
            v, g = values.get(end), self.given.get(end)
            if isinstance(v, dict) and g is not None and isinstance(g[0], dict):
                groups.append((v.get("component"), v.get("component_index"), g[0].get("component_index")))
        ok = True
        for word, index, given in groups:
            if not index or not isinstance(word, str) or word not in spec.COMPONENT_UNITS:
                continue
            dim, unit = spec.COMPONENT_UNITS[word]
            n = info.dims.get(dim, 0)
            bad = [i for i in _ints(index) if i >= n]
            if n > 0 and bad:
                span = given[1] if given else self.span
                self.c.err(StudyTypeError(span, f"{unit} {bad[0]} is out of range: model {model} has {n} {unit}s "
                                          f"per layer ({dim} = {n})", f"{unit}s of {model} run 0..{n - 1}"))
                ok = False
        return ok

    def check_join(self, values: dict[str, Any]) -> bool:
        """An op that joins two results row by row (`OpSpec.joins`, e.g. `compare A with B`): two
        different results, one node each, whose main tables have the same key columns, so that
        their rows match one to one."""
        a, b = (values.get(name) for name in self.op.joins)
        if not (isinstance(a, Ref) and isinstance(b, Ref)):
            return True
        at = self.given.get(self.op.joins[1]) or self.given.get(self.op.joins[0])
        span = at[1] if at else self.span
        if a.name == b.name:
            self.c.err(StudyTypeError(span, f"'{self.verb}' compares {a.name} with itself",
                                      "name two different results"))
            return False
        calls = [self.c.results.get(r.name) for r in (a, b)]
        if any(call is None for call in calls):
            return True
        for r, call in zip((a, b), calls):
            if len(call.points) != 1:
                self.c.err(StudyTypeError(span, f"'{self.verb}' takes results of one node each; {r.name} is a "
                                          f"sweep of {len(call.points)} points",
                                          f"compare one point: a statement of {r.name} without a list value"))
                return False
        keys = []
        for call in calls:
            fn = spec.OPS[call.op].result_keys if call.op in spec.OPS else None
            keys.append(fn(dict(call.points[0])) if fn else None)
        if keys[0] is not None and keys[1] is not None and set(keys[0]) != set(keys[1]):
            self.c.err(StudyTypeError(
                span, f"'{self.verb}' joins rows one to one, but {a.name} has one row per ({', '.join(keys[0])}) "
                f"and {b.name} one per ({', '.join(keys[1])})",
                "compare results over the same component and positions (e.g. heads with heads)"))
            return False
        return True

    def model_info(self, values: dict[str, Any]):
        """(ModelInfo, model name) of the statement's model; (None, None) when it has none.

        Raises Skip when a model is named but could not be resolved: that was reported.
        """
        for p in self.op.params:
            if p.type != spec.MODEL:
                continue
            v = values.get(p.name)
            if isinstance(v, Ref):
                decl = self.c.models.get(v.name)
                if decl is None:
                    raise Skip()
                return decl.info, v.name
            if p.name in self.given or p.required:
                raise Skip()  # unresolved or missing: its own error says so
        return None, None

    def check_model(self, info, model: str) -> bool:
        """The operator's model features (`OpSpec.model_features`) are the model's."""
        missing = [f for f in sorted(self.op.model_features) if f not in info.features]
        if not missing:
            return True
        at = next((self.given[p.name][1] for p in self.op.params if p.type == spec.MODEL and p.name in self.given),
                  self.span)
        what = "; and ".join(spec.FEATURES.get(f, f) for f in missing)
        has = ", ".join(spec.FEATURES.get(f, f).split(" (")[0] for f in sorted(info.features)) or "none of these"
        self.c.err(StudyTypeError(at, f"'{self.verb}' needs {what}; model {model} ({info.arch}) has none",
                                  f"{info.arch} models have: {has}"))
        return False

    def sites(self, p, node: Any, info, model: str | None) -> Any:
        """A LAYERS or POSITIONS param: from a clause (`in ...`, `at ...`) or an option value."""
        if p.type == spec.LAYERS:
            if not isinstance(node, ast.LayerSet):
                node = ast.LayerSet("given", node, node.span)
            if info is None:
                if not self.ok_model:
                    raise Skip()  # the model is missing or broken, and its own error says so
                raise StudyTypeError(node.span, f"'{self.verb}' needs a model to count layers", "add `of MODEL`")
            layers = layer_indices(node, info.n_layers, model)
            return Sweep(tuple((x,) for x in layers)) if p.sweepable else layers
        if not isinstance(node, ast.PositionSet):  # positions=... as an option
            word = node.name if isinstance(node, ast.Ident) else node.value if isinstance(node, ast.Str) else None
            if word in ("each", "all", "last"):
                return word
            node = ast.PositionSet("given", node, node.span)
        pos = position_value(node, info.n_ctx if info else None)
        if p.sweepable and isinstance(pos, tuple):
            return Sweep(tuple((x,) for x in pos))
        return pos

    def endpoint(self, group: dict[str, tuple[Any, Span]], info, model: str | None, p=None) -> dict[str, Any]:
        """A `from ...` / `to ...` group: {component, component_index, layers, positions} as written
        there. The sender / receiver param's `choices`, when given, are the component words it takes."""
        if not isinstance(group, dict):  # `sender=...` written as an option
            raise StudyTypeError(group.span, "senders and receivers are written `from ... to ...`",
                                 "e.g. `from heads in layer 3 to mlp in layer 5`")
        out: dict[str, Any] = {}
        for k, (node, span) in group.items():
            if k == "component":
                if p is not None and p.choices and node.value not in p.choices:
                    where = "from" if p.name == "sender" else "to"
                    raise UnknownNameError(node.span, f"'{self.verb}' takes no '{node.value}' after `{where}`",
                                           did_you_mean(node.value, p.choices) or one_of(p.choices, "it takes"))
                out[k] = node.value
            elif k == "component_index":  # `to heads [0, 3] in layer 5`
                idx = convert(spec.Param("component_index", list), node, self.verb, None)
                if not all(type(x) is int and x >= 0 for x in idx):
                    raise StudyTypeError(span, "a component index is a whole number >= 0 (or a list of them)")
                out[k] = idx
            elif k == "layers":
                if info is None:
                    if not self.ok_model:
                        raise Skip()
                    raise StudyTypeError(span, f"'{self.verb}' needs a model to count layers", "add `of MODEL`")
                out[k] = layer_indices(node, info.n_layers, model)
            else:
                out[k] = position_value(node, info.n_ctx if info else None)
        return out

    def check_dataset(self, values: dict[str, Any]) -> bool:
        """Metrics (and the op itself) need capabilities the dataset's generator provides."""
        dataset = next((v for p in self.op.params if p.type == spec.DATASET
                        and isinstance(v := values.get(p.name), Ref)), None)
        decl = self.c.datasets.get(dataset.name) if dataset else None
        if decl is None:
            return True
        gen = spec.DATASETS.get(decl.generator)
        provides = gen.provides_of(decl.params) if gen else frozenset()
        ok = True
        has_model = any(p.type == spec.MODEL and values.get(p.name) is not None for p in self.op.params)
        if gen is not None and gen.needs_model and decl.model is None and not has_model:
            # The dataset is tokenised by the model that reads it; with no model in the statement or
            # the declaration, only a study with exactly one model says which.
            models = [n for n, d in self.c.models.items() if d is not None]
            if len(models) != 1:
                at = self.given.get("dataset")
                self.c.err(StudyTypeError(
                    at[1] if at else self.span,
                    f"dataset {decl.name} needs a model's tokenizer, and this statement names no model",
                    f"add `model=NAME` to its declaration (models: {', '.join(models) or 'none declared'})"))
                return False
        if gen is not None and gen.fits is not None and not self.check_fits(gen, decl, values):
            return False
        needs = [(p.name, values[p.name], spec.METRICS[values[p.name]].requires)
                 for p in self.op.params if p.type == spec.METRIC and values.get(p.name) in spec.METRICS]
        if getattr(self.op, "requires", None):
            needs.append((None, self.verb, frozenset(self.op.requires)))
        for pname, who, requires in needs:
            missing = sorted(set(requires) - provides)
            if not missing:
                continue
            at = self.given.get(pname) or self.given.get("dataset")
            span = at[0].span if at else self.span
            words = " and ".join(CAPABILITY.get(x, x) for x in missing)
            good = [n for n, d in self.c.datasets.items() if d is not None and n != decl.name
                    and d.generator in spec.DATASETS and set(requires) <= spec.DATASETS[d.generator].provides_of(d.params)]
            kind = "metric" if pname else "operator"
            self.c.err(StudyTypeError(
                span, f"{kind} {who} needs {words}; dataset {decl.name} (generator {decl.generator}) has none",
                f"datasets that have them: {', '.join(good)}" if good else None,
            ))
            ok = False
        return ok


def _ints(value: Any) -> list[int]:
    """Every whole number in a component index: one, a list of them, or a sweep of either."""
    if isinstance(value, Sweep):
        return [i for v in value.values for i in _ints(v)]
    if isinstance(value, (list, tuple)):
        return [i for v in value for i in _ints(v)]
    return [value] if isinstance(value, int) and not isinstance(value, bool) else []


def sweep_points(values: dict[str, Any], span: Span):
    """Cartesian product of the swept params: (points, names of the swept params)."""
    swept = sorted(k for k, v in values.items() if isinstance(v, Sweep))
    n = 1
    for k in swept:
        n *= len(values[k].values)
    if n > MAX_SWEEP_POINTS:
        raise StudyTypeError(span, f"this sweep has {n} points; the limit is {MAX_SWEEP_POINTS}")
    points = []
    for combo in itertools.product(*(values[k].values for k in swept)):
        point = dict(values)
        point.update(zip(swept, combo))
        points.append(tuple(sorted(point.items())))
    return tuple(points), tuple(swept)
