"""Activation-patching sweeps, side by side: mechstudy's `patch` operator, TransformerLens, and a
plain Hugging Face loop, on the same weights and prompts, numbers checked equal before timing.

    python benchmarks/bench_sweeps.py [--repeat 3] [--quick]

Two sweeps (IOI, denoising, logit_diff, mean over prompts per variant):

- heads: `patch heads in all layers` (each head's z at every position) -- TransformerLens
  `patching.get_act_patch_attn_head_out_all_pos`;
- resid x position: `patch resid at every position in all layers` -- `get_act_patch_resid_pre`;

plus, on `mini`, `patch neurons in all layers` (1536 MLP neurons) against attribution patching
only (TransformerLens has no neuron-sweep helper and a per-variant HF loop adds nothing new there):
AtP's advantage grows with the number of variants while its own cost stays about three passes;

on two models: a GPT-2-small-shaped model (12 layers x 12 heads, d_model 768, vocab 50257, random
weights, the word-level IOI tokenizer; 8 prompts) and the zoo's `mini` (3 layers x 4 heads,
d_model 128; 64 prompts, as in the quickstart).

Ways:
- mechstudy: the `patch` operator's run with its clean capture and baselines given (TransformerLens'
  timing likewise excludes its clean cache run), so it includes the captures it resumes from;
- mechstudy, no shortcuts: the same batched sweep with `plain=True` (every block, full answer
  logits per chunk, rows in order): what batching alone gives;
- HF loop: one forward per variant over all prompts, PyTorch hooks on the native modules, full
  logits (what a hand-written loop does), the model as `from_pretrained` loads it;
- TransformerLens 3.9 (`HookedTransformer` with weights converted from the same HF model by
  TransformerLens' own `convert_gpt2_weights`, its default processing), when importable: it lives
  in the benchmark's own environment (`benchmarks/run.py` makes it; never in the lock).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import gpt2_small, mmm, ratios, table, threads, timed, zoo  # noqa: E402


def _tl_model(hf):
    """A HookedTransformer with the HF GPT-2's weights (TransformerLens' own conversion and
    default processing: fold_ln, centred writing weights and unembedding), or None."""
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
        from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
    except ImportError:
        return None
    c = hf.config
    cfg = HookedTransformerConfig(n_layers=c.n_layer, d_model=c.n_embd, d_head=c.n_embd // c.n_head,
                                  n_heads=c.n_head, d_mlp=c.n_inner or 4 * c.n_embd, d_vocab=c.vocab_size,
                                  n_ctx=c.n_positions, act_fn="gelu_new", normalization_type="LN",
                                  eps=c.layer_norm_epsilon, original_architecture="GPT2LMHeadModel",
                                  default_prepend_bos=False)
    model = HookedTransformer(cfg)
    model.load_and_process_state_dict(convert_gpt2_weights(hf, cfg))
    return model.eval()


class Case:
    """One model and its prompts, loaded once for every way."""

    def __init__(self, name: str, path: Path, n: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        import mechstudy.stdlib.models.sources  # noqa: F401
        import mechstudy.stdlib.ops.patch  # noqa: F401
        from mechstudy.engine.context import Context
        from mechstudy.engine.fingerprint import model_fingerprint
        from mechstudy.engine.spec import Artifact
        from mechstudy.stdlib.datasets import Pairs
        from mechstudy.stdlib.datasets.ioi import generate
        from mechstudy.stdlib.models.sources import describe_dir

        self.name, self.path = name, path
        self.model_art = Artifact(data={"source": "hf", "ref": str(path), "options": {"dtype": "float32"},
                                        "path": str(path), "fingerprint": model_fingerprint(path), "libs": {},
                                        "info": describe_dir(path).as_dict()})
        self.ctx = Context(device="cpu")  # the device's default forward sizes
        self.adapter = self.ctx.model(self.model_art)
        self.dataset = generate(self.adapter.tokenizer, n=n, seed=0)
        self.pairs = Pairs.of(self.dataset)
        self.hf = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()  # as HF loads it
        self.tl = _tl_model(self.hf)
        self.rows = torch.arange(n)
        p = self.pairs
        self.lengths = (int(p.attention_mask.sum(1).min()), int(p.attention_mask.sum(1).max()))

    def metric(self, logits):  # [B, S, V] -> mean logit difference at the answer positions
        p = self.pairs
        x = logits[self.rows, p.answer_pos]
        return (x[self.rows, p.io_id] - x[self.rows, p.s_id]).mean()


def mechstudy(case: Case, word: str, positions, plain: bool = False):
    """The patch operator's run, given its clean capture and baseline (as the plan would)."""
    import torch

    from mechstudy.engine import spec
    from mechstudy.engine.spec import Artifact
    from mechstudy.stdlib import interventions as iv
    from mechstudy.stdlib.models.batching import capture_dataset
    from mechstudy.stdlib.models.sites import component
    from mechstudy.stdlib.ops.baseline import baselines

    kind = component(word).kind.name
    a, ctx = case.adapter, case.ctx
    source = Artifact(tensors=capture_dataset(a, case.dataset, kind, "clean", 32))
    _, m_clean, m_corr = baselines(a, case.pairs, "logit_diff", 32)
    base = Artifact(tensors={"clean": m_clean, "corrupted": m_corr})
    params = {"component": word, "component_index": None, "layers": "all", "positions": positions,
              "metric": "logit_diff", "direction": "denoising"}
    inputs = {"model": case.model_art, "dataset": case.dataset, "source": source, "baseline": base}
    if not plain:
        return lambda: torch.as_tensor(spec.OPS["patch"].run(inputs, params, ctx).tensors["patched"]).double()

    src = {l: torch.as_tensor(source.tensors[f"blocks.{l}.{'attn.hook_z' if kind == 'z' else 'hook_' + kind}"])
           for l in range(a.n_layers)}
    g = iv.grid(word, "all", positions, a.n_layers, iv.units(word, a, None), int(case.pairs.clean_ids.shape[1]))
    return lambda: iv.sweep(a, case.pairs, kind, src, g, "logit_diff", "corrupted", None, 32, plain=True).mean(1).view(g.shape)


def hf_loop(case: Case, word: str):
    """One full-logits forward per variant over all prompts, hooks on the native modules."""
    import torch

    hf, p = case.hf, case.pairs
    ids, mask, blocks = p.corrupted_ids, p.attention_mask, hf.transformer.h
    n_heads = hf.config.n_head
    with torch.no_grad():
        if word == "heads":
            seen = {}
            hs = [b.attn.c_proj.register_forward_pre_hook(lambda m, a, l=l: seen.__setitem__(l, a[0].clone()))
                  for l, b in enumerate(blocks)]
            hf(input_ids=p.clean_ids, attention_mask=mask)
            for h in hs:
                h.remove()
        else:
            clean = hf(input_ids=p.clean_ids, attention_mask=mask, output_hidden_states=True).hidden_states

    def heads():
        out = torch.empty(len(blocks), n_heads)
        for l, b in enumerate(blocks):
            dh = seen[l].shape[-1] // n_heads
            for h in range(n_heads):
                def patch(m, a, l=l, h=h):
                    z = a[0].clone()
                    z[..., h * dh:(h + 1) * dh] = seen[l][..., h * dh:(h + 1) * dh]
                    return (z,)
                handle = b.attn.c_proj.register_forward_pre_hook(patch)
                out[l, h] = case.metric(hf(input_ids=ids, attention_mask=mask).logits)
                handle.remove()
        return out

    def resid():
        width = ids.shape[1]
        out = torch.empty(len(blocks), width)
        for l, b in enumerate(blocks):
            for pos in range(width):
                def patch(m, a, kw, l=l, pos=pos):
                    x = (a[0] if a else kw["hidden_states"]).clone()
                    x[:, pos] = clean[l][:, pos]
                    return ((x, *a[1:]), kw) if a else (a, {**kw, "hidden_states": x})
                handle = b.register_forward_pre_hook(patch, with_kwargs=True)
                out[l, pos] = case.metric(hf(input_ids=ids, attention_mask=mask).logits)
                handle.remove()
        return out

    def run():
        with torch.no_grad():
            return (heads if word == "heads" else resid)().double()
    return run


def atp(case: Case, word: str, positions):
    """Attribution patching, as its statement's nodes run: capture the clean and the corrupted
    activations, one gradient node (a clean forward for the metric, a corrupted forward and
    backward), then the products (`attribute`). Its 'patched' estimate is compared by ranking."""
    import torch

    import mechstudy.stdlib.ops.attribute  # noqa: F401
    import mechstudy.stdlib.ops.gradient  # noqa: F401
    from mechstudy.engine import spec
    from mechstudy.stdlib.models.sites import component

    kind = component(word).kind.name
    io = {"model": case.model_art, "dataset": case.dataset}
    run = {k: spec.OPS[k].run for k in ("capture", "gradient", "attribute")}
    params = {"component": word, "component_index": None, "layers": "all", "positions": positions,
              "metric": "logit_diff", "direction": "denoising"}

    def go():
        clean = run["capture"](io, {"site": kind, "which": "clean"}, case.ctx)
        corrupted = run["capture"](io, {"site": kind, "which": "corrupted"}, case.ctx)
        grad = run["gradient"](io, {"site": kind, "which": "corrupted", "metric": "logit_diff", "ig_steps": 1}, case.ctx)
        art = run["attribute"]({"dataset": case.dataset, "clean": clean, "corrupted": corrupted, "gradient": grad},
                               params, case.ctx)
        return torch.as_tensor(art.tensors["patched"]).double()
    return go


def spearman(x, y) -> float:
    import torch

    rx, ry = (v.flatten().argsort().argsort().double() for v in (x, y))
    return float(torch.corrcoef(torch.stack([rx, ry]))[0, 1])


def transformer_lens(case: Case, word: str):
    import torch
    from transformer_lens import patching

    p = case.pairs
    with torch.no_grad():
        _, cache = case.tl.run_with_cache(p.clean_ids)
    fn = patching.get_act_patch_attn_head_out_all_pos if word == "heads" else patching.get_act_patch_resid_pre

    def run():
        with torch.no_grad():
            return fn(case.tl, p.corrupted_ids, cache, case.metric).double()
    return run


def bench(case: Case, word: str, repeat: int, plain: bool) -> dict:
    positions = "all" if word == "heads" else "each"
    ways = {"mechstudy": mechstudy(case, word, positions)}
    if plain:
        ways["mechstudy, no shortcuts"] = mechstudy(case, word, positions, True)
    ways["HF loop"] = hf_loop(case, word)
    if case.tl is not None:
        ways["TransformerLens 3.9"] = transformer_lens(case, word)
    ways["AtP (attribution patching)"] = atp(case, word, positions)
    ways["mechstudy"]()  # warm-up (allocator, first-call paths)
    results: dict = {}
    # Repeat 1 is also the check: every way's numbers against the HF loop's, before any comparison.
    times = timed({k: (lambda k=k, fn=fn: results.__setitem__(k, fn())) for k, fn in ways.items()}, 1)
    ref = results["HF loop"]
    estimate = results.pop("AtP (attribution patching)").reshape(ref.shape)
    diffs = {k: float((v.reshape(ref.shape) - ref).abs().max()) for k, v in results.items()}
    if max(diffs.values()) > 1e-4:
        raise AssertionError(f"{case.name} {word}: ways disagree: {diffs}")
    rank = spearman(estimate, ref)
    top = int(ref.flatten().abs().argmax()) == int(estimate.flatten().abs().argmax())
    if repeat > 1:
        more = timed(ways, repeat - 1)
        for k in times:
            for c in ("cpu", "wall"):
                times[k][c] += more[k][c]
    variants = int(ref.numel())
    return {"model": case.name, "sweep": word, "variants": variants, "prompts": case.pairs.n,
            "lengths": case.lengths, "diffs": diffs, "times": times, "spread": float(ref.max() - ref.min()),
            "atp_spearman": rank, "atp_same_top": top}


def bench_neurons(case: Case, repeat: int) -> dict:
    """`patch neurons in all layers` (the batched operator) vs attribution patching on the same
    neurons: the case where AtP is meant to pay (thousands of variants)."""
    ways = {"mechstudy": mechstudy(case, "neurons", "all"), "AtP (attribution patching)": atp(case, "neurons", "all")}
    results: dict = {}
    times = timed({k: (lambda k=k, fn=fn: results.__setitem__(k, fn())) for k, fn in ways.items()}, 1)
    ref, estimate = results["mechstudy"], results["AtP (attribution patching)"].reshape(results["mechstudy"].shape)
    if repeat > 1:
        more = timed(ways, repeat - 1)
        for k in times:
            for c in ("cpu", "wall"):
                times[k][c] += more[k][c]
    return {"model": case.name, "sweep": "neurons", "variants": int(ref.numel()), "prompts": case.pairs.n,
            "times": times, "atp_spearman": spearman(estimate, ref),
            "atp_same_top": int(ref.flatten().abs().argmax()) == int(estimate.flatten().abs().argmax())}


def markdown_neurons(r: dict) -> str:
    t = r["times"]
    a, m = t["AtP (attribution patching)"], t["mechstudy"]
    return (f"**{r['model']}, neurons** ({r['variants']} variants x {r['prompts']} prompts): the batched "
            f"`patch neurons in all layers` takes {mmm(m['cpu'], '{:.2f}')} CPU s, attribution patching "
            f"{mmm(a['cpu'], '{:.3f}')} CPU s: AtP faster by {mmm(ratios(m['cpu'], a['cpu']), '{:.0f}x')} (CPU), "
            f"{mmm(ratios(m['wall'], a['wall']), '{:.0f}x')} (wall); Spearman of its estimate with patching "
            f"{r['atp_spearman']:.4f}, same top neuron: {'yes' if r['atp_same_top'] else 'no'}.")


def markdown(res: list[dict], repeat: int) -> str:
    out = []
    for r in res:
        if r["sweep"] == "neurons":
            out.append(markdown_neurons(r))
            continue
        t = r["times"]
        rows = []
        for way, tt in t.items():
            if way.startswith("AtP"):
                continue
            cpu_x = ratios(tt["cpu"], t["mechstudy"]["cpu"])
            rows.append([way, mmm(tt["cpu"]), mmm(tt["wall"]),
                         "" if way == "mechstudy" else mmm(cpu_x, "{:.2f}x"),
                         "" if way == "mechstudy" else mmm(ratios(tt["wall"], t["mechstudy"]["wall"]), "{:.2f}x"),
                         f"{r['diffs'][way]:.1e}"])
        atp_t = t["AtP (attribution patching)"]
        atp_rows = [[f"AtP vs {way}", mmm(ratios(tt["cpu"], atp_t["cpu"]), "{:.1f}x"),
                     mmm(ratios(tt["wall"], atp_t["wall"]), "{:.1f}x")]
                    for way, tt in t.items() if not way.startswith("AtP")]
        out.append(f"**{r['model']}, {r['sweep']}** ({r['variants']} variants x {r['prompts']} prompts of "
                   f"{r['lengths'][0]}-{r['lengths'][1]} tokens; metric spread {r['spread']:.3g})\n\n"
                   + table(["way", "CPU s (min / median / max)", "wall s", "mechstudy faster by (CPU)",
                            "(wall)", "max abs diff vs HF loop"], rows)
                   + f"\n\nAttribution patching (captures + gradient + products): {mmm(atp_t['cpu'], '{:.3f}')} CPU s; "
                   f"Spearman of its estimate with activation patching {r['atp_spearman']:.3f}, same top variant: "
                   f"{'yes' if r['atp_same_top'] else 'no'}.\n\n"
                   + table(["AtP faster than", "CPU (min / median / max)", "wall"], atp_rows))
    return ("## Patching sweeps vs TransformerLens and a plain HF loop (`bench_sweeps`)\n\n"
            f"{repeat} interleaved repeats; per-repeat ratios of CPU seconds, min / median / max. "
            "Numbers are checked equal (max abs difference of the per-variant mean logit difference, "
            "against the HF loop) before timing.\n\n" + "\n\n".join(out))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="4-layer GPT-2-small-shaped model, one repeat")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--only", choices=("small", "mini"), help="one model only")
    ap.add_argument("--small-resid", action="store_true",
                    help="add the 12-layer resid x position sweep (TransformerLens takes about 9 CPU minutes "
                         "per repeat there, so `make bench` leaves it out)")
    args = ap.parse_args(argv if argv is not None else [])
    threads(1)
    repeat = 1 if args.quick else args.repeat
    small = None if args.only == "mini" else Case(
        "GPT-2-small-shaped (12 x 12, d 768)" if not args.quick else "GPT-2-small-shaped, 4 layers",
        gpt2_small(4 if args.quick else 12), 8)
    mini = None if args.only == "small" else Case("zoo mini (3 x 4, d 128)", zoo("mini"), 64)
    res = []
    # The shortcut-free sweep is shown on mini only: on the 12-layer model it costs a minute per
    # repeat (BENCHMARKS.md's step table has its numbers there).
    for case, word in ((small, "heads"), (mini, "heads"), (mini, "resid"), (small, "resid")):
        if case is None or (not args.small_resid and not args.quick and case is small and word == "resid"):
            continue
        r = bench(case, word, repeat, plain=case is mini or args.quick)
        print(json.dumps({k: v for k, v in r.items() if k != "times"}), flush=True)
        res.append(r)
    if mini is not None:
        r = bench_neurons(mini, repeat)
        print(json.dumps({k: v for k, v in r.items() if k != "times"}), flush=True)
        res.append(r)
    md = markdown(res, repeat)
    print(md)
    out = {"markdown": md, "results": res}
    if args.json:
        Path(args.json).write_text(json.dumps(out))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
