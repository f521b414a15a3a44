"""Checking: names, clause mapping, defaults, types, layers, metrics vs datasets, sweeps, `use`."""

from __future__ import annotations

import pytest
from lang_fakes import GPT2, TINY, file_generator, registry  # noqa: F401  (registry is a fixture)

from mechstudy.engine.spec import OpSpec, Param
from mechstudy.lang import StudyErrors, StudyTypeError, UnknownNameError, check, check_file
from mechstudy.lang.resolved import Ref, Span

HEAD = """\
model gpt2 = hf "gpt2"
model m = zoo "tiny" dtype=bfloat16
dataset ioi = ioi(n=128, seed=0)
dataset sst = sentiment(n=8, model=m)
"""


def resolve(body: str):
    return check(HEAD + body, "t.study")


def call(body: str):
    (c,) = resolve(body).calls
    return c


def point(body: str) -> dict:
    c = call(body)
    assert len(c.points) == 1
    return dict(c.points[0])


def errors(text: str, path: str = "t.study"):
    with pytest.raises(StudyErrors) as info:
        check(text, path)
    return info.value.errors


def head_errors(body: str):
    return errors(HEAD + body)


# -- declarations -------------------------------------------------------------------------


def test_declarations_resolve(registry):
    r = check('study "IOI heads" version 1\n' + HEAD, "t.study")
    assert r.title == "IOI heads" and r.grammar_version == 1 and r.path == "t.study"
    g, m = r.models["gpt2"], r.models["m"]
    assert (g.source, g.ref, g.info) == ("hf", "gpt2", GPT2)
    assert g.options == (("dtype", "float32"), ("revision", "main"))
    assert m.options == (("dtype", "bfloat16"), ("revision", "main")) and m.info == TINY
    assert m.span == Span("t.study", 3, 1, 3, 36)
    assert r.datasets["ioi"].params == (("n", 128), ("seed", 0))
    assert r.datasets["ioi"].model is None
    assert r.datasets["sst"].params == (("n", 8), ("split", "train")) and r.datasets["sst"].model == "m"
    assert r.calls == () and r.plots == ()


def test_default_title_is_the_file_stem(registry):
    assert check("", "studies/ioi.study").title == "ioi"


def test_describe_lookup_error_becomes_a_study_error(registry):
    (e,) = errors('model g = hf "gpt-3"\n')
    assert isinstance(e, UnknownNameError)
    assert e.message == "model 'gpt-3' is not in the local cache; download it with `hf download gpt-3`"
    assert e.span == Span("t.study", 1, 1, 1, 21) and e.hint == "did you mean 'gpt2'?"


def test_unknown_model_source_and_options(registry):
    errs = errors('model a = hff "gpt2"\nmodel b = hf "gpt2" dtype=float33 dtpe=x\n')
    assert [(e.span.line, e.span.column, e.message, e.hint) for e in errs] == [
        (1, 11, "unknown model source 'hff'", "did you mean 'hf'?"),
        (2, 27, "model source hf: 'dtype' must be one of float32, bfloat16, float16; got 'float33'",
         "did you mean 'float32'?"),
        (2, 35, "model source hf has no option 'dtpe'", "did you mean 'dtype'?"),
    ]


def test_dataset_generator_and_params(registry):
    errs = errors("dataset a = iio(n=3)\ndataset b = ioi(n=1.5, sed=0)\ndataset c = ioi(n=1, n=2)\n")
    assert [(e.span.line, e.message, e.hint) for e in errs] == [
        (1, "unknown dataset generator 'iio'", "did you mean 'ioi'?"),
        (2, "dataset ioi: 'n' takes a whole number, not 1.5", None),
        (2, "dataset ioi has no option 'sed'", "did you mean 'seed'?"),
        (3, "option 'n' is given twice", "first at line 3"),
    ]


def test_file_dataset(registry, monkeypatch):
    text = HEAD + 'dataset f = file "data/x.parquet" text=prompt\n'
    (e,) = errors(text)
    assert e.message == "unknown dataset generator 'file'" and e.span.column == 13
    registry.DATASETS["file"] = file_generator()
    d = check(text, "t.study").datasets["f"]
    assert (d.generator, d.params) == ("file", (("label", None), ("path", "data/x.parquet"), ("text", "prompt")))
    (e,) = errors(HEAD + 'dataset g = ioi "x.parquet"\n')
    assert e.message == "generator 'ioi' does not read a file"


def test_names_are_one_namespace_and_duplicates_are_errors(registry):
    errs = head_errors("dataset m = ioi()\nheads = evaluate of m on ioi with kl\nheads = evaluate of m on ioi with kl\n")
    assert [(e.span.line, e.span.column, e.message) for e in errs] == [
        (5, 9, "'m' is already declared (as a model at t.study:2)"),
        (7, 1, "'heads' is already declared (as a result at t.study:6)"),
    ]


def test_keywords_and_reserved_names(registry):
    errs = errors('model in = hf "gpt2"\nmodel _x = hf "gpt2"\n')
    assert [e.message for e in errs] == [
        "'in' is a keyword and cannot name a model",
        "names starting with '_' are reserved; rename '_x'",
    ]


# -- operator statements ------------------------------------------------------------------


def test_signature_sentence(registry):
    p = point("patch heads in layer 9 of gpt2 on ioi with logit_diff\n")
    assert p == {
        "component": "heads", "component_index": None, "layers": (9,), "positions": "all",
        "model": Ref("model", "gpt2"), "dataset": Ref("dataset", "ioi"), "metric": "logit_diff",
        "direction": "denoising", "chunk": 16,
    }


def test_anonymous_statement_name_and_span(registry):
    c = call("\npatch heads in layer 9 of gpt2 on ioi with logit_diff\n")
    assert (c.name, c.anonymous, c.op, c.sweep) == ("_L6", True, "patch", ())
    assert c.span == Span("t.study", 6, 1, 6, 54)
    assert [k for k, _ in c.points[0]] == sorted(k for k, _ in c.points[0])


def test_every_position_all_layers_and_flag(registry):
    p = point("patch resid at every position in all layers of m on ioi with kl noising\n")
    assert (p["positions"], p["layers"], p["direction"], p["metric"]) == ("each", (0, 1), "noising", "kl")


@pytest.mark.parametrize("clause, layers", [
    ("layer 9", (9,)), ("layers 0..5", (0, 1, 2, 3, 4, 5)), ("layers [1, 3]", (1, 3)),
    ("all layers", tuple(range(12))), ("every layer", tuple(range(12))), ("layers 11", (11,)),
])
def test_layer_sets_expand_against_the_model(registry, clause, layers):
    assert point(f"patch heads in {clause} of gpt2 on ioi with kl\n")["layers"] == layers


def test_layers_default_all_is_expanded(registry):
    assert point("patch heads of m on ioi with kl\n")["layers"] == (0, 1)


@pytest.mark.parametrize("clause, positions", [
    ("every position", "each"), ("all positions", "all"), ("last position", "last"),
    ("position 3", (3,)), ("positions [1, 2]", (1, 2)), ("positions 0..4", (0, 1, 2, 3, 4)),
])
def test_position_sets(registry, clause, positions):
    assert point(f"patch resid at {clause} of gpt2 on ioi with kl\n")["positions"] == positions


def test_layer_out_of_range_says_the_models_range(registry):
    (e,) = head_errors("patch heads in layer 9 of m on ioi with kl\n")
    assert isinstance(e, StudyTypeError)
    assert (e.span.line, e.span.column, e.span.end_column) == (5, 22, 23)
    assert e.message == "layer 9 is out of range: model m has 2 layers"
    assert e.hint == "layers of m run 0..1"
    (e,) = head_errors("patch heads in layers 0..40 of gpt2 on ioi with kl\n")
    assert e.message == "layer 40 is out of range: model gpt2 has 12 layers" and e.span.column == 26
    (e,) = head_errors("patch heads in layers [1, -1] of gpt2 on ioi with kl\n")
    assert e.message == "layers count from 0; got -1"


def test_position_checked_against_context_length(registry):
    (e,) = head_errors("patch resid at position 1024 of gpt2 on ioi with kl\n")
    assert e.message == "position 1024 is out of range: the model's context has 1024 positions"


def test_first_bare_word_is_the_model_when_the_op_has_no_component(registry):
    assert point("evaluate m on ioi with logit_diff\n") == {
        "model": Ref("model", "m"), "dataset": Ref("dataset", "ioi"), "metric": "logit_diff"}


def test_component_with_value_sets_component_index(registry):
    c = call("n = patch neurons 10..12 in layer 1 of m on ioi with kl\n")
    assert c.sweep == ("component_index",)
    assert [dict(p)["component_index"] for p in c.points] == [10, 11, 12]
    assert {dict(p)["component"] for p in c.points} == {"neurons"}


def test_word_value_and_option_and_using(registry):
    p = point("c = discover circuit of m on ioi with kl threshold 0.5 using eap\n")
    assert (p["component"], p["threshold"], p["method"]) == ("circuit", 0.5, "eap")
    assert point("discover circuit of m on ioi with kl threshold=1 method=eap\n")["threshold"] == 1.0


def test_verb_with_several_ops_picks_by_component(registry):
    r = resolve("t = train toy steps 5\np = train probe of m on sst in layer 1\n")
    assert [c.op for c in r.calls] == ["train_toy", "train_probe"]
    assert dict(r.calls[0].points[0]) == {"component": "toy", "steps": 5, "lr": 1e-3, "sparsity": [0.0]}
    (e,) = head_errors("train tyo\n")
    assert e.message == "'train' needs one of these words after it: model, probe, toy"
    assert e.hint == "did you mean 'toy'?"


def test_component_word_of_an_op_without_component_param(registry):
    c = call("lm = train model using attn2 steps=20\n")
    assert c.op == "train_lm" and dict(c.points[0]) == {"method": "attn2", "steps": 20}
    (e,) = head_errors("lm = train model model using attn2\n")
    assert e.message == "'train' does not understand 'model'"


def test_list_typed_params_take_a_list_or_one_value(registry):
    assert point("t = train toy sparsity=[0, 0.9]\n")["sparsity"] == (0.0, 0.9)
    assert point("t = train toy sparsity=0.5\n")["sparsity"] == (0.5,)
    assert point("t = train toy sparsity 0..2\n")["sparsity"] == (0, 1, 2)


def test_clauses_an_op_does_not_take(registry):
    errs = head_errors("evaluate m on ioi with kl in layer 0 at last position\n")
    assert [(e.span.column, e.message) for e in errs] == [
        (27, "'evaluate' does not take `in LAYERS`"), (38, "'evaluate' does not take `at POSITIONS`")]
    assert errs[0].hint == "its parameters: dataset, metric, model"


def test_param_word_without_value(registry):
    errs = head_errors("patch heads of m on ioi with kl direction noising\ndiscover circuit of m on ioi threshold\n")
    assert [(e.message, e.hint) for e in errs] == [
        ("'direction' needs a value", "write the value alone (denoising, noising) or `direction=VALUE`"),
        ("'threshold' needs a value", "write `threshold VALUE` or `threshold=VALUE`"),
    ]


def test_missing_component(registry):
    (e,) = head_errors("patch of m on ioi with kl\n")
    assert (e.message, e.hint) == ("'patch' needs its component",
                                   "add a component word: attn, heads, mlp, neurons, resid")


def test_positions_and_layers_as_options(registry):
    p = point("patch resid of gpt2 on ioi with kl positions=last layers=[0, 2]\n")
    assert (p["positions"], p["layers"]) == ("last", (0, 2))
    assert point("patch resid of gpt2 on ioi with kl positions=0..2\n")["positions"] == (0, 1, 2)


def test_result_refs_must_be_named_and_declared_above(registry):
    r = resolve("a = evaluate m on ioi with kl\nb = evaluate gpt2 on ioi with kl\ncmp = compare a b\n")
    assert dict(r.calls[2].points[0]) == {"a": Ref("result", "a"), "b": Ref("result", "b"), "label": ""}
    (e,) = head_errors("cmp = compare r1\nr1 = evaluate m on ioi with kl\n")
    # `r1` is not declared yet, so the bare word is not understood.
    assert e.message == "'compare' does not understand 'r1'"
    assert e.hint == "'r1' is declared at line 6, after this use; move its declaration up"
    e, e2 = head_errors("cmp = compare a=later b=later\nlater = evaluate m on ioi with kl\n")
    assert (e.span.column, e2.span.column) == (17, 25)
    assert e.message == "unknown result 'later'"
    assert e.hint == "'later' is declared at line 6, after this use; move its declaration up"


def test_from_to_groups(registry):
    p = point("tr = trace from heads in layer 1 to mlp in layer 0 at last position of m on ioi with kl\n")
    assert p["sender"] == {"component": "heads", "layers": (1,)}
    assert p["receiver"] == {"component": "mlp", "layers": (0,), "positions": "last"}
    assert p["component"] == "path"
    (e,) = head_errors("patch heads from heads to mlp of m on ioi with kl\n")
    assert e.message == "'patch' does not take `from ... to ...`" and e.span.column == 13


def test_missing_required_params_say_which_clause_to_add(registry):
    errs = head_errors("patch heads in layer 1\n")
    assert [(e.message, e.hint) for e in errs] == [
        ("'patch' needs its model", "add `of MODEL`"),
        ("'patch' needs its dataset", "add `on DATASET`"),
        ("'patch' needs its metric", "add `with METRIC`"),
    ]
    assert errs[0].span == Span("t.study", 5, 1, 5, 23)


# -- did you mean -------------------------------------------------------------------------


@pytest.mark.parametrize("body, message, hint", [
    ("pach heads of m on ioi with kl", "unknown verb 'pach'", "did you mean 'patch'?"),
    ("patch headz of m on ioi with kl", "unknown component 'headz' for 'patch'", "did you mean 'heads'?"),
    ("patch heads of m on ioi with logit_dif", "unknown metric 'logit_dif'", "did you mean 'logit_diff'?"),
    ("patch heads of gtp2 on ioi with kl", "unknown model 'gtp2'", "did you mean 'gpt2'?"),
    ("patch heads of m on ioj with kl", "unknown dataset 'ioj'", "did you mean 'ioi'?"),
    ("patch heads of m on ioi with kl noisin", "'patch' does not understand 'noisin'", "did you mean 'noising'?"),
    ("patch heads of m on ioi with kl chunks=3", "'patch' has no parameter 'chunks'", "did you mean 'chunk'?"),
    ("discover circuit of m on ioi with kl threshhold 0.1", "'discover' has no parameter 'threshhold'",
     "did you mean 'threshold'?"),
    ("discover circuit of m on ioi with kl using acdd", "discover: 'method' must be one of acdc, eap; got 'acdd'",
     "did you mean 'acdc'?"),
    ("patch heads of on ioi with kl", "unknown model 'on'", "'on' is a keyword: the model's name is missing"),
    ("patch heads of ioi on ioi with kl", "'ioi' is a dataset, not a model", None),
])
def test_did_you_mean(registry, body, message, hint):
    (e,) = head_errors(body + "\n")
    assert (e.message, e.hint) == (message, hint)
    assert e.span.line == 5


def test_plot_names_and_kinds(registry):
    r = resolve('h = patch heads of m on ioi with kl\nplot h as heatmap titled "Heads"\nplot h as line\n')
    assert [(p.target, p.kind, p.title) for p in r.plots] == [("h", "heatmap", "Heads"), ("h", "line", None)]
    errs = head_errors("h = patch heads of m on ioi with kl\nplot hh as heatmap\nplot h as hetmap\nplot m as line\n")
    assert [(e.message, e.hint) for e in errs] == [
        ("unknown result 'hh'", "did you mean 'h'?"),
        ("unknown chart kind 'hetmap'", "did you mean 'heatmap'?"),
        ("'m' is a model, not a result", "plot the result of a named statement"),
    ]


# -- metric vs dataset --------------------------------------------------------------------


def test_metric_needs_what_the_dataset_provides(registry):
    (e,) = head_errors("patch heads of m on sst with logit_diff\n")
    assert e.message == "metric logit_diff needs answer tokens; dataset sst (generator sentiment) has none"
    assert e.hint == "datasets that have them: ioi"
    assert (e.span.line, e.span.column, e.span.end_column) == (5, 30, 40)
    assert point("patch heads of m on sst with kl\n")["metric"] == "kl"


def test_op_requirements_are_checked_when_declared(registry, monkeypatch):
    probe = registry.OPS["train_probe"]
    registry.OPS["train_probe"] = OpSpec(**{**probe.__dict__})
    object.__setattr__(registry.OPS["train_probe"], "requires", frozenset({"labels"}))
    (e,) = head_errors("train probe of m on ioi in layer 0\n")
    assert e.message == "operator train needs labels; dataset ioi (generator ioi) has none"
    assert point("train probe of m on sst in layer 0\n")["layers"] == (0,)


def test_model_features_are_checked_with_the_models_span(registry):
    # An encoder is no causal language model: patching next-token metrics on it is refused at check time.
    (e,) = errors(HEAD + 'model enc = hf "bert"\npatch heads of enc on ioi with kl\n')
    assert e.message == "'patch' needs a causal language model (next-token predictions); and an unembedding " \
                        "(a language-model head that gives logits); model enc (bert) has none"
    assert e.hint == "bert models have: none of these"
    assert (e.span.line, e.span.column) == (6, 13)  # `of enc`
    assert point("patch heads of m on ioi with kl\n")["metric"] == "kl"  # a causal LM passes


def test_dataset_needing_a_tokenizer_must_know_its_model_at_check_time(registry, monkeypatch):
    ds = registry.DATASETS["ioi"]
    monkeypatch.setitem(registry.DATASETS, "ioi", ds.__class__(**{**ds.__dict__, "needs_model": True}))
    monkeypatch.setitem(registry.OPS, "stats", OpSpec(name="stats", version=1, params=(Param("dataset", "dataset"),),
                                                      run=lambda *a: None, verb="stats"))
    (e,) = head_errors("stats ioi\n")  # two models declared, none named: which tokenizer?
    assert e.message == "dataset ioi needs a model's tokenizer, and this statement names no model"
    assert "model=NAME" in e.hint and "gpt2, m" in e.hint
    assert check('model m = zoo "tiny"\ndataset ioi = ioi(n=4)\nstats ioi\n', "t.study").calls  # one model: it


# -- sweeps -------------------------------------------------------------------------------


def test_sweep_list_and_cartesian_product(registry):
    c = call("s = discover circuit of m on ioi with kl threshold [0.01, 0.1]\n")
    assert c.sweep == ("threshold",) and [dict(p)["threshold"] for p in c.points] == [0.01, 0.1]
    c = call("s = patch neurons [1, 2] in layer 0 of m on ioi with kl\n")
    assert [dict(p)["component_index"] for p in c.points] == [1, 2]
    registry.OPS["discover"] = OpSpec(**{**registry.OPS["discover"].__dict__, "params": (
        *registry.OPS["discover"].params, Param("seed", int, 0, sweepable=True))})
    c = call("s = discover circuit of m on ioi with kl threshold [0.1, 0.2] seed 0..2\n")
    assert c.sweep == ("seed", "threshold")
    assert [(dict(p)["seed"], dict(p)["threshold"]) for p in c.points] == [
        (0, 0.1), (0, 0.2), (1, 0.1), (1, 0.2), (2, 0.1), (2, 0.2)]


def test_sweepable_layers_make_one_point_per_layer(registry):
    c = call("s = scan resid in all layers of m on ioi with kl\n")
    assert c.sweep == ("layers",) and [dict(p)["layers"] for p in c.points] == [(0,), (1,)]


def test_sweep_of_a_non_sweepable_param_is_a_type_error(registry):
    (e,) = head_errors("patch heads of m on ioi with kl chunk=[1, 2]\n")
    assert isinstance(e, StudyTypeError)
    assert e.message == "patch: 'chunk' takes one value, not a list"
    assert e.hint == "'chunk' is not sweepable; give a single value"
    (e,) = head_errors("discover circuit of m on ioi with kl threshold 0.1..0.5\n")
    assert e.message == "a range runs over whole numbers"


def test_type_errors(registry):
    errs = head_errors(
        'patch heads of m on ioi with kl chunk=1.5\n'
        'discover circuit of m on ioi with kl threshold "x"\n'
        "patch heads of m on ioi with kl direction=3\n"
        "patch heads of m on ioi with kl chunk=true\n"
    )
    assert [e.message for e in errs] == [
        "patch: 'chunk' takes a whole number, not 1.5",
        "discover: 'threshold' takes a number, not the string \"x\"",
        "patch: 'direction' takes a word or a string, not 3",
        "patch: 'chunk' takes a whole number, not true",
    ]


# -- collection, registries, files --------------------------------------------------------


def test_every_error_in_a_file_is_collected_and_broken_names_stay_quiet(registry):
    text = (
        'model g = hf "gpt-3"\n'  # 1: describe fails
        "dataset d = ioi(n=1.5)\n"  # 2: type error
        "a = patch heads in layer 3 of g on d with kl\n"  # 3: broken model and dataset: quiet
        "b = patch headz of g on d with kl\n"  # 4: component error only
        "plot a as heatmap\n"  # 5: `a` is declared (broken): quiet
        "plot zz as heatmap\n"  # 6
    )
    errs = errors(text)
    assert [(e.span.line, type(e).__name__) for e in errs] == [
        (1, "UnknownNameError"), (2, "StudyTypeError"), (4, "UnknownNameError"), (6, "UnknownNameError")]


def test_registries_are_read_at_call_time(registry):
    registry.METRICS.pop("kl")
    (e,) = head_errors("patch heads of m on ioi with kl\n")
    assert e.message == "unknown metric 'kl'"


def test_use_includes_declarations_and_named_results(registry, tmp_path):
    (tmp_path / "common.study").write_text(
        'study "common" version 1\n' + HEAD + "base = evaluate m on ioi with kl\nevaluate m on ioi with kl\n"
        "plot base as line\n"
    )
    main = tmp_path / "main.study"
    main.write_text('use "common.study"\nh = patch heads of m on ioi with kl\nplot base as heatmap\n')
    r = check_file(main)
    assert list(r.models) == ["gpt2", "m"] and list(r.datasets) == ["ioi", "sst"]
    assert [c.name for c in r.calls] == ["base", "h"]  # the anonymous statement stays in common
    assert r.calls[0].span.file == str(tmp_path / "common.study")
    assert [(p.target, p.kind) for p in r.plots] == [("base", "heatmap")]
    assert r.title == "main"


def test_use_errors(registry, tmp_path):
    (tmp_path / "common.study").write_text('model m = zoo "tiny"\nx = patch heads of m on nope with kl\n')
    (tmp_path / "loop.study").write_text('use "main.study"\n')
    main = tmp_path / "main.study"
    main.write_text('use "comon.study"\nuse "common.study"\nuse "loop.study"\nmodel m = hf "gpt2"\n')
    with pytest.raises(StudyErrors) as info:
        check_file(main)
    got = [(e.span.file.split("/")[-1], e.span.line, e.message, e.hint) for e in info.value.errors]
    assert got == [
        ("common.study", 2, "unknown dataset 'nope'", "declare it first: `dataset nope = GENERATOR(...)`"),
        ("loop.study", 1, "main.study uses itself (through `use`)", None),
        ("main.study", 1, f"no such file: {tmp_path / 'comon.study'}", "did you mean 'common.study'?"),
        ("main.study", 4, "'m' is already declared (as a model at " + str(tmp_path / "common.study") + ":1)", "pick another name"),
    ]
    rendered = info.value.render()
    assert "  x = patch heads of m on nope with kl\n" in rendered  # sources of used files are kept


def test_check_file_missing(registry, tmp_path):
    with pytest.raises(StudyErrors) as info:
        check_file(tmp_path / "nope.study")
    assert info.value.render() == f"error: {tmp_path / 'nope.study'}: no such file"


def test_grammar_version_too_new(registry):
    (e,) = errors('study "x" version 2\n')
    assert e.message == "this study is written in grammar version 2; this mechstudy reads version 1"
    assert (e.span.column, e.hint) == (19, "upgrade mechstudy")


def test_floats_must_be_finite(registry):
    (e,) = head_errors("discover circuit of m on ioi with kl threshold 1e999\n")
    assert e.message == "discover: 'threshold' is out of the range of a float"


def test_dataset_model_option_twice(registry):
    (e,) = head_errors("dataset d = ioi(model=m, model=gpt2)\n")
    assert (e.message, e.span.column) == ("option 'model' is given twice", 26)


def test_sender_as_an_option_is_explained(registry):
    (e,) = head_errors("t = trace sender=3 to mlp in layer 0 of m on ioi with kl\n")
    assert e.message == "senders and receivers are written `from ... to ...`"


def test_on_before_one_of_the_ops_words_reads_as_that_word(registry, monkeypatch):
    # `train sae on resid_post ...`: `on` names a dataset, unless it precedes a word the op takes.
    monkeypatch.setitem(registry.OPS, "fit", OpSpec(
        name="fit", version=1, run=lambda *a: None, verb="fit",
        params=(Param("site", str, None, choices=("resid_post", "mlp_out")), Param("model", "model"),
                Param("dataset", "dataset", None))))
    p = point("fit on resid_post of m\n")
    assert p["site"] == "resid_post" and p["dataset"] is None
    p = point("fit on ioi of m\n")
    assert p["dataset"] == Ref("dataset", "ioi") and p["site"] is None
    (e,) = head_errors("fit on nothing of m\n")  # neither a dataset nor a word of the op
    assert e.message == "unknown dataset 'nothing'"
