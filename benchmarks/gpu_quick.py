"""The GPU check, one short command: `python benchmarks/run.py --gpu-quick` on a CUDA machine.

Builds the GPT-2-small-shaped model (12 x 12, d 768, random weights) on the spot and loads it and
the zoo's mini on the GPU (float32, TF32 off), then, per model:

- the head sweep three ways, numbers checked equal first: mechstudy's batched sweep (its default
  GPU forward size and every shortcut), the same sweep without shortcuts, and a plain HF loop (one
  full-logits forward per head over all prompts);
- the sweep's throughput (rows per second) as the rows per forward grow, which is what the GPU
  defaults in engine/context.py (DEFAULT_ROWS, DEFAULT_TOKENS) are chosen from;
- attribution patching (captures + gradient + products).

Prints a markdown section for BENCHMARKS.md and writes gpu_quick.json (to $OUT when set). CPU
numbers and tests never depend on it. Without polars (a bare CUDA image) the prompts come from
benchmarks/.gpu-data.json, which `python benchmarks/gpu_quick.py --prepare` writes on any machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HERE, mmm, table  # noqa: E402

DATA = HERE / ".gpu-data.json"
KEYS = ("clean_ids", "corrupted_ids", "attention_mask", "answer_pos", "io_id", "s_id")
SIZES = {"gpt2-small-shaped": 64, "mini": 256}


def _gpt2_small(root: Path) -> Path:
    from mechstudy.stdlib.models.tiny import make_tiny_gpt2

    d = root / "gpt2-small-shaped-12"
    if not (d / "config.json").is_file():
        make_tiny_gpt2(d, seed=0, n_layer=12, n_head=12, d_model=768, n_ctx=1024, vocab_size=50257, init_std=0.02)
    return d


def _model_dirs(root: Path) -> dict[str, Path]:
    from mechstudy.stdlib.models.sources import zoo_locate

    return {"gpt2-small-shaped": _gpt2_small(root), "mini": Path(zoo_locate("mini", {}))}


def prepare(root: Path) -> None:
    """Write the prompts (token ids for each model's tokenizer) for machines without polars."""
    from mechstudy.stdlib.datasets.ioi import generate
    from transformers import AutoTokenizer

    out = {}
    for name, d in _model_dirs(root).items():
        tok = AutoTokenizer.from_pretrained(d, local_files_only=True)
        art = generate(tok, n=SIZES[name], seed=0)
        out[name] = {k: art.tensors[k].tolist() for k in KEYS}
    DATA.write_text(json.dumps(out))
    print(f"wrote {DATA}")


def _dataset(name: str, tokenizer):
    """The IOI dataset artifact for this model's tokenizer."""
    import torch

    from mechstudy.engine.spec import Artifact

    try:
        from mechstudy.stdlib.datasets.ioi import generate

        return generate(tokenizer, n=SIZES[name], seed=0)
    except ImportError:  # no polars here: the prepared prompts
        data = json.loads(DATA.read_text())[name]
        return Artifact(tensors={k: torch.tensor(v) for k, v in data.items()})


def bench(name: str, path: Path, repeat: int, device: str) -> dict:
    import torch

    from mechstudy.engine.context import Context
    from mechstudy.stdlib import interventions as iv
    from mechstudy.stdlib.datasets import Pairs
    from mechstudy.stdlib.models.base import load_adapter
    from mechstudy.stdlib.models.batching import capture_all

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    ad = load_adapter(path, device=device)
    ds = _dataset(name, ad.tokenizer)
    pairs = Pairs.of(ds)
    ctx = Context(device=device)
    rows = iv.rows(ctx, pairs)
    n = pairs.n

    def caps(which, kind):
        return {s.layer: a for s, a in capture_all(ad, pairs.ids(which), pairs.attention_mask, ad.sites(kind),
                                                   ctx.max_rows).items()}

    with torch.no_grad():
        src = caps("clean", "z")
        g = iv.grid("heads", "all", "all", ad.n_layers, list(range(ad.n_heads)), int(pairs.clean_ids.shape[1]))

        def ours(r=rows):
            return iv.sweep(ad, pairs, "z", src, g, "logit_diff", "corrupted", None, r,
                            resume=caps("corrupted", "resid_pre"), replay=caps("corrupted", "z")).mean(1)

        def plain():
            return iv.sweep(ad, pairs, "z", src, g, "logit_diff", "corrupted", None, rows, plain=True).mean(1)

        model, blocks = ad.model, ad.model.transformer.h
        ids, mask, apos = (t.to(device) for t in (pairs.corrupted_ids, pairs.attention_mask, pairs.answer_pos))
        io, s = pairs.io_id.to(device), pairs.s_id.to(device)
        ar = torch.arange(n, device=device)

        def hf_loop():
            out = []
            for l, b in enumerate(blocks):
                z = src[l].to(device).flatten(-2)
                dh = z.shape[-1] // ad.n_heads
                for h in range(ad.n_heads):
                    def patch(m, a, h=h, z=z):
                        x = a[0].clone()
                        x[..., h * dh:(h + 1) * dh] = z[:, : x.shape[1], h * dh:(h + 1) * dh]
                        return (x,)
                    hd = b.attn.c_proj.register_forward_pre_hook(patch)
                    lg = model(input_ids=ids, attention_mask=mask).logits[ar, apos]
                    hd.remove()
                    out.append((lg[ar, io] - lg[ar, s]).double().mean())
            return torch.stack(out).cpu()

        ways = {"mechstudy": ours, "mechstudy, no shortcuts": plain, "HF loop": hf_loop}
        res = {k: fn().cpu() for k, fn in ways.items()}
        diffs = {k: float((v - res["HF loop"]).abs().max()) for k, v in res.items()}
        if max(diffs.values()) > 1e-3:
            raise AssertionError(f"{name}: ways disagree {diffs}")
        times = {k: [] for k in ways}
        for _ in range(repeat):
            for k, fn in ways.items():
                sync()
                t = time.perf_counter()
                fn()
                sync()
                times[k].append(time.perf_counter() - t)
        curve = {}
        for r in (32, 128, 512, 1024, 2048, 4096):
            ts = []
            for _ in range(repeat):
                sync()
                t = time.perf_counter()
                ours(r)
                sync()
                ts.append(time.perf_counter() - t)
            curve[r] = len(g) * n / min(ts)
    try:
        import mechstudy.stdlib.ops.attribute  # noqa: F401  (polars: absent from a bare CUDA image)
        import mechstudy.stdlib.ops.gradient  # noqa: F401
    except ImportError as e:
        return {"model": name, "variants": len(g), "prompts": n, "rows_per_forward": rows, "diffs": diffs,
                "times": times, "rows_per_s": curve, "atp": [float("nan")] * repeat, "atp_spearman": float("nan"),
                "atp_skipped": str(e)}
    from mechstudy.engine import spec
    from mechstudy.engine.spec import Artifact

    grads = []
    for _ in range(repeat):
        sync()
        t = time.perf_counter()
        clean = Artifact(tensors={f"blocks.{l}.attn.hook_z": x for l, x in caps("clean", "z").items()})
        corr = Artifact(tensors={f"blocks.{l}.attn.hook_z": x for l, x in caps("corrupted", "z").items()})
        from mechstudy.stdlib.ops.gradient import gradients

        gr, mc, mr = gradients(ad, pairs, "z", "corrupted", "logit_diff", 1, ctx.max_rows)
        art = spec.OPS["attribute"].run({"dataset": ds, "clean": clean, "corrupted": corr,
                                         "gradient": Artifact(tensors={**gr, "metric_clean": mc, "metric_corrupted": mr},
                                                              data={"metric": "logit_diff"})},
                                        {"component": "heads", "component_index": None, "layers": "all",
                                         "positions": "all", "metric": "logit_diff", "direction": "denoising"}, ctx)
        sync()
        grads.append(time.perf_counter() - t)
    est = torch.as_tensor(art.tensors["patched"]).flatten().double()
    ref = res["HF loop"].flatten()
    rank = float(torch.corrcoef(torch.stack([est.argsort().argsort().double(), ref.argsort().argsort().double()]))[0, 1])
    return {"model": name, "variants": len(g), "prompts": n, "rows_per_forward": rows, "diffs": diffs,
            "times": times, "rows_per_s": curve, "atp": grads, "atp_spearman": rank}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--prepare", action="store_true", help="write the prompts for a machine without polars")
    ap.add_argument("--models", default=str(Path(tempfile.gettempdir()) / "mechstudy-gpu-models"))
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of the script itself")
    args = ap.parse_args(argv if argv is not None else [])
    root = Path(args.models)
    root.mkdir(parents=True, exist_ok=True)
    if args.prepare:
        prepare(root)
        return {}
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: the GPU check needs one (CPU numbers never depend on it)")
        return {}
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    res = [bench(name, d, args.repeat, args.device) for name, d in _model_dirs(root).items()]
    rows = []
    for r in res:
        t = r["times"]
        for way, tt in t.items():
            rows.append([r["model"], f"{r['variants']} x {r['prompts']}", way, mmm(tt, "{:.3f}"),
                         "" if way == "mechstudy" else mmm([a / b for a, b in zip(tt, t["mechstudy"])], "{:.1f}x"),
                         f"{r['diffs'][way]:.1e}"])
        rows.append([r["model"], "", "AtP (captures + gradient + products)", mmm(r["atp"], "{:.3f}"),
                     mmm([a / b for a, b in zip(t["mechstudy"], r["atp"])], "{:.1f}x") + " faster than mechstudy's sweep",
                     f"Spearman {r['atp_spearman']:.3f}"])
    curves = [[r["model"]] + [f"{v:,.0f}" for v in r["rows_per_s"].values()] for r in res]
    dev = f"{torch.cuda.get_device_name(0) if args.device == 'cuda' else 'CPU (dry run)'}, torch {torch.__version__}"
    md = ("## GPU check (`python benchmarks/run.py --gpu-quick`)\n\n"
          f"{dev}; float32 with TF32 off; wall seconds with the device synchronised, {args.repeat} repeats.\n\n"
          + table(["model", "variants x prompts", "way", "s (min / median / max)", "mechstudy faster by",
                   "max abs diff vs HF loop"], rows)
          + "\n\nHead-sweep throughput (rows per second) by rows per forward:\n\n"
          + table(["model", *[str(k) for k in res[0]["rows_per_s"]]], curves))
    print(md)
    out = Path(os.environ.get("OUT") or ".")
    (out / "gpu_quick.json").write_text(json.dumps({"markdown": md, "results": res, "device": dev}, default=str))
    return {"markdown": md}


if __name__ == "__main__":
    main(sys.argv[1:])
