"""Auto-interpretability: explain a feature from its top examples, then score the explanation by
simulation (predict the feature's activation on every token of held-out text from the explanation
alone; the score is the Pearson correlation with the true activations, as Bills et al. 2023).

The offline default explainer (`tokens`) needs no language model: it weighs the activating tokens
of the top examples by activation, and separately the token before each; whichever of the two is
more concentrated (its `terms` heaviest tokens carry more of the mass) becomes the explanation,
listing the fewest tokens that cover `cover` of the mass (at most `terms`), with their shares:

    fires on ' the' (0.62), ' a' (0.21)          a token feature
    after ' of' (0.4), ' in' (0.3)                a feature of the token after ' of' or ' in'

Any explainer is pluggable: a callable `explain(examples) -> str` named `module:function`, given the
feature's top examples (dicts with `tokens`, `acts`, `at`, `activation`, `text`). The simulator
reads only the explanation text: every quoted token 'x' after "fires on" (or anywhere, without that
phrase) predicts the given weight (1 without one) where the token is x; one after "after" predicts it
on the token that follows x; a token matching both takes the larger. So a local model's free-text
explanation is scored by the same rule, on the tokens it quotes.

>>> ex = [{"tokens": [" of", " the"], "acts": [0.0, 2.0], "at": 1, "activation": 2.0},
...       {"tokens": [" a", " the"], "acts": [0.0, 1.0], "at": 1, "activation": 1.0}]
>>> explain_tokens(ex, terms=3, cover=0.9)
"fires on ' the' (1)"
>>> explain_tokens([{**e, "tokens": [" of", t]} for e, t in zip(ex, [" a", " b"])], terms=1, cover=0.9)
"after ' of' (1)"
>>> simulate("fires on ' the' (1); after ' of' (0.67)", [" x", " the", " of", " y"])
[0.0, 1.0, 0.0, 0.67]
>>> round(pearson([0.0, 1.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]), 6)
1.0
"""

from __future__ import annotations

import ast
import importlib
import math
import re
from collections import defaultdict
from typing import Any, Callable, Sequence

QUOTED = re.compile(r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*\"""")
WEIGHT = re.compile(r"^\s*\((-?\d+(?:\.\d+)?(?:e-?\d+)?)\)")


def explain_tokens(examples: Sequence[dict], terms: int = 5, cover: float = 0.8) -> str:
    """The default explainer (see the module docstring): activating tokens and preceding tokens,
    weighted by activation, the fewest covering `cover` of the mass (at most `terms` each)."""
    on: dict[str, float] = defaultdict(float)
    prev: dict[str, float] = defaultdict(float)
    total = 0.0
    for e in examples:
        a = float(e["activation"])
        if not a > 0:
            continue
        total += a
        on[e["tokens"][e["at"]]] += a
        if e["at"] > 0:
            prev[e["tokens"][e["at"] - 1]] += a
    if total <= 0:
        return "never fires"

    def pick(weights: dict[str, float]) -> list[tuple[str, float]]:
        out, mass = [], 0.0
        for t, w in sorted(weights.items(), key=lambda kv: (-kv[1], kv[0])):
            if mass >= cover * total or len(out) >= terms:
                break
            out.append((t, w / total))
            mass += w
        return out

    def carried(weights: dict[str, float]) -> float:
        return sum(sorted(weights.values(), reverse=True)[:terms])

    if carried(prev) > carried(on):
        return "after " + ", ".join(f"{t!r} ({w:.2g})" for t, w in pick(prev))
    return "fires on " + ", ".join(f"{t!r} ({w:.2g})" for t, w in pick(on))


def parse(explanation: str) -> tuple[dict[str, float], dict[str, float]]:
    """(token -> weight where the token is it, token -> weight on the token after it) from the
    explanation's quoted tokens (see the module docstring)."""
    on: dict[str, float] = {}
    after: dict[str, float] = {}
    cut = 0 if explanation.startswith("after ") else explanation.find("; after ")
    for m in QUOTED.finditer(explanation):
        try:
            tok = ast.literal_eval(m.group(0))
        except (ValueError, SyntaxError):
            tok = m.group(0)[1:-1]
        w = WEIGHT.match(explanation[m.end():])
        weight = float(w.group(1)) if w else 1.0
        table = after if cut >= 0 and m.start() > cut else on
        table[tok] = max(table.get(tok, 0.0), weight)
    return on, after


def simulate(explanation: str, tokens: Sequence[str]) -> list[float]:
    """Predicted activation of every token of a sequence (decoded tokens, in order)."""
    on, after = parse(explanation)
    out = []
    for i, t in enumerate(tokens):
        v = on.get(t, 0.0)
        if i > 0 and tokens[i - 1] in after:
            v = max(v, after[tokens[i - 1]])
        out.append(v)
    return out


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation (nan when either side is constant)."""
    n = len(x)
    if n < 2:
        return float("nan")
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def explainer(name: str) -> Callable[[Sequence[dict]], str]:
    """`tokens` (the default) or a `module:function` callable examples -> explanation text."""
    if name == "tokens":
        return explain_tokens
    mod, _, fn = name.partition(":")
    got: Any = getattr(importlib.import_module(mod), fn)
    if not callable(got):
        raise ValueError(f"explainer {name!r} is not callable")
    return got
