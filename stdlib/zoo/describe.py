"""What a zoo model's circuits turn out to be, measured by the stdlib's own study and written down.

    python -m mechstudy.stdlib.zoo.build small --describe

runs ``studies/circuits/<name>.study`` (induction scores, IOI head patching on novel and on training
templates, path patching, direct logit attribution, Greater-Than head patching) through the engine
with a throwaway cache, turns its tables into findings ("a1.h2 is an induction head: prefix
matching 0.91") and stores them under ``behaviours.json`` -> ``behaviours.circuits``, which the model
card and `study models` print. Nothing here is written by hand: rebuild the model and the findings
follow the new weights.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

STUDIES_DIR = Path(__file__).resolve().parents[2] / "studies" / "circuits"
CONVENTION = ("head patching is denoising (clean head outputs into the ABC-corrupted run; 1 = clean "
              "logit difference restored); path patching is noising (one head's corrupted output into the "
              "clean run with every other head frozen; 'drop' = clean minus patched logit difference); DLA "
              "reads each head's write through the final LayerNorm (scale frozen) and the unembedding")
INDUCTION_THRESHOLD = 0.5
PREV_THRESHOLD = 0.5


def _head(row: dict) -> str:
    return f"a{row['layer']}.h{row['head']}"


def _top(rows: list[dict], key: str, k: int, sign: int = 1) -> list[dict]:
    return sorted(rows, key=lambda r: -sign * r[key])[:k]


def _fmt(rows: list[dict], key: str, fmt: str = "{:.2f}") -> str:
    return ", ".join(f"{_head(r)} {fmt.format(r[key])}" for r in rows)


def findings(res: Any) -> dict:
    """Findings and the numbers behind them from a run of the circuits study (`mechstudy.run`)."""
    rows = lambda name: res[name].table.to_dicts()  # noqa: E731
    ind = rows("induction")
    inductive = [r for r in ind if r["prefix_matching"] > INDUCTION_THRESHOLD]
    previous = [r for r in ind if r["previous_token"] > PREV_THRESHOLD]
    selfish = [r for r in ind if r["self"] > PREV_THRESHOLD]
    icl = res["induction"].data.get("icl_score")
    ind_all = rows("induction_all")
    copying = rows("copying")
    base, base_train = res["base"].data, res["base_train"].data
    heads, heads_train = rows("heads"), rows("heads_train")
    direct = rows("direct")
    for r in direct:
        r["drop"] = base["clean_mean"] - r["patched"]
    dla = rows("dla")
    gt_base, gt_heads = res["gt_base"].data, rows("gt_heads")
    top_novel = _top(heads, "effect", 4)
    top_train = _top(heads_train, "effect", 4)
    shared = sorted({_head(r) for r in top_novel} & {_head(r) for r in top_train})
    out = [
        (f"Induction: {len(inductive)} head(s) prefix-match above {INDUCTION_THRESHOLD} on repeated random one-token "
         f"words (copy offset 31, never trained on): {_fmt(_top(inductive, 'prefix_matching', 6), 'prefix_matching')}"
         if inductive else f"Induction: no head prefix-matches above {INDUCTION_THRESHOLD} (best "
         f"{_fmt(_top(ind, 'prefix_matching', 1), 'prefix_matching')})")
        + f"; previous-token heads (score > {PREV_THRESHOLD}): "
        + (_fmt(_top(previous, "previous_token", 4), "previous_token") if previous else "none")
        + "; heads that attend to the current token (score > 0.5): "
        + (_fmt(_top(selfish, "self", 4), "self") if selfish else "none")
        + (f"; in-context learning score {icl:+.2f} nats (late minus early loss)." if icl is not None else "."),
        (f"On random ids of the whole vocabulary (most never in its text) the best prefix matching is "
         f"{_fmt(_top(ind_all, 'prefix_matching', 1), 'prefix_matching')}."),
        f"Copying the repeat (head patching on the same rows, denoising): {_fmt(_top(copying, 'effect', 4), 'effect')}.",
        (f"IOI on templates it never read (n={res['base'].table['n'][0]}): logit difference "
         f"{base['clean_mean']:.2f} clean, {base['corrupted_mean']:.2f} corrupted; on the published templates it trained "
         f"on {base_train['clean_mean']:.2f} (ratio {base['clean_mean'] / base_train['clean_mean']:.2f})."),
        f"IOI head patching, novel templates: {_fmt(top_novel, 'effect')}; training templates: {_fmt(top_train, 'effect')}"
        + (f" (shared: {', '.join(shared)})." if shared else " (no head in common)."),
        (f"Direct effect on the IOI logit difference (path patching): largest drops {_fmt(_top(direct, 'drop', 3), 'drop')}; "
         f"heads whose removal raises it (negative direct effect) {_fmt(_top(direct, 'drop', 2, -1), 'drop')}."),
        ("Layer 0 into layer 1 (path patching, noising; share of the logit difference left, lowest first): "
         + "; ".join(f"{part} {_fmt(_top(rows('to_' + part), 'effect', 2, -1), 'effect')}" for part in ("q", "k", "v"))
         + " (q at the answer position)."),
        f"Direct logit attribution of heads on IOI: {_fmt(_top(dla, 'effect', 3), 'effect')}; most negative "
        f"{_fmt(_top(dla, 'effect', 2, -1), 'effect')}.",
        (f"Greater-Than on a sentence form it never read: prob diff {gt_base['clean_mean']:.3f} clean, "
         f"{gt_base['corrupted_mean']:.3f} corrupted; head patching {_fmt(_top(gt_heads, 'effect', 3), 'effect')}."),
    ]
    answer = res["attention"].points[0].artifact.tables["answer"].to_dicts()
    lead = next(r for r in answer if _head(r) == _head(top_novel[0]))
    out.append(
        f"Attention at the answer position (novel IOI prompts): the top IOI head {_head(lead)} on S2 "
        f"{lead['to_s2']:.3f}, S1 {lead['to_s1']:.3f}, IO {lead['to_io']:.3f}; most on IO: "
        + ", ".join(f"{_head(r)} IO {r['to_io']:.2f} / S1 {r['to_s1']:.2f}" for r in _top(answer, "to_io", 2))
        + "; most on S2: " + ", ".join(f"{_head(r)} {r['to_s2']:.2f}" for r in _top(answer, "to_s2", 2)) + ".")
    numbers = {
        "induction_heads": [{"head": _head(r), "prefix_matching": round(r["prefix_matching"], 4)} for r in inductive],
        "previous_token_heads": [{"head": _head(r), "previous_token": round(r["previous_token"], 4)} for r in previous],
        "icl_score": None if icl is None else round(float(icl), 4),
        "best_prefix_matching_whole_vocabulary": round(max(r["prefix_matching"] for r in ind_all), 4),
        "ioi_novel": {"clean": round(base["clean_mean"], 4), "corrupted": round(base["corrupted_mean"], 4)},
        "ioi_train": {"clean": round(base_train["clean_mean"], 4), "corrupted": round(base_train["corrupted_mean"], 4)},
        "ioi_heads_novel": [{"head": _head(r), "effect": round(r["effect"], 4)} for r in top_novel],
        "ioi_heads_train": [{"head": _head(r), "effect": round(r["effect"], 4)} for r in top_train],
        "greater_than": {"clean": round(gt_base["clean_mean"], 4), "corrupted": round(gt_base["corrupted_mean"], 4)},
        "answer_attention": {_head(r): {k: round(r[k], 4) for k in ("to_io", "to_s1", "to_s2")} for r in answer},
    }
    return {"findings": out, "numbers": numbers}


def describe(name: str, directory: Path) -> dict:
    """Run `name`'s circuits study on the shipped directory and store its findings in behaviours.json."""
    import mechstudy as ms
    from mechstudy.stdlib.zoo import MODELS_DIR

    if Path(directory).resolve() != (MODELS_DIR / name).resolve():
        raise ValueError(f"the circuits study reads the shipped zoo model {name!r} ({MODELS_DIR / name}), not {directory}")
    study = STUDIES_DIR / f"{name}.study"
    if not study.is_file():
        raise FileNotFoundError(f"{study}: the circuits study of zoo model {name!r} (run from a source checkout)")
    with tempfile.TemporaryDirectory(prefix="mechstudy-describe-") as tmp:
        res = ms.run(study, cache=Path(tmp) / "cache", report=False)
        found = findings(res)
    found = {"study": f"studies/circuits/{name}.study", "convention": CONVENTION, **found}
    path = Path(directory) / "behaviours.json"
    summary = json.loads(path.read_text())
    summary["behaviours"]["circuits"] = found
    path.write_text(json.dumps(summary, indent=1) + "\n")
    return found
