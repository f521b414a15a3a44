"""Build the ground-truth models into `stdlib/zoo/models/`: `python -m mechstudy.stdlib.groundtruth.build [all|NAME]`
(`make groundtruth` does it in a venv of its own with tracr).

`induction-handwired` needs nothing beyond the project; `tracr-xproportion` and `tracr-reverse`
need tracr (`pip install -e '.[groundtruth]'`, which brings tracr-pypi and JAX), only here: the
written directories are plain GPT-2 checkpoints. Each directory gets config.json,
model.safetensors (float32), the tokenizer, crafted.json / crafted.safetensors (the construction
in its own basis), truth.json (`truth.derive`), behaviours.json (what `measure` found) and a
README.md model card. Everything is deterministic: rebuilding writes the same weights.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from mechstudy.stdlib.groundtruth import craft, induction, programs, truth
from mechstudy.stdlib.zoo import MODELS_DIR

NAMES = ("induction-handwired", "tracr-xproportion", "tracr-reverse")
HELD_OUT_SEED = 20261129
STUDY = {"induction-handwired": "induction", "tracr-xproportion": "xproportion", "tracr-reverse": "reverse"}  # never used by a dataset default; the measurements' inputs


def load_hf(directory: Path) -> Any:
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(directory, attn_implementation="eager").eval()


def _logits(model: Any, ids: list[list[int]]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor(ids, dtype=torch.long)).logits.double()


# ---- what each model is held to ------------------------------------------------------------
def induction_cases(c: craft.Crafted, n: int = 64, seed: int = HELD_OUT_SEED) -> list[list[int]]:
    """BOS, L distinct words, the same L words again; L in 5..25."""
    rng = random.Random(seed)
    words = [c.token_id(w) for w in induction.words()]
    out = []
    for _ in range(n):
        r = rng.sample(words, rng.randint(5, 25))
        out.append([c.token_id(c.bos)] + r + r)
    return out


def xproportion_cases(c: craft.Crafted, n: int = 256, seed: int = HELD_OUT_SEED) -> list[list[str]]:
    rng = random.Random(seed)
    return [[rng.choice(programs.XPROP_VOCAB) for _ in range(rng.randint(1, programs.XPROP_MAX_LEN))]
            for _ in range(n)]


def reverse_cases(c: craft.Crafted, n: int = 256, seed: int = HELD_OUT_SEED) -> list[list[str]]:
    """x_1..x_m | y_1..y_k with 2 <= m, m + 1 + k <= REVERSE_MAX_LEN, k <= m - 1."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        m = rng.randint(2, programs.REVERSE_MAX_LEN // 2 + 1)
        k = rng.randint(0, min(m - 1, programs.REVERSE_MAX_LEN - 1 - m))
        x = [rng.choice(programs.REVERSE_VOCAB) for _ in range(m)]
        out.append(x + [programs.SEP] + x[::-1][:k])
    return out


def exactness(name: str, model: Any, c: craft.Crafted) -> dict:
    """How exactly the GPT-2 checkpoint computes its program on held-out inputs, and how far its
    logits are from the norm-free float64 forward of the construction."""
    bos = c.token_id(c.bos)
    if name == "induction-handwired":
        seqs = induction_cases(c)
        hit = tot = 0
        diff = 0.0
        for s in seqs:
            lg = _logits(model, [s])[0]
            diff = max(diff, float((lg - craft.forward64(c, torch.tensor([s]))[0]).abs().max()))
            L = (len(s) - 1) // 2
            for p in range(L + 1, len(s) - 1):  # second copy: predicts s[p + 1]
                hit += int(lg[p].argmax()) == s[p + 1]
                tot += 1
        return {"inputs": len(seqs), "predictions": tot, "accuracy": hit / tot, "max_logit_diff_vs_float64": diff,
                "what": "argmax next token on the repeated half of [BOS] r r (r: 5-25 distinct words)"}
    if name == "tracr-xproportion":
        seqs = xproportion_cases(c)
        err = diff = 0.0
        for s in seqs:
            ids = [bos] + [c.token_id(t) for t in s]
            lg = _logits(model, [ids])[0]
            diff = max(diff, float((lg - craft.forward64(c, torch.tensor([ids]))[0]).abs().max()))
            got = lg[1:, c.token_id("x")] / programs.LOGIT
            err = max(err, float((got - torch.tensor(programs.frac_prevs(s), dtype=torch.float64)).abs().max()))
        return {"inputs": len(seqs), "max_abs_error": err, "max_logit_diff_vs_float64": diff,
                "what": "logit(x) / 10 against the fraction of x so far, every position, lengths 1-10"}
    seqs = reverse_cases(c)
    hit = tot = 0
    diff = 0.0
    for s in seqs:
        ids = [bos] + [c.token_id(t) for t in s]
        lg = _logits(model, [ids])[0]
        diff = max(diff, float((lg - craft.forward64(c, torch.tensor([ids]))[0]).abs().max()))
        for i, want in enumerate(programs.reverse_causal(s)):
            if want is not None:
                hit += int(lg[i + 1].argmax()) == c.token_id(want)
                tot += 1
    return {"inputs": len(seqs), "predictions": tot, "accuracy": hit / tot, "max_logit_diff_vs_float64": diff,
            "what": "argmax at every position from the separator on against the reversed input"}


def tracr_agreement(c: craft.Crafted, model: Any, cases: list[list[str]]) -> float:
    """Max |logits from tracr's own final residual stream (JAX) - logits of the crafted float64
    forward|, both read through the same unembedding."""
    worst = 0.0
    for s in cases:
        final = np.asarray(model.apply([c.bos] + s).transformer_output, dtype=np.float64)[0]
        ours = craft.forward64(c, torch.tensor([[c.token_id(c.bos)] + [c.token_id(t) for t in s]]))[0].numpy()
        worst = max(worst, float(np.abs(final @ c.unembed - ours).max()))
    return worst


# ---- writing -------------------------------------------------------------------------------
def crafted_of(name: str) -> tuple[craft.Crafted, Any]:
    if name == "induction-handwired":
        return induction.build(), None
    try:
        import tracr  # noqa: F401
    except ImportError as err:
        raise SystemExit(f"{name} is compiled with tracr: pip install -e '.[groundtruth]' (tracr-pypi, JAX)") from err
    return programs.build_xproportion() if name == "tracr-xproportion" else programs.build_reverse()


def build(name: str, out: Path = MODELS_DIR, log: Callable[[str], None] = print) -> Path:
    torch.set_num_threads(1)
    c, tracr_model = crafted_of(name)
    directory = craft.save(c, out / name)
    t = truth.derive(directory)
    (directory / truth.TRUTH_FILE).write_text(json.dumps(t, indent=1) + "\n")
    model = load_hf(directory)
    beh = {"name": name, "parameters": int(sum(p.numel() for p in model.parameters())),
           "behaviours": {"exactness": exactness(name, model, c),
                          "true_circuit": {"edges": len(t["circuit"]), "of": t["graph"]["edges_total"],
                                           "circuit": " ".join(t["circuit"])}}}
    if tracr_model is not None:
        cases = xproportion_cases(c, 64) if name == "tracr-xproportion" else reverse_cases(c, 64)
        beh["behaviours"]["tracr_agreement"] = {"max_abs_diff": tracr_agreement(c, tracr_model, cases),
                                                "inputs": len(cases)}
    (directory / "behaviours.json").write_text(json.dumps(beh, indent=1) + "\n")
    (directory / "README.md").write_text(card(name, c, t, beh, model.config))
    log(f"{name}: {directory} ({beh['parameters']:,} parameters); circuit {t['circuit']}")
    return directory


def card(name: str, c: craft.Crafted, t: dict, beh: dict, cfg: Any) -> str:
    meta, ex = c.meta, beh["behaviours"]["exactness"]
    roles = "\n".join(f"| {k} | {v} |" for k, v in sorted(meta.get("roles", {}).items()))
    exact = "; ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in ex.items() if k != "what")
    tracr_line = ""
    if "tracr_agreement" in beh["behaviours"]:
        a = beh["behaviours"]["tracr_agreement"]
        tracr_line = (f"\nAgainst tracr's own JAX model on {a['inputs']} inputs: max |output difference| "
                      f"{a['max_abs_diff']:.3g}.\n")
    return f"""---
library_name: transformers
tags: [mechstudy, interpretability, ground-truth-circuit]
---
# {name}: a model whose circuit is known by construction

Part of mechstudy's ground-truth set (issue 10, part 3): models on which circuit-discovery methods
(ACDC, EAP, path patching) are scored by edge precision and recall against the true circuit
(`score circuit ...`, studies in `studies/groundtruth/`). Built by
`python -m mechstudy.stdlib.groundtruth.build {name}`; {meta.get('construction', '')}.

## What it computes

{meta.get('program', '')}

Output: {meta.get('output', 'logit 10 for the predicted token')}.

| component | role |
|---|---|
{roles}

## Architecture

A plain `GPT2LMHeadModel`: {cfg.n_layer} layers, {cfg.n_head} head(s), d_model {cfg.n_embd}, MLP width
{cfg.n_inner}, {cfg.n_positions} positions, vocabulary {cfg.vocab_size} ({', '.join(c.tokens[:8])}{' ...' if len(c.tokens) > 8 else ''}),
ReLU MLPs, causal attention with the score scale folded into W_Q (`scale_attn_weights=false`),
untied unembedding, {beh['parameters']:,} parameters (fp32). The construction has no layer norm;
GPT-2's are made exact identities (`layer_norm_epsilon` 2**40 with gains 2**20, and an extra
residual dimension, `mean_zero`, holding minus the sum of the others in every write, so the
residual stream always has mean 0). `crafted.json` names every residual dimension.
Causal attention throughout: {'the reverse program is written as a continuation (input, separator, reversed output) because the original reads the length of the whole input, which a causal model cannot see' if name == 'tracr-reverse' else 'the program only ever reads earlier positions'}.

## True circuit (`truth.json`)

Derived from the weights (`stdlib/groundtruth/truth.py`): an edge of the component graph is
connected when a direction its sender writes is read by its receiver; the circuit is the
connected edges that carry token information into a receiver that reaches the logits
({len(t['circuit'])} of {t['graph']['edges_total']} edges):

    {chr(10).join('    ' + e for e in t['circuit']).strip()}

Connected edges that carry only positions or constants (the same in both prompts of a pair, so
invisible to any patching method): {', '.join(t['positional']) or 'none'}.
Connected edges whose receiver never reaches the logits (distractors): {', '.join(t['dead_ends']) or 'none'}.

## Measured

Exactness on held-out inputs (seed {HELD_OUT_SEED}): {exact}. ({ex['what']}.)
{tracr_line}
How ACDC, EAP and path patching score against this circuit: `study run studies/groundtruth/{STUDY[name]}.study`
(the numbers are asserted in `tests/test_score_circuit.py`).
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", nargs="?", default="all", choices=[*NAMES, "all"])
    ap.add_argument("--out", type=Path, default=MODELS_DIR)
    args = ap.parse_args(argv)
    for name in NAMES if args.which == "all" else (args.which,):
        build(name, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
