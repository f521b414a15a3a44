"""Achieved FLOP/s of forwards and sweeps against the machine's measured matrix-product FLOP/s.

    python benchmarks/bench_flops.py [--repeat 2]

One thread. The machine: single-precision matrix products of the shapes a GPT-2-small forward
multiplies (tokens x 768 by 768 x 3072). The work: a plain HF forward of the GPT-2-small-shaped
model (12 layers, 32 prompts x 16 tokens, answer logits only), and mechstudy's head sweep on it
(8 IOI prompts) with and without its shortcuts. FLOPs are counted by PyTorch's FlopCounterMode
over the very calls made (matrix products and attention; elementwise work is not counted), CPU
seconds are measured in separate, uncounted runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import gpt2_small, mmm, table, threads, timed  # noqa: E402


def counted(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as c:
        fn()
    return float(c.get_total_flops())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args(argv if argv is not None else [])
    threads(1)
    import torch

    from mechstudy.stdlib import interventions as iv
    from mechstudy.stdlib.datasets import Pairs
    from mechstudy.stdlib.datasets.ioi import generate
    from mechstudy.stdlib.models.base import load_adapter
    from mechstudy.stdlib.models.batching import capture_all

    rows = []
    for m in (512, 1024):
        a, b = torch.randn(m, 768), torch.randn(768, 3072)
        t = timed({"mm": lambda: [a @ b for _ in range(10)]}, args.repeat)["mm"]["cpu"]
        rows.append([f"matrix product {m} x 768 by 768 x 3072", mmm([2 * m * 768 * 3072 * 10 / x / 1e9 for x in t], "{:.0f}"), ""])
    peak = max(float(r[1].split(" / ")[2]) for r in rows)

    ad = load_adapter(gpt2_small(12))
    pairs = Pairs.of(generate(ad.tokenizer, n=32, seed=0))
    ids, mask = pairs.clean_ids[:, :16], pairs.attention_mask[:, :16]
    at = (mask.sum(1) - 1).clamp(max=15)
    small = Pairs.of(generate(ad.tokenizer, n=8, seed=0))
    with torch.no_grad():
        c = {w: {s.layer: x for s, x in capture_all(ad, small.ids(w), small.attention_mask, ad.sites(k)).items()}
             for w, k in (("clean", "z"), ("corrupted", "resid_pre"))}
        rz = {s.layer: x for s, x in capture_all(ad, small.corrupted_ids, small.attention_mask, ad.sites("z")).items()}
        g = iv.grid("heads", "all", "all", ad.n_layers, list(range(ad.n_heads)), int(small.clean_ids.shape[1]))
        work = {
            "HF forward, 32 x 16 tokens": lambda: ad.model(input_ids=ids, attention_mask=mask, logits_to_keep=at[:, None]),
            "mechstudy head sweep (144 variants x 8 prompts)": lambda: iv.sweep(
                ad, small, "z", c["clean"], g, "logit_diff", "corrupted", None, 64, resume=c["corrupted"], replay=rz),
            "the same sweep, no shortcuts": lambda: iv.sweep(
                ad, small, "z", c["clean"], g, "logit_diff", "corrupted", None, 64, plain=True),
        }
        flops = {k: counted(fn) for k, fn in work.items()}
        t = timed(work, args.repeat)
    for k in work:
        rates = [flops[k] / x / 1e9 for x in t[k]["cpu"]]
        rows.append([k, mmm(rates, "{:.0f}"), f"{flops[k] / 1e9:.0f} GFLOP in {mmm(t[k]['cpu'])} CPU s; "
                     f"{max(rates) / peak:.0%} of the best matrix product"])
    md = ("## Achieved FLOP/s vs the machine's matrix products (`bench_flops`)\n\n"
          "One thread; FLOPs counted by PyTorch's FlopCounterMode (matrix products and attention), "
          f"CPU seconds from {args.repeat} uncounted runs.\n\n"
          + table(["work", "GFLOP/s (min / median / max)", "notes"], rows)
          + "\n\nThe shortcut-free sweep multiplies more (every block of every variant, the whole "
          "unembedding) at a similar rate; the shortcuts remove work rather than speed up the kernels.")
    print(md)
    return {"markdown": md, "flops": flops}


if __name__ == "__main__":
    main(sys.argv[1:])
