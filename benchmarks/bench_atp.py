"""Attribution patching vs activation patching of every head, same model, same prompts, one run.

    python benchmarks/bench_atp.py [--n 8] [--layers 4] [--max-rows 32] [--model DIR] [--device cpu]

The model is GPT-2-small-shaped (d_model 768, 12 heads, 50257-row unembedding) with `--layers`
layers, randomly initialised, with the word-level IOI tokenizer (or any local HF directory with
`--model`, e.g. the zoo's mini); the question is `heads in all layers` (denoising, logit_diff) on
`ioi(n=N)`. Three ways, each timed from nothing cached:

- AtP: the operators' work for `attribute heads ...`: capture clean and corrupted z, one gradient
  node (a no-grad clean forward, a corrupted forward and backward), then the products;
- patching, batched: the `patch` operator (its clean capture, baselines and batched sweep);
- patching, loop: one forward per head patch over the N prompts (answer logits only).

It prints time, forwards, and how well AtP's head ranking matches activation patching (Spearman).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import torch

from mechstudy.engine import spec
from mechstudy.engine.context import Context
from mechstudy.engine.fingerprint import model_fingerprint
from mechstudy.engine.spec import Artifact
from mechstudy.stdlib import metrics
from mechstudy.stdlib.datasets import Pairs
from mechstudy.stdlib.datasets.ioi import generate
from mechstudy.stdlib.models.base import Edit
from mechstudy.stdlib.models.sites import Site
from mechstudy.stdlib.models.tiny import make_tiny_gpt2


def _load_ops() -> None:
    import mechstudy.stdlib.models.sources  # noqa: F401  (registers the hf and zoo model sources)
    import mechstudy.stdlib.ops.attribute  # noqa: F401
    import mechstudy.stdlib.ops.capture  # noqa: F401
    import mechstudy.stdlib.ops.gradient  # noqa: F401
    import mechstudy.stdlib.ops.patch  # noqa: F401


def _spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    def rank(v: torch.Tensor) -> torch.Tensor:
        return v.argsort().argsort().double()

    rx, ry = rank(x.flatten()), rank(y.flatten())
    return torch.corrcoef(torch.stack([rx, ry]))[0, 1].item()


def atp(io: dict, ctx: Context) -> Artifact:
    run = {k: spec.OPS[k].run for k in ("capture", "gradient", "attribute")}
    clean = run["capture"](io, {"site": "z", "which": "clean"}, ctx)
    corrupted = run["capture"](io, {"site": "z", "which": "corrupted"}, ctx)
    grad = run["gradient"](io, {"site": "z", "which": "corrupted", "metric": "logit_diff", "ig_steps": 1}, ctx)
    params = {"component": "heads", "layers": "all", "positions": "all", "metric": "logit_diff",
              "direction": "denoising", "component_index": None}
    return run["attribute"]({"dataset": io["dataset"], "clean": clean, "corrupted": corrupted, "gradient": grad},
                            params, ctx)


def patching(io: dict, ctx: Context) -> Artifact:
    params = {"component": "heads", "layers": "all", "positions": "all", "metric": "logit_diff",
              "direction": "denoising"}
    return spec.OPS["patch"].execute(io, params, ctx)


def loop(adapter, pairs: Pairs, ctx: Context) -> torch.Tensor:
    """Normalised effect of each head patch, one forward per patch: [L, H]."""
    from mechstudy.stdlib.models.batching import capture_all
    from mechstudy.stdlib.ops.evaluate import baselines

    with torch.no_grad():
        source = capture_all(adapter, pairs.clean_ids, pairs.attention_mask, adapter.sites("z"), ctx.max_rows)
        clean_logits, corrupted_logits = baselines(adapter, pairs, ctx.max_rows)
        m = [metrics.values("logit_diff", x, pairs.io_id, pairs.s_id).mean().item()
             for x in (clean_logits, corrupted_logits)]
        dev = adapter.device
        ids, mask, pos = pairs.corrupted_ids.to(dev), pairs.attention_mask.to(dev), pairs.answer_pos.to(dev)
        out = torch.empty(adapter.n_layers, adapter.n_heads, dtype=torch.float64)
        for s, z in source.items():
            for h in range(adapter.n_heads):
                edit = Edit(Site(s.layer, "z", head=h), z[:, :, h].to(dev))
                logits = adapter.forward(ids, mask, edits=[edit], logits_at=pos).logits
                patched = metrics.values("logit_diff", logits, pairs.io_id, pairs.s_id).mean().item()
                out[s.layer, h] = metrics.normalise(patched, m[0], m[1])
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8, help="ioi prompts")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--max-rows", type=int, default=32, help="rows per batched forward")
    ap.add_argument("--model", default=None, help="a local HF model directory instead of the random GPT-2")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv if argv is not None else [])
    _load_ops()

    with tempfile.TemporaryDirectory() as tmp:
        path = args.model
        if path is None:
            path = str(make_tiny_gpt2(tmp, seed=0, n_layer=args.layers, n_head=12, d_model=768, n_ctx=1024,
                                      vocab_size=50257, init_std=0.02))
        model = Artifact(data={"source": "hf", "ref": path, "options": {"dtype": "float32"}, "path": path,
                               "fingerprint": model_fingerprint(path), "libs": {}})
        ctx = Context(device=args.device, max_rows=args.max_rows)
        adapter = ctx.model(model)
        dataset = generate(adapter.tokenizer, n=args.n, seed=0)
        pairs = Pairs.of(dataset)
        io = {"model": model, "dataset": dataset}
        atp(io, ctx)  # warm-up (allocator, kernels)
        ways = {"AtP (2 captures + grad)": lambda: atp(io, ctx).tensors["effect"],
                "patching, batched": lambda: patching(io, ctx).tensors["effect"],
                "patching, loop": lambda: loop(adapter, pairs, ctx)}
        times, cpu, effects = {}, {}, {}
        for name, fn in ways.items():
            t0, c0 = time.perf_counter(), time.process_time()
            effects[name] = fn().double()
            times[name], cpu[name] = time.perf_counter() - t0, time.process_time() - c0
    n_var = adapter.n_layers * adapter.n_heads
    chunks = -(-pairs.n // args.max_rows)
    forwards = {"AtP (2 captures + grad)": f"{4 * chunks} + 1 bwd",
                "patching, batched": f"{3 * chunks + -(-n_var * pairs.n // args.max_rows)}",
                "patching, loop": f"{3 * chunks + n_var}"}
    truth = effects["patching, loop"]
    print(f"model: {adapter.n_layers} layers x {adapter.n_heads} heads, d_model {adapter.d_model}, vocab "
          f"{adapter.info.d_vocab}; device {args.device}, threads {torch.get_num_threads()}; ioi n={pairs.n}")
    print(f"{'way':<26}{'forwards':>13}{'wall s':>9}{'cpu s':>9}{'cpu speedup':>13}  vs patching: max |diff|  spearman")
    base = "patching, loop"
    for name in ways:
        diff = (effects[name].reshape(truth.shape) - truth).abs().max().item()
        print(f"{name:<26}{forwards[name]:>13}{times[name]:>9.2f}{cpu[name]:>9.2f}{cpu[base] / cpu[name]:>12.1f}x"
              f"  {diff:>20.3g}  {_spearman(effects[name], truth):>8.3f}")
    return {"wall": times, "cpu": cpu, "spearman": _spearman(effects["AtP (2 captures + grad)"], truth)}


if __name__ == "__main__":
    main(sys.argv[1:])
