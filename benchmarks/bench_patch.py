"""Batched activation patching vs one forward per patch, same model, same sweep, one run.

    python benchmarks/bench_patch.py [--n 8] [--layers 4] [--max-rows 32] [--device cpu]

The model is GPT-2-small-shaped (d_model 768, 12 heads, 50257-row unembedding) with `--layers`
layers, randomly initialised, with the word-level IOI tokenizer; the sweep is `patch heads in all
layers` (denoising, logit_diff) on `ioi(n=N)`. Three ways, numbers checked equal:

- loop, full logits: one forward per (layer, head) over the N prompts, every position unembedded
  (what a hand-written loop of single patches does);
- loop, answer logits: the same loop, unembedding only each prompt's answer position;
- batched: the patch operator's sweep: variants x prompts as rows, `--max-rows` rows per forward,
  answer-position logits only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import torch

from mechstudy.stdlib import metrics
from mechstudy.stdlib.datasets import Pairs
from mechstudy.stdlib.datasets.ioi import generate
from mechstudy.stdlib.models.base import Edit, load_adapter
from mechstudy.stdlib.models.batching import capture_all
from mechstudy.stdlib.models.sites import Site
from mechstudy.stdlib.models.tiny import make_tiny_gpt2
from mechstudy.stdlib.ops.evaluate import baselines
from mechstudy.stdlib import interventions as iv


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def loop(adapter, pairs, source, clean_logits, answer_only: bool) -> torch.Tensor:
    """One forward per head patch, all prompts at once. Returns [L * H, N]."""
    n_layers, n_heads, dev = adapter.n_layers, adapter.n_heads, adapter.device
    ids, mask, pos = pairs.corrupted_ids.to(dev), pairs.attention_mask.to(dev), pairs.answer_pos.to(dev)
    rows = torch.arange(pairs.n, device=dev)
    out = []
    for layer in range(n_layers):
        src = source[layer].to(dev)
        for head in range(n_heads):
            edit = Edit(Site(layer, "z", head=head), src[:, :, head])
            if answer_only:
                logits = adapter.forward(ids, mask, edits=[edit], logits_at=pos).logits
            else:
                logits = adapter.forward(ids, mask, edits=[edit]).logits[rows, pos]
            out.append(metrics.values("logit_diff", logits, pairs.io_id, pairs.s_id, clean_logits).cpu())
    return torch.stack(out)


def tl_loop(bridge, pairs, source, clean_logits) -> torch.Tensor:
    """The same sweep the TransformerLens way: one `run_with_hooks` per head patch.

    Right padding never changes the logits at a prompt's own answer position (causal attention,
    absolute positions), so no attention mask is needed for identical numbers."""
    ids, pos = pairs.corrupted_ids, pairs.answer_pos
    rows = torch.arange(pairs.n)
    n_layers, n_heads = len(source), source[0].shape[2]
    out = []
    for layer in range(n_layers):
        src = source[layer]
        for head in range(n_heads):
            def hook(z, hook, head=head, src=src):
                z[:, :, head] = src[:, : z.shape[1], head]
                return z

            logits = bridge.run_with_hooks(ids, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)])[rows, pos]
            out.append(metrics.values("logit_diff", logits, pairs.io_id, pairs.s_id, clean_logits).cpu())
    return torch.stack(out)


def _transformer_lens(model_dir: str, adapter):
    """A TransformerLens 4 bridge over the very same HF model, when TransformerLens is installed."""
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:
        return None
    return TransformerBridge.boot_transformers(model_dir, hf_model=adapter.model, tokenizer=adapter.tokenizer,
                                               device=str(adapter.device))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8, help="ioi prompts")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--max-rows", type=int, default=32, help="rows per batched forward")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeat", type=int, default=1, help="time each way this many times, keep the best")
    args = ap.parse_args(argv if argv is not None else [])

    with tempfile.TemporaryDirectory() as tmp:
        make_tiny_gpt2(tmp, seed=0, n_layer=args.layers, n_head=12, d_model=768, n_ctx=1024,
                       vocab_size=50257, init_std=0.02)
        adapter = load_adapter(tmp, device=args.device)
        bridge = _transformer_lens(tmp, adapter)
    pairs = Pairs.of(generate(adapter.tokenizer, n=args.n, seed=0))
    with torch.no_grad():
        source = capture_all(adapter, pairs.clean_ids, pairs.attention_mask, adapter.sites("z"), args.max_rows)
        source = {s.layer: a for s, a in source.items()}
        clean_logits, _ = baselines(adapter, pairs, args.max_rows)
        g = iv.grid("heads", "all", "all", adapter.n_layers, list(range(adapter.n_heads)), pairs.clean_ids.shape[1])
        ways = {
            "loop, full logits": lambda: loop(adapter, pairs, source, clean_logits, answer_only=False),
            "loop, answer logits": lambda: loop(adapter, pairs, source, clean_logits, answer_only=True),
            "batched": lambda: iv.sweep(adapter, pairs, "z", source, g, "logit_diff", "corrupted",
                                        clean_logits, args.max_rows),
        }
        if bridge is not None:
            ways["TransformerLens loop"] = lambda: tl_loop(bridge, pairs, source, clean_logits)
        ways["batched"]()  # warm-up (allocator, kernels)
        times, cpu, results = {}, {}, {}
        for name, fn in ways.items():
            best, best_cpu = float("inf"), float("inf")
            for _ in range(args.repeat):
                _sync(args.device)
                t0, c0 = time.perf_counter(), time.process_time()
                results[name] = fn()
                _sync(args.device)
                best = min(best, time.perf_counter() - t0)
                best_cpu = min(best_cpu, time.process_time() - c0)
            times[name], cpu[name] = best, best_cpu
    ref = results["loop, full logits"]
    n_var = len(vl)
    print(f"model: GPT-2-small-shaped, {adapter.n_layers} layers x {adapter.n_heads} heads, d_model "
          f"{adapter.d_model}, vocab {adapter.info.d_vocab}; device {args.device}, threads {torch.get_num_threads()}")
    print(f"sweep: heads in all layers = {n_var} patches x {pairs.n} prompts "
          f"(prompt length {int(pairs.attention_mask.sum(1).min())}-{pairs.clean_ids.shape[1]})")
    # CPU seconds too: on a shared machine wall time mostly measures the neighbours.
    print(f"{'way':<22}{'forwards':>9}{'rows/fwd':>10}{'wall s':>9}{'speedup':>9}{'cpu s':>9}{'speedup':>9}"
          "  max |diff|")
    fwd_batched = -(-n_var * pairs.n // args.max_rows)
    base = "loop, full logits"
    for name in ways:
        fwds, rows = (n_var, pairs.n) if "loop" in name else (fwd_batched, min(args.max_rows, n_var * pairs.n))
        diff = (results[name].reshape(n_var, -1) - ref).abs().max().item()
        print(f"{name:<22}{fwds:>9}{rows:>10}{times[name]:>9.2f}{times[base] / times[name]:>8.2f}x"
              f"{cpu[name]:>9.2f}{cpu[base] / cpu[name]:>8.2f}x  {diff:.1e}")
    return {"wall": times, "cpu": cpu}


if __name__ == "__main__":
    main(sys.argv[1:])
