"""Reference text generated from the specs, so the docs cannot drift from the code."""

from __future__ import annotations

import json
from pathlib import Path

from mechstudy.engine import spec


def _param_line(p: spec.Param) -> str:
    t = p.type if isinstance(p.type, str) else getattr(p.type, "__name__", str(p.type))
    bits = [f"{p.name}: {t}"]
    if p.choices:
        bits.append("one of " + "|".join(map(str, p.choices)))
    if not p.required:
        bits.append(f"default {p.default!r}")
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
                out.append(f"  {k}: {_brief(v)}")
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
