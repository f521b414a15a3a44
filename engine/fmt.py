"""`study fmt`: the canonical layout of a .study file, comments kept.

The text is checked by the parser first (a file with a syntax error is reported, not
formatted); then each line is re-spaced from its tokens, so formatting can only change
whitespace (the tests check that the token sequence and the plan are unchanged). The rules:

- one space between words; none inside brackets, before a comma or around ``..``; one after
  a comma; ``k=v`` options without spaces; `` = `` binding a name (``model m = ...``,
  ``dataset d = gen(...)``, ``corpus c = text "..."``, ``heads = patch ...``);
- in a block of named statements (lines between blank lines), the ``=`` signs line up;
- trailing comments on consecutive lines line up, two spaces after the longest code; comment
  lines start at column 0;
- a continued statement (``\\`` at the end of a line) goes on with four spaces of indent;
- at most one blank line in a row, none at the start or end; the file ends with a newline.

>>> print(format_text('model m=zoo  "mini"\\nh=patch heads in layers 0 .. 1 of m on d with kl  chunk = 4 # hi\\n'), end="")
model m = zoo "mini"
h = patch heads in layers 0..1 of m on d with kl chunk=4  # hi
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TOKEN = re.compile(r"""
    (?P<string>"([^"\\\n]|\\[^\n])*")
  | (?P<comment>\#[^\n]*)
  | (?P<cont>\\[ \t]*$)
  | (?P<number>-?\d+(\.\d+)?([eE][-+]?\d+)?)
  | (?P<dots>\.\.)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[=,()\[\]])
  | (?P<space>[ \t\f]+)
  | (?P<other>.)
""", re.X)

_OPEN, _CLOSE = "([", ")]"
_DECLARATIONS = ("model", "dataset", "corpus")  # `KEYWORD NAME = ...`: the "=" binds a name


@dataclass(frozen=True)
class Tok:
    kind: str
    text: str


def tokens(line: str) -> list[Tok]:
    """The tokens of one physical line (spaces dropped)."""
    out = []
    for m in _TOKEN.finditer(line):
        kind = m.lastgroup or "other"
        if kind != "space":
            out.append(Tok(kind, m.group(0).rstrip() if kind in ("comment", "cont") else m.group(0)))
    return out


def _binding_eq(toks: list[Tok], i: int) -> bool:
    """Is toks[i] (an '=') the one binding a name, rather than an option's?"""
    words = [t.text for t in toks[:i]]
    if len(words) == 1 and toks[0].kind == "name":
        return True  # NAME = VERB ...
    return len(words) == 2 and words[0] in _DECLARATIONS and toks[1].kind == "name"


def _join(toks: list[Tok], first_line: bool) -> tuple[str, str]:
    """(code before the binding '=', code from the '=' on) of one line; no '=' -> ("", code)."""
    code = [t for t in toks if t.kind not in ("comment", "cont")]
    pieces: list[str] = []
    split = None
    for i, t in enumerate(code):
        prev = code[i - 1] if i else None
        if prev is None:
            sep = ""
        elif t.text in _CLOSE or t.text == "," or t.kind == "dots" or prev.kind == "dots" or prev.text in _OPEN:
            sep = ""
        elif t.text == "=" and first_line and _binding_eq(code, i):
            split = len(pieces)
            sep = " "
        elif t.text == "=" or prev.text == "=" and not (first_line and _binding_eq(code, i - 1)):
            sep = ""  # an option: k=v
        elif t.text == "(" and prev.kind == "name":
            sep = ""  # a dataset generator call: ioi(n=8)
        else:
            sep = " "
        pieces.append(sep + t.text)
    if split is None:
        return "", "".join(pieces)
    return "".join(pieces[:split]), "".join(pieces[split:]).lstrip()


@dataclass
class _Line:
    kind: str  # "blank", "comment", "code"
    head: str = ""  # the bound name ("heads"), for alignment
    body: str = ""  # from "=" on, or the whole code
    comment: str = ""
    cont: bool = False  # ends with a continuation backslash
    continued: bool = False  # is the continuation of the previous line
    align: bool = False  # a named statement whose "=" lines up with its block


def format_text(text: str, path: str = "<study>") -> str:
    """The canonical form of a study's text. Raises lang's StudyErrors on a syntax error."""
    from mechstudy.lang.parser import parse

    parse(text, path)  # refuse to format what does not parse
    lines: list[_Line] = []
    continued = False
    for raw in text.split("\n"):
        toks = tokens(raw)
        if not toks:
            lines.append(_Line("blank", continued=continued))
            continued = False
            continue
        comment = next((t.text for t in toks if t.kind == "comment"), "")
        cont = any(t.kind == "cont" for t in toks)
        if all(t.kind == "comment" for t in toks):
            lines.append(_Line("comment", comment=comment, continued=continued))
            continue
        head, body = _join(toks, first_line=not continued)
        named = bool(head) and not continued and head.split(" ")[0] not in _DECLARATIONS
        lines.append(_Line("code", head, body, comment, cont, continued, align=named))
        continued = cont
    # Align the "=" of named statements within each block (lines between blank lines).
    block: list[_Line] = []

    def flush() -> None:
        width = max((len(ln.head) for ln in block), default=0)
        for ln in block:
            ln.head = ln.head.ljust(width)
        block.clear()

    for ln in lines:
        if ln.kind == "blank":
            flush()
        elif ln.align:
            block.append(ln)
    flush()
    codes: list[str | None] = []
    for ln in lines:
        code = None
        if ln.kind == "code":
            code = f"{ln.head} {ln.body}" if ln.head else ln.body
            code = ("    " if ln.continued else "") + code + (" \\" if ln.cont else "")
        codes.append(code)
    # Trailing comments of consecutive code lines line up (a run ends at any other line).
    pad: list[int] = [0] * len(lines)
    i = 0
    while i < len(lines):
        j = i
        while j < len(lines) and lines[j].kind == "code" and lines[j].comment:
            j += 1
        width = max((len(codes[k]) for k in range(i, j)), default=0)
        for k in range(i, j):
            pad[k] = width
        i = max(j, i + 1)
    out: list[str] = []
    for ln, code, width in zip(lines, codes, pad):
        if ln.kind == "blank":
            if out and out[-1] != "":
                out.append("")
            continue
        if ln.kind == "comment":
            out.append(ln.comment)
            continue
        out.append(code + (" " * (width - len(code) + 2) + ln.comment if ln.comment else ""))
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out) + "\n"
