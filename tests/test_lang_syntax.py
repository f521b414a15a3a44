"""Syntax errors: labelled snippets keep their labels, spans are exact, every bad line is reported."""

from __future__ import annotations

import pytest

from mechstudy.lang import StudyErrors, StudySyntaxError, parse
from mechstudy.lang.syntax_examples import EXAMPLES

CASES = [(ex.label, ex.message, s) for ex in EXAMPLES for s in ex.snippets]


def errors_of(text: str, path: str = "t.study"):
    with pytest.raises(StudyErrors) as info:
        parse(text, path)
    assert all(isinstance(e, StudySyntaxError) for e in info.value.errors)
    return info.value.errors


@pytest.mark.parametrize("label, message, snippet", CASES, ids=[f"{c[0]}:{c[2]}" for c in CASES])
def test_snippet_gets_its_label(label, message, snippet):
    # Alone, and after a valid statement (a different parser stack depth).
    lines = snippet.count("\n")
    for text, line in ((snippet, 1 + lines), ('model m = hf "gpt2"\n' + snippet, 2 + lines)):
        (err,) = errors_of(text)
        assert err.message.startswith(message), (label, err.message)
        assert err.span.line == line


def test_labels_are_unique():
    labels = [ex.label for ex in EXAMPLES]
    assert len(labels) == len(set(labels))


def test_missing_model_after_of_span_and_render():
    (err,) = errors_of("x = patch heads of\n")
    assert (err.span.line, err.span.column) == (1, 19)
    assert err.render("x = patch heads of\n") == (
        "t.study:1:19: error: `of` needs a model name, e.g. `of gpt2` (found end of line)\n"
        "  x = patch heads of\n"
        "                    ^"
    )


def test_unclosed_string_is_underlined_to_end_of_line():
    (err,) = errors_of('study "Which heads\n')
    assert err.message == "unclosed string"
    assert (err.span.column, err.span.end_column) == (7, 19)
    assert err.render('study "Which heads\n').splitlines()[1:] == [
        '  study "Which heads',
        "        ^~~~~~~~~~~~",
        '  hint: close it with a double quote on the same line: "..."',
    ]


def test_unclosed_string_in_an_unlisted_place():
    (err,) = errors_of('patch heads with kl "x\n')
    assert err.message == "unclosed string"


def test_model_with_nothing():
    (err,) = errors_of("model m = ")
    assert err.message.startswith("a model declaration needs a source kind and a reference")
    assert err.hint.startswith('model gpt2 = hf "gpt2"')


def test_open_range():
    (err,) = errors_of("patch heads in layers 3..\n")
    assert err.message == "a range needs both ends: `3..5` (found end of line)"
    assert (err.span.line, err.span.column) == (1, 26)


def test_stray_character():
    (err,) = errors_of("patch heads ; of m")
    assert err.message == "unexpected character ';'"
    assert (err.span.column, err.span.end_column) == (13, 14)


def test_unmatched_error_names_what_was_expected_without_anon_terminals():
    (err,) = errors_of("patch heads in layer 9 of gpt2 on ioi with logit_diff )")
    assert err.message == (
        "unexpected ')'; expected one of 'at', 'from', 'in', 'of', 'on', 'over', 'to', 'using', 'with', a name, end of line"
    )
    assert "__ANON" not in err.message


def test_every_bad_line_is_reported():
    text = (
        'model m = hf "gpt2"\n'
        "patch heads of\n"  # 2
        "patch heads in layer 9 of m\n"  # fine
        "dataset d = ioi(n=\n"  # 4
        "plot x heatmap\n"  # 5
        "c = discover circuit \\\n"  # 6-7: a continued statement
        "  of m with\n"
        'study "x\n'  # 8
    )
    errs = errors_of(text)
    assert [(e.span.line, e.span.column) for e in errs] == [(2, 15), (4, 19), (5, 8), (7, 12), (8, 7)]
    assert errs[1].message.startswith("missing value after `=`")
    assert errs[3].message.startswith("`with` needs a metric name")


def test_error_at_end_of_file_without_newline():
    (err,) = errors_of("plot heads as")
    assert (err.span.line, err.span.column) == (1, 14)
    assert err.message.startswith("`plot ... as` needs a chart kind")


def test_tabs_keep_the_caret_aligned():
    (err,) = errors_of("\tpatch heads of\n")
    assert err.render("\tpatch heads of\n").splitlines()[1:] == ["  \tpatch heads of", "  \t              ^"]


def test_errors_inside_the_transformer_are_unwrapped(monkeypatch):
    from mechstudy.lang import parser
    from mechstudy.lang.resolved import Span

    def boom(self, *args):
        raise StudySyntaxError(Span("t.study", 1, 1, 1, 4), "bad use")

    monkeypatch.setattr(parser._ToAst, "use", boom)
    (err,) = errors_of('use "x.study"\n')  # a StudyErrors, not Lark's VisitError
    assert err.message == "bad use"


def test_absurd_numbers_and_nesting_are_errors_not_tracebacks():
    (err,) = errors_of("patch heads k=" + "9" * 5000)
    assert err.message == "this number is too long (5000 characters)" and err.span.column == 15
    (err,) = errors_of("patch heads k=" + "[" * 3000 + "]" * 3000)
    assert err.message == "values nested more than 100 deep"
