"""Errors in a study file: one root type, a few kinds, and a collection that renders them all.

Every mistake in a `.study` file surfaces as a `StudyError` with the span it is about; the
checker collects all of them and raises one `StudyErrors`. Rendered, an error reads

    ioi.study:5:46: error: unknown metric 'logit_dif'
      patch heads in layer 9 of gpt2 on ioi with logit_dif
                                                 ^~~~~~~~~
      hint: did you mean 'logit_diff'?

>>> from mechstudy.lang.resolved import Span
>>> e = UnknownNameError(Span("s.study", 1, 5, 1, 7), "unknown model 'm2'", "did you mean 'm'?")
>>> print(e.render("use m2\\n"))
s.study:1:5: error: unknown model 'm2'
  use m2
      ^~
  hint: did you mean 'm'?
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

from mechstudy.lang.resolved import Span


class StudyError(Exception):
    """A mistake in a study file, located by `span` (None only when there is no file at all)."""

    kind = "error"

    def __init__(self, span: Span | None, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.span = span
        self.message = message
        self.hint = hint

    def __repr__(self) -> str:
        where = f"{self.span.file}:{self.span.line}:{self.span.column}" if self.span else "?"
        return f"{type(self).__name__}({where}: {self.message!r})"

    def __str__(self) -> str:
        return self.render()

    def render(self, source: str | None = None) -> str:
        """`file:line:col: error: message`, the source line, a caret line and the hint.

        `source` is the text of `span.file`; when it is None the file is read from disk if it
        exists, and the source and caret lines are left out if it does not. A line longer than
        `WIDTH` is shown as a window around the caret; a file that is not a study (no `.study`
        suffix, e.g. a wrong `use`) only ever shows a short, escaped excerpt of `EXCERPT` characters.
        """
        s = self.span
        if s is None:
            out = [f"error: {self.message}"]
        else:
            out = [f"{s.file}:{s.line}:{s.column}: error: {self.message}"]
            line = _source_line(s, source)
            if line is not None:
                text, caret = _shown(line, s, foreign=not _is_study(s.file))
                out.append("  " + text)
                out.append("  " + caret)
        if self.hint:
            out.append(f"  hint: {self.hint}")
        return "\n".join(out)


class StudySyntaxError(StudyError):
    """The text does not follow the grammar (or asks for a newer grammar version)."""


class UnknownNameError(StudyError):
    """A name that is not declared or registered: model, dataset, result, verb, metric, ..."""


class StudyTypeError(StudyError):
    """A value of the wrong type, out of range, missing, duplicated or incompatible."""


class PlanError(StudyError):
    """A mistake only found while planning (raised by the engine with a statement's span)."""


class StudyErrors(Exception):
    """Every error found in a study (and the files it uses), in source order.

    Attributes:
        errors: the `StudyError`s.
        sources: file name -> text, used to print the offending lines.
    """

    def __init__(self, errors: Iterable[StudyError], sources: Mapping[str, str] | None = None) -> None:
        self.errors = sorted(errors, key=_order)
        self.sources = dict(sources or {})
        n = len(self.errors)
        super().__init__(f"{n} error{'s' if n != 1 else ''} in study")

    def render(self, limit: int = 50) -> str:
        """Every error (the first `limit`, then how many more), each with its line and caret."""
        shown = [e.render(self.sources.get(e.span.file) if e.span else None) for e in self.errors[:limit]]
        if len(self.errors) > limit:
            shown.append(f"... and {len(self.errors) - limit} more errors")
        return "\n".join(shown)

    def __str__(self) -> str:
        return self.render()


def _order(e: StudyError) -> tuple:
    s = e.span
    return (0, "", 0, 0) if s is None else (1, s.file, s.line, s.column)


def _source_line(span: Span, source: str | None) -> str | None:
    if source is None:
        try:
            path = Path(span.file)
            source = path.read_text(encoding="utf-8") if path.is_file() else None
        except (OSError, UnicodeDecodeError, ValueError):
            source = None
    if source is None:
        return None
    lines = source.split("\n")  # Lark counts lines at "\n" only
    if not 1 <= span.line <= len(lines):
        return None
    return lines[span.line - 1].rstrip("\r")


WIDTH = 160  # the longest source line shown whole
EXCERPT = 40  # how much of a file that is not a study may be shown


def _is_study(file: str) -> bool:
    """Text given directly, a `.study` file, or no file on disk at all: shown as written."""
    if file.startswith("<") or file.endswith(".study"):
        return True
    try:
        return not Path(file).exists()
    except (OSError, ValueError):
        return True


def _shown(line: str, span: Span, foreign: bool = False) -> tuple[str, str]:
    """The source line as shown (windowed around the span when long; escaped when `foreign`) and
    the caret line under it."""
    start = min(max(span.column - 1, 0), len(line))
    end = span.end_column - 1 if span.end_line == span.line else len(line)
    end = max(end, start + 1)
    width = EXCERPT if foreign else WIDTH
    if len(line) <= width and not foreign:
        return line, _caret(line, span)
    a = max(0, min(start - width // 4, len(line) - width))
    b = min(len(line), a + width)
    esc = _escape if foreign else (lambda t: t)
    pre, post = ("..." if a > 0 else ""), ("..." if b < len(line) else "")
    text = pre + esc(line[a:b]) + post
    lead = len(pre) + len(esc(line[a:start]))
    under = max(1, len(esc(line[start:min(end, b)])))
    pad = "".join(c if c == "\t" else " " for c in (text[:lead] if not foreign else " " * lead))
    return text, pad + "^" + "~" * (under - 1)


def _escape(text: str) -> str:
    """Printable ASCII as is, everything else as a backslash escape."""
    return "".join(c if " " <= c <= "~" and c != "\\" else c.encode("unicode_escape").decode("ascii") or "?" for c in text)


def _caret(line: str, span: Span) -> str:
    """`^~~~` under the span; a span running past this line is underlined to its end."""
    start = max(span.column - 1, 0)
    end = span.end_column - 1 if span.end_line == span.line else len(line)
    end = max(end, start + 1)
    # Keep tabs so that the caret lines up under tab-indented text.
    pad = "".join(c if c == "\t" else " " for c in line[:start])
    pad += " " * (start - len(pad))
    return pad + "^" + "~" * (end - start - 1)
