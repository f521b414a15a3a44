"""Reference text generated from the specs, so the docs cannot drift from the code."""

from __future__ import annotations

import json
import re
from pathlib import Path

from mechstudy.engine import spec


def _param_line(p: spec.Param) -> str:
    t = p.type if isinstance(p.type, str) else getattr(p.type, "__name__", str(p.type))
    bits = [f"{p.name}: {t}"]
    if p.choices:
        bits.append("one of " + "|".join(map(str, p.choices)))
    if not p.required:
        bits.append(f"default {p.default!r}")
    if p.bounded:
        bits.append(p.limits())
    if p.sweepable:
        bits.append("sweepable")
    if not p.keyed:
        bits.append("not keyed")
    return "    " + ", ".join(bits) + (f"  -- {p.doc}" if p.doc else "")


def ops_reference() -> str:
    out = ["Operators (statement verbs)", ""]
    for s in sorted(spec.OPS.values(), key=lambda s: (s.verb is None, s.verb or "", s.name)):
        if s.verb is None:
            continue
        head = f"{s.verb} ({s.name} v{s.version})"
        if s.components:
            head += "  components: " + ", ".join(s.components)
        out.append(head)
        if s.doc:
            out.append("  " + s.doc.splitlines()[0])
        if s.example:
            out.append("  example: " + s.example.strip().replace("\n", "\n           "))
        if s.model_features:
            out.append("  needs a model with: " + "; ".join(spec.FEATURES.get(f, f) for f in sorted(s.model_features)))
        out.extend(_param_line(p) for p in s.params)
        out.append("")
    out.append("Datasets: " + ", ".join(sorted(spec.DATASETS)))
    out.append("Metrics: " + ", ".join(f"{m.name}" for m in sorted(spec.METRICS.values(), key=lambda m: m.name)))
    out.append("Charts: " + ", ".join(sorted(spec.CHARTS)))
    out.append("Model sources: " + ", ".join(sorted(spec.MODEL_SOURCES)))
    return "\n".join(out)


# The `file` generator is declared with a path string, which a generated call cannot show.
_DATASET_EXAMPLES = {
    "file": 'dataset mine = file "studies/data/prompts.csv" prompt=text answer=answer wrong=wrong corrupted=corrupted',
}


def dataset_example(ds: spec.DatasetSpec) -> str:
    """A declaration of the generator that `study check` accepts (a test checks each one):
    the spec's own `example` when it has one, else a call with its first options' defaults.

    >>> from mechstudy.engine.spec import DatasetSpec, Param
    >>> dataset_example(DatasetSpec("demo", 1, (Param("n", int, 8), Param("seed", int, 0), Param("x", str, None)), None))
    'dataset demo = demo(n=8, seed=0)'
    """
    if getattr(ds, "example", None):
        return ds.example
    if ds.name in _DATASET_EXAMPLES:
        return _DATASET_EXAMPLES[ds.name]
    shown = [p for p in ds.params if not p.required and p.default is not None][:3]
    args = ", ".join(f"{p.name}={_literal(p.default)}" for p in shown)
    return f"dataset {ds.name} = {ds.name}({args})"


def _literal(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v if v.isidentifier() else f'"{v}"'
    return repr(v)


def datasets_reference() -> str:
    """Every dataset generator: what it makes, its options with their defaults, an example."""
    out = ["Datasets (`dataset NAME = GENERATOR(option=value, ...)`)", ""]
    for ds in sorted(spec.DATASETS.values(), key=lambda d: d.name):
        out.append(f"{ds.name} (v{ds.version})" + ("  needs a model's tokenizer" if ds.needs_model else ""))
        if ds.doc:
            out.extend("  " + line for line in ds.doc.strip().splitlines()[:3])
        if ds.provides:
            out.append("  provides: " + ", ".join(sorted(ds.provides)))
        out.append("  example: " + dataset_example(ds))
        out.extend(_param_line(p) for p in ds.params)
        out.append("")
    return "\n".join(out).rstrip()


def models_listing() -> str:
    src = spec.MODEL_SOURCES.get("zoo")
    if src is None or src.names is None:
        return "no zoo models are installed"
    from mechstudy.engine.fingerprint import model_fingerprint

    out = []
    for name in src.names():
        path = Path(src.locate(name, {}))
        info = src.describe(name, {})
        out.append(f"{name}  ({info.arch}, {info.n_layers} layers x {info.n_heads} heads, d_model {info.d_model}, vocab {info.d_vocab})")
        out.append(f"  fingerprint {model_fingerprint(path)[:16]}  at {path}")
        beh = path / "behaviours.json"
        if beh.is_file():
            data = json.loads(beh.read_text())
            if "parameters" in data:
                out.append(f"  parameters: {data['parameters']:,}")
            for k, v in data.get("behaviours", data).items():
                if k == "per_split" and isinstance(v, dict):
                    from mechstudy.stdlib.zoo.card import split_lines

                    out.append("  per dataset split (measured on the generators' own prompts):")
                    out.extend(f"    {line}" for line in split_lines(v))
                elif k == "circuits" and isinstance(v, dict):
                    out.append(f"  circuits (measured by {v['study']}; {v['convention']}):")
                    out.extend(f"    - {line}" for line in v["findings"])
                elif isinstance(v, dict) and "best_induction_head" in v:
                    ind, prev = v["best_induction_head"], v["best_previous_token_head"]
                    out.append(f"  {k}: best prefix matching {ind['prefix_matching']:.3f} (head {ind['layer']}.{ind['head']}), "
                               f"best previous-token {prev['previous_token']:.3f} (head {prev['layer']}.{prev['head']}), "
                               f"loss first half {v['loss_first_half']:.2f}, repeated half {v['loss_repeated_half']:.2f}")
                else:
                    out.append(f"  {k}: {_brief(v)}")
        splits = path / "splits.json"
        if splits.is_file():
            sp = json.loads(splits.read_text())
            default = ", ".join(f"{task} {split}" for task, split in sp.get("evaluate_on", {}).items())
            out.append(f"  datasets default to the split it never saw: {default}")
            for key in ("templates", "words", "why_words_are_seen"):
                if key in sp:
                    out.append(f"  {key.replace('_', ' ')}: {sp[key]}")
        out.append("")
    return "\n".join(out).rstrip()


def _brief(v: object, depth: int = 0) -> str:
    """One line for a measured behaviour: scalars as they are, dicts by their scalar entries."""
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, dict):
        items = [(k, x) for k, x in v.items() if isinstance(x, (int, float, str, bool))]
        return ", ".join(f"{k} {_brief(x)}" for k, x in items[:6]) or "(table in behaviours.json)"
    if isinstance(v, list):
        return f"({len(v)} entries in behaviours.json)"
    return str(v)


# ---------------------------------------------------------------------------- docs/language.md

# Declarations an operator's example may use without repeating them (as tests/test_registry.py).
EXAMPLE_HEADER = 'model m = zoo "mini"\ndataset ioi = ioi(n=8)\n'
_RULES = ("study_header", "use", "model_decl", "dataset_call", "dataset_file", "corpus_decl", "op_statement",
          "result_name",
          "plot", "option", "clause", "layer_set", "position_set", "literal", "range", "list")


def grammar_rules(text: str) -> dict[str, str]:
    """The grammar's rules by name, as written in lang/study.lark (comments dropped).

    >>> grammar_rules('// x\\nuse: "use" STRING\\n\\nplot: "plot" NAME\\n')["use"]
    'use: "use" STRING'
    """
    rules: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        code = line.split("//", 1)[0].rstrip()
        m = re.match(r"^[?!]?([a-z_]+)(\.\d+)?\s*:", code)
        if m:
            current = m.group(1)
            rules[current] = [code]
        elif current and code.strip() and (code.startswith(" ") or code.startswith("\t")):
            rules[current].append(code)
        else:
            current = None
    return {k: "\n".join(v) for k, v in rules.items()}


def grammar_keywords(text: str) -> list[str]:
    """The language's keywords: the grammar's named string terminals (`STUDY: "study"` ...)."""
    return [m.group(2) for m in re.finditer(r'^([A-Z_]+):\s*"([a-z]+)"\s*$', text, re.M)]


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _param_row(p: spec.Param) -> str:
    t = p.type if isinstance(p.type, str) else getattr(p.type, "__name__", str(p.type))
    default = "required" if p.required else f"`{_literal(p.default) if p.default is not None else 'none'}`"
    notes = []
    if p.choices:
        notes.append("one of " + ", ".join(f"`{c}`" for c in p.choices))
    if p.bounded:
        notes.append(p.limits())
    if p.sweepable:
        notes.append("sweepable")
    if not p.keyed:
        notes.append("not keyed")
    return f"| `{p.name}` | {t} | {default} | {_md('; '.join(notes + ([p.doc] if p.doc else [])))} |"


def _params_table(params: tuple) -> list[str]:
    if not params:
        return []
    return ["| option | type | default | notes |", "|---|---|---|---|", *(_param_row(p) for p in params), ""]


def op_example_study(s: spec.OpSpec) -> str:
    """An operator's example as a complete study (the shared declarations prepended when it
    needs them): what docs/language.md shows, and what its test checks."""
    from mechstudy.engine.fmt import format_text

    ex = s.example.strip()
    if "model " in ex or "dataset " in ex or s.name.startswith("toy"):
        return format_text(ex + "\n")
    return format_text(EXAMPLE_HEADER + ex + "\n")  # shown in `study fmt`'s layout


def language_reference() -> str:
    """docs/language.md: the grammar's statements and keywords, the clause vocabulary, and
    every operator, dataset, metric, chart kind and model source in the registries."""
    from mechstudy.lang.parser import _GRAMMAR, GRAMMAR_VERSION

    text = _GRAMMAR.read_text(encoding="utf-8")
    rules = grammar_rules(text)
    out = [
        "# The .study language: reference",
        "",
        "<!-- Generated by `python -m mechstudy.engine.docs language > docs/language.md` from",
        "     lang/study.lark and the registries (engine/spec.py). Do not edit by hand:",
        "     tests/test_docs.py fails when this file is out of date. -->",
        "",
        f"Grammar version {GRAMMAR_VERSION}. A study is a text file of statements, one per line; `#` starts a",
        "comment; a backslash at the end of a line continues the statement on the next one. Every",
        "mistake is reported before anything runs, as `file:line:col: error:` with a caret and a suggestion.",
        "For a guided start see [the tutorial](tutorial.md).",
        "",
        "## Statements",
        "",
        "The grammar's rules, as written in `lang/study.lark` (Lark EBNF: `?` optional, `*` repeated,",
        "`|` alternatives, quoted words are keywords):",
        "",
        "```text",
        *(rules[r] for r in _RULES if r in rules),
        "```",
        "",
        "Keywords: " + ", ".join(f"`{k}`" for k in grammar_keywords(text)) + ". Operator verbs, component",
        "words, flags and option names are not keywords: they are looked up in the registries below, so",
        "adding an operator never changes the grammar.",
        "",
        "## How a statement's clauses become an operator's options",
        "",
        "```text",
        _clause_table(),
        "```",
        "",
        "A list or a range given to a *sweepable* option makes a sweep: one cached result per value,",
        "so widening a sweep computes only the new points. `plot NAME as KIND [titled \"...\"]` replaces a",
        "result's default chart (a second `plot` adds one).",
        "",
        "## Operators",
        "",
    ]
    for s in sorted((s for s in spec.OPS.values() if s.verb), key=lambda s: (s.verb, s.name)):
        out.append(f"### `{s.verb}`" + (f" {' / '.join(f'`{c}`' for c in s.components)}" if s.components else "")
                   + f" ({s.name}, version {s.version})")
        out.append("")
        if s.doc:
            out.extend([" ".join(s.doc.strip().split("\n\n")[0].split()), ""])  # the first paragraph
        if s.default_chart:
            out.extend([f"Default chart: `{s.default_chart}`." + (
                f" Needs a dataset that provides {', '.join(sorted(s.requires))}." if s.requires else ""), ""])
        out.extend(_params_table(s.params))
        if s.example:
            out.extend(["```study", op_example_study(s).rstrip(), "```", ""])
    out.extend(["## Datasets and corpora", "", "`dataset NAME = GENERATOR(option=value, ...)` (or `dataset NAME = file \"PATH\" ...`);",
                "`corpus NAME = SOURCE \"REF\" ...` declares text packed into rows of tokens (`corpus.SOURCE` below).",
                "`study datasets` prints the same.", ""])
    for ds in sorted(spec.DATASETS.values(), key=lambda d: d.name):
        out.append(f"### `{ds.name}` (version {ds.version})")
        out.append("")
        if ds.doc:
            out.extend([" ".join(ds.doc.strip().split()), ""])
        facts = []
        if ds.provides:
            facts.append("Provides " + ", ".join(f"`{p}`" for p in sorted(ds.provides)) + ".")
        facts.append("Tokenised by the model that reads it." if ds.needs_model else "Needs no model.")
        out.extend([" ".join(facts), ""])
        out.extend(_params_table(ds.params))
        out.extend(["```study", 'model m = zoo "mini"', dataset_example(ds), "```", ""])
    out.extend(["## Metrics", "", "| metric | needs a dataset that provides | what it measures |", "|---|---|---|"])
    for m in sorted(spec.METRICS.values(), key=lambda m: m.name):
        out.append(f"| `{m.name}` | {', '.join(sorted(m.requires)) or '-'} | {_md(m.doc)} |")
    out.extend(["", "## Chart kinds", "", "| kind | what it draws |", "|---|---|"])
    for c in sorted(spec.CHARTS.values(), key=lambda c: c.kind):
        out.append(f"| `{c.kind}` | {_md(c.doc.strip().splitlines()[0] if c.doc else '')} |")
    out.extend(["", "## Model sources", ""])
    for src in sorted(spec.MODEL_SOURCES.values(), key=lambda s: s.kind):
        out.extend([f"### `{src.kind}`", "", src.doc, ""])
        out.extend(_params_table(src.options))
    return "\n".join(out).rstrip() + "\n"


def _clause_table() -> str:
    doc = spec.__doc__ or ""
    start = doc.index("=================")
    return "\n".join(line for line in doc[start:].strip().splitlines()).rstrip('"').rstrip()


if __name__ == "__main__":  # pragma: no cover
    import sys

    from mechstudy.engine.run import load_stdlib

    load_stdlib()
    what = sys.argv[1] if len(sys.argv) > 1 else "language"
    sys.stdout.write({"language": language_reference, "ops": ops_reference, "datasets": datasets_reference}[what]()
                     + ("" if what == "language" else "\n"))
