"""Option values, fuzzed: whatever `study check` accepts runs; the rest is refused by the check.

Syntax is fuzzed in test_lang_fuzz.py; this fuzzes *values*. Every operator's example (on a tiny
GPT-2, small datasets) and every dataset generator gets one option at a time set to an edge value
(negative, zero, one, past a ceiling, huge, fractional, empty lists ...). Each case is checked; a
case the checker refuses must say so as `file:line:col: error:` (a StudyErrors) and never with a
traceback; a case it accepts is planned and run, and must finish. A run that fails is a value the
checker should have refused, unless it is in `RUNTIME_ONLY` with the reason it cannot be known
before running. Seeded: the failing study text is in the assertion message.

By default 40 accepted operator cases are run (about two minutes on two cores); FUZZ_RUNS=1000 runs
every one. The full sweep at landing: 754 operator cases (295 refused by the check, 318 ran, 141 only
checked: large values and the slow `train model` / `score circuit`), 279 dataset cases (113 refused,
119 ran, 47 only checked), no failure after the check. What it found, now refused at check:
`ioi(template=...)` past the last template, `planted(features=1000000)` (a 4 TB allocation),
`train toy importance=[0]`, `attribute heads ... component_index=...`, a `train sae` whose steps made
10^8 checkpoint nodes (the planner hung), `induction` / `reverse` / `xproportion` longer than the
model's context.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import time
from pathlib import Path

import pytest

from mechstudy.engine import spec

# Edge values per parameter type, as they are written in a study.
INTS = ["-1", "0", "1", "2", "3", "17", "1000000", "1000000000"]
FLOATS = ["-1.0", "0", "0.0", "0.25", "0.999", "1", "1.0", "1.5", "1e6"]
LISTS = ["[]", "[0]", "[1]", "[2, 3]", "[0.5]", "[1.0]", "[-1]", "[0, 0]"]
BOOLS = ["true", "false"]
LARGE = {"17", "1000000", "1000000000", "1e6"}
# Options set by the plan itself, or that only pick among words (covered by the syntax fuzz).
SKIP = {("compare", "labels")}
# What cannot be known before running: (op or generator, option) -> why. Every other failure the
# fuzz found was made a check-time error (declared limits, `fits`, `validate`).
RUNTIME_ONLY: dict[tuple[str, str], str] = {
    ("facts", "prepend_bos"): "which facts have single-token answers depends on the tokenizer (with a BOS, mini's "
                              "keeps none); the checker reads model configs, not tokenizers",
    ("recall", "prepend_bos"): "recall is built from facts: as facts",
}
# Too slow to run for every value on two cores; their values are still checked.
CHECK_ONLY = {"train_model", "score_circuit"}
HEADER = 'model m = hf "{model}"\ndataset ioi = ioi(n=4, seed=0)\n'
# Examples that read files made for the zoo's mini (a pretrained SAE of its residual stream).
ON_MINI = {"load_dictionary", "score_dictionary"}
# Small sizes for the runs (an option being fuzzed replaces its own).
SMALL = {"toy_superposition": {"steps": "5", "batch": "16"}, "toy_memorisation": {"steps": "5"},
         "train_dictionary": {"steps": "20", "checkpoint": "10"}}


def _without(stmt: str, name: str) -> str:
    """`stmt` without its `name=VALUE` / `name VALUE` option (a list value included)."""
    return re.sub(rf"\s{name}[= ](\[[^\]]*\]|\S+)", "", stmt)


def _past_ceiling(value: str) -> bool:
    return value.isdigit() and int(value) > 1000


def _values(p: spec.Param) -> list[str]:
    if p.type is int:
        vals = list(INTS)
        if p.ceiling is not None:
            vals.append(str(int(p.ceiling) + 1))
        return vals
    if p.type is float:
        return list(FLOATS)
    if p.type in (list, tuple):
        return list(LISTS)
    if p.type is bool:
        return list(BOOLS)
    return []


def op_cases(model: str) -> list[tuple[str, str, str, str]]:
    """(op, option, value, study text) for every operator example and edge value."""
    out = []
    for s in sorted((s for s in spec.OPS.values() if s.verb and s.example), key=lambda s: s.name):
        own = "model " in s.example or "dataset " in s.example
        base = s.example if own else HEADER.format(model=model) + s.example
        if s.name in ON_MINI or "dataset " in s.example:  # its own datasets are made for mini's vocabulary
            base = base.replace(f'hf "{model}"', 'zoo "mini"')
        else:
            base = base.replace('zoo "mini"', f'hf "{model}"')
        lines = base.splitlines()
        for p in s.params:
            if (s.name, p.name) in SKIP or p.name in ("component", "layers", "positions"):
                continue
            small = {k: x for k, x in SMALL.get(s.name, {}).items() if k != p.name}
            stmt = lines[-1]
            for k in [p.name, *small]:
                stmt = _without(stmt, k)  # the example's own value goes
            stmt += "".join(f" {k}={x}" for k, x in small.items())
            for v in _values(p):
                out.append((s.name, p.name, v, "\n".join(lines[:-1] + [f"{stmt} {p.name}={v}"]) + "\n"))
    return out


# Each generator with a model it is made for (the fuzz is about option values, not about which
# tokenizer a dataset needs), a small base declaration, and a statement that reads it (so that the
# checker compares the declaration with the statement's model).
DATASET_BASES = {
    "ioi": ('zoo "mini"', "n=4"), "greater_than": ('zoo "mini"', "n=4"), "facts": ('zoo "mini"', "n=4"),
    "induction": ('zoo "mini"', "n=4, length=5"), "xproportion": ('zoo "tracr-xproportion"', "n=4"),
    "reverse": ('zoo "tracr-reverse"', "n=4"), "planted": (None, "features=8, d=4, rows=64"),
    "recall": ('zoo "mini"', "n=4"), "entities": ('zoo "mini"', "n=8"), "sentiment": ('zoo "mini"', "n=8"),
}


def dataset_cases(model: str) -> list[tuple[str, str, str, str]]:
    out = []
    for name, d in sorted(spec.DATASETS.items()):
        if name == "file" or spec.is_corpus(name):
            continue  # need files; file's own options are tested in test_datasets_file.py
        source, base = DATASET_BASES.get(name, (f'hf "{model}"', ""))
        for p in d.params:
            for v in _values(p):
                args = re.sub(rf"(^|, ){p.name}=[^,]*", "", base).strip(", ")
                call = f"{name}({', '.join(x for x in (args, f'{p.name}={v}') if x)})"
                text = f"dataset d = {call}\n"
                if source is not None:
                    text = f"model m = {source}\n{text}x = lens resid_post in layer 0 of m on d\n"
                out.append((name, p.name, v, text))
    return out


def _run_case(text: str, path: Path, store, datasets_only: bool, run: bool) -> str:
    """"refused" (a StudyErrors), "ran", or raises what went wrong."""
    from mechstudy.engine.graph import run_nodes
    from mechstudy.engine.run import check_and_plan
    from mechstudy.lang.errors import StudyErrors

    path.write_text(text)
    try:
        plan = check_and_plan(path)
    except StudyErrors as e:
        assert e.errors and all(err.span is not None for err in e.errors), e.render()
        return "refused"
    if not run:
        return "checked"
    roots = _dataset_nodes(plan) if datasets_only else plan.roots()
    run_nodes(roots, store, device="cpu", warn=lambda s: None)
    return "ran"


def _dataset_nodes(plan) -> list:
    """A node for every declared dataset (as engine/build.py makes them; the plan itself only has
    the ones a statement reads)."""
    from mechstudy.engine.plan import make_node

    out = []
    for decl in plan.study.datasets.values():
        ds = spec.DATASETS[decl.generator]
        inputs = {"model": plan.models[decl.model or next(iter(plan.models))]} if ds.needs_model else {}
        out.append(make_node("dataset", {"generator": decl.generator, "generator_version": ds.version,
                                         "params": dict(decl.params)}, inputs))
    return out


@pytest.fixture(scope="module")
def fuzz_env(tmp_path_factory, tiny_gpt2_dir, stdlib_loaded):
    from mechstudy.engine.store import Store

    d = tmp_path_factory.mktemp("fuzz")
    return d, Store(d / "cache"), str(tiny_gpt2_dir)


def _sweep(cases, fuzz_env, datasets_only: bool, budget: int, seed: int):
    d, store, _ = fuzz_env
    rng = random.Random(seed)
    order = list(cases)
    rng.shuffle(order)
    seen = {"refused": 0, "ran": 0, "checked": 0}
    failures = []
    runs = 0
    for i, (owner, option, value, text) in enumerate(order):
        # Large values that pass the check are legitimate and merely slow: they are checked, not run.
        run = owner not in CHECK_ONLY and runs < budget and value not in LARGE and not _past_ceiling(value)
        t0 = time.perf_counter()
        if os.environ.get("FUZZ_VERBOSE"):
            print(f"... {owner} {option}={value}", flush=True)
        try:
            got = _run_case(text, d / f"c{i}.study", store, datasets_only, run)
        except Exception as e:  # noqa: BLE001 - the point: what failed after the check said yes
            if (owner, option) in RUNTIME_ONLY:
                seen["ran"] += 1
                continue
            failures.append(f"{owner} {option}={value}: {type(e).__name__}: {str(e)[:300]}\n{text}")
            continue
        runs += got == "ran"
        seen[got] += 1
        if os.environ.get("FUZZ_VERBOSE"):
            print(f"{time.perf_counter() - t0:6.2f} s {got:8} {owner} {option}={value}")
    return seen, failures


@pytest.mark.timeout(1800)
def test_operator_option_values(fuzz_env):
    cases = op_cases(fuzz_env[2])
    seen, failures = _sweep(cases, fuzz_env, datasets_only=False, budget=int(os.environ.get("FUZZ_RUNS", 40)), seed=0)
    print(f"\noperator option cases: {len(cases)}; {seen}")
    assert len(cases) > 150 and seen["refused"] > 50 and seen["ran"] > 20
    assert not failures, "passed `study check`, then failed:\n\n" + "\n\n".join(failures[:10])


@pytest.mark.timeout(900)
def test_dataset_option_values(fuzz_env):
    cases = dataset_cases(fuzz_env[2])
    seen, failures = _sweep(cases, fuzz_env, datasets_only=True, budget=10_000, seed=1)
    print(f"\ndataset option cases: {len(cases)}; {seen}")
    assert len(cases) > 80 and seen["refused"] > 30 and seen["ran"] > 30
    assert not failures, "passed `study check`, then failed:\n\n" + "\n\n".join(failures[:10])


def test_ceilings_are_refused_with_the_way_to_raise_them(fuzz_env, monkeypatch):
    from mechstudy.engine.run import check_and_plan
    from mechstudy.lang.errors import StudyErrors

    d, _, model = fuzz_env
    p = d / "big.study"
    p.write_text(f'model m = hf "{model}"\ndataset big = ioi(n=1000000000)\n'
                 "x = attribute edges of m on big with logit_diff ig_steps=100000\n"
                 "t = train toy n=1000000 m=2\n")
    with pytest.raises(StudyErrors) as e:
        check_and_plan(p)
    text = e.value.render()
    assert text.count("over the ceiling") == 3 and text.count("--no-ceilings") == 3
    assert "big.study:2:21: error: dataset ioi: 'n' = 1,000,000,000 is over the ceiling of 10,000" in text
    monkeypatch.setenv("MECHSTUDY_NO_CEILINGS", "1")
    check_and_plan(p)  # lifted: the same study checks


def test_cases_cover_every_numeric_option(fuzz_env):
    """The fuzz reaches every int/float/list option of every operator and generator (so a new
    option without declared limits is fuzzed the day it is added)."""
    model = fuzz_env[2]
    covered = {(o, n) for o, n, _, _ in itertools.chain(op_cases(model), dataset_cases(model))}
    want = {(s.name, p.name) for s in spec.OPS.values() if s.verb and s.example for p in s.params
            if p.type in (int, float, list) and (s.name, p.name) not in SKIP and p.name not in ("layers", "positions")}
    want |= {(n, p.name) for n, d in spec.DATASETS.items() if n != "file" and not spec.is_corpus(n)
             for p in d.params if p.type in (int, float, list)}
    assert want - covered == set()
