"""The TextMate grammar (editor/vscode) agrees with the Lark grammar: its keywords are the
grammar's keywords, and on every example study each token Lark reads gets the matching scope
(keywords as keywords, strings as strings, numbers as numbers, comments as comments, and a
name never as a keyword, e.g. `model=m` inside a dataset's options).

The TextMate grammar is applied by a small scanner with TextMate's rule: at each point the
pattern whose match starts first wins, ties going to the pattern listed first.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from lark import Lark, Token

from mechstudy.engine.docs import grammar_keywords

ROOT = Path(__file__).resolve().parent.parent
VSCODE = ROOT / "editor" / "vscode"
GRAMMAR = json.loads((VSCODE / "syntaxes" / "study.tmLanguage.json").read_text())
LARK_TEXT = (ROOT / "lang" / "study.lark").read_text()
FENCE = re.compile(r"^```study\n(.*?)^```", re.S | re.M)


def _examples() -> list[tuple[str, str]]:
    out = [(str(p.relative_to(ROOT)), p.read_text()) for p in sorted(ROOT.glob("studies/**/*.study"))]
    for md in (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))):
        out += [(f"{md.name} block {i}", b) for i, b in enumerate(FENCE.findall(md.read_text()))]
    return out


# ---------------------------------------------------------------------------- a TextMate scanner


def _rules(patterns: list[dict]) -> list[dict]:
    out = []
    for p in patterns:
        if "include" in p:
            out += _rules([GRAMMAR["repository"][p["include"][1:]]])
        elif "match" in p or "begin" in p:
            out.append(p)
        elif "patterns" in p:
            out += _rules(p["patterns"])
    return out


RULES = _rules(GRAMMAR["patterns"])


def scopes(line: str) -> list[str]:
    """The innermost scope of each character of one line ("" where no rule applies)."""
    got = [""] * len(line)
    pos = 0
    while pos < len(line):
        best = None
        for rule in RULES:
            m = re.compile(rule.get("match") or rule["begin"]).search(line, pos)
            if m and (best is None or m.start() < best[0].start()):
                best = (m, rule)
        if best is None:
            break
        m, rule = best
        if "begin" in rule:
            end = re.compile(rule["end"]).search(line, m.end())
            stop = end.end() if end else len(line)
            got[m.start():stop] = [rule["name"]] * (stop - m.start())
            pos = max(stop, pos + 1)
            continue
        if rule.get("name"):
            got[m.start():m.end()] = [rule["name"]] * (m.end() - m.start())
        for i, cap in (rule.get("captures") or {}).items():
            if m.group(int(i)) is not None:
                got[m.start(int(i)):m.end(int(i))] = [cap["name"]] * (m.end(int(i)) - m.start(int(i)))
        pos = max(m.end(), pos + 1)
    return got


# ---------------------------------------------------------------------------- tests


def test_keywords_are_the_grammars():
    lark = set(grammar_keywords(LARK_TEXT))
    starts, words = (re.search(r"\((\w+(?:\|\w+)+)\)", p["match"]).group(1).split("|")
                     for p in GRAMMAR["repository"]["keyword"]["patterns"])
    keyword = starts + words
    constant = re.search(r"\\b\((.*)\)\\b", GRAMMAR["repository"]["constant"]["match"]).group(1).split("|")
    assert set(keyword) | set(constant) == lark and not set(keyword) & set(constant)
    assert set(constant) == {"true", "false"}
    verb_exclusions = re.search(r"\(\?:(.*?)\)", GRAMMAR["repository"]["verb"]["match"]).group(1).split("|")
    assert set(verb_exclusions) == lark  # a line starting with a keyword never reads as a verb


def test_vscode_extension_points_at_the_grammar():
    pkg = json.loads((VSCODE / "package.json").read_text())
    lang, = pkg["contributes"]["languages"]
    gram, = pkg["contributes"]["grammars"]
    assert lang["extensions"] == [".study"] and gram["scopeName"] == GRAMMAR["scopeName"] == "source.study"
    assert (VSCODE / gram["path"]).resolve() == (VSCODE / "syntaxes" / "study.tmLanguage.json").resolve()
    conf = json.loads((VSCODE / lang["configuration"]).read_text())
    assert conf["comments"]["lineComment"] == "#"


def _lark_tokens(text: str) -> list[Token]:
    comments: list[Token] = []
    parser = Lark(LARK_TEXT, parser="lalr", lexer="contextual", keep_all_tokens=True, propagate_positions=True,
                  maybe_placeholders=False, lexer_callbacks={"COMMENT": comments.append})
    tree = parser.parse(text if text.endswith("\n") else text + "\n")
    return [t for t in tree.scan_values(lambda v: isinstance(v, Token))] + comments


KEYWORD_TYPES = {m.group(1): m.group(2) for m in re.finditer(r'^([A-Z_]+):\s*"([a-z]+)"\s*$', LARK_TEXT, re.M)}


def _expected(tok: Token) -> str | None:
    if tok.type in KEYWORD_TYPES:
        return "constant.language" if tok.value in ("true", "false") else "keyword.control"
    return {"STRING": "string.quoted", "INT": "constant.numeric", "FLOAT": "constant.numeric",
            "COMMENT": "comment.line", "EQUAL": "keyword.operator.assignment", "DOTDOT": "keyword.operator.range",
            "COMMA": "punctuation", "LPAR": "punctuation", "RPAR": "punctuation", "LSQB": "punctuation",
            "RSQB": "punctuation"}.get(tok.type)


@pytest.mark.parametrize("name,text", _examples(), ids=[n for n, _ in _examples()])
def test_every_token_of_the_examples_gets_its_scope(name, text):
    lines = text.split("\n")
    cache: dict[int, list[str]] = {}
    checked = 0
    for tok in _lark_tokens(text):
        if tok.type in ("_NL", "NL") or not tok.value.strip():
            continue
        line = cache.setdefault(tok.line, scopes(lines[tok.line - 1]))
        got = {line[i] for i in range(tok.column - 1, tok.column - 1 + len(tok.value))}
        assert len(got) == 1, (name, tok, got)
        scope = got.pop()
        want = _expected(tok)
        if want is not None:
            assert scope.startswith(want), (name, tok.line, tok.value, tok.type, scope)
        else:  # a NAME: a verb, a reference, an option ... never a keyword, string, number or comment
            assert tok.type == "NAME", tok
            assert not scope.startswith(("keyword", "string", "constant", "comment")), (name, tok.line, tok.value, scope)
        checked += 1
    assert checked > 0


def test_scanner_scopes_a_line():
    s = scopes('heads = patch heads in layers 0..2 of m on ioi with kl chunk=4  # hi')
    line = 'heads = patch heads in layers 0..2 of m on ioi with kl chunk=4  # hi'

    def at(word: str) -> str:
        return s[line.index(word)]

    assert at("heads") == "variable.other.definition.study" and at("patch") == "entity.name.function.verb.study"
    assert at("layers") == "keyword.control.study" and at("0..") == "constant.numeric.study"
    assert at("ioi") == "variable.other.reference.study" and at("chunk") == "variable.parameter.study"
    assert at("# hi") == "comment.line.number-sign.study"
