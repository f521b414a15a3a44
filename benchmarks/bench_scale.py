"""Scale of inputs: `study check` of a 20,000-token line, a 1M-row file dataset, a zip bomb.

    python benchmarks/run.py scale            # or: python benchmarks/bench_scale.py [--rows N]

1. `study check` (the whole CLI verb, in a subprocess) of studies with one 20,000-token line of
   four shapes: a long layer list, 20,000 bare words, 6,666 unknown options, 20,000 stray numbers.
   Before the fix, rendering repeated the whole line under each of thousands of errors (177 s and
   10 GB for one such line); now the shown line is a window around the caret and at most 50 errors
   are rendered.
2. The `file` dataset node of a 1M-row CSV (unique prompts, IOI-style, with corrupted prompts and
   answer columns) tokenised by the zoo's `mini` BPE tokenizer: the batched generator against the
   row-by-row way it replaced (measured on the first 50,000 rows and scaled to 1M).
3. `study unpack` of a 1.5 GiB zip bomb: refused from its header; time and peak memory.

torch runs on 1 thread (OMP_NUM_THREADS=1); the tokenizer's own Rust threads are left as they are.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent


def _long_lines(d: Path) -> dict[str, Path]:
    head = 'model m = zoo "mini"\ndataset d = ioi(n=4)\n'
    n = 20_000
    shapes = {
        "layer list": 'x = patch heads in layers [' + ", ".join(str(i % 3) for i in range(n // 2)) + '] of m on d with kl',
        "bare words": "x = patch " + " ".join("heads" for _ in range(n)),
        "unknown options": "x = patch heads in layer 1 of m on d with kl " + " ".join(f"a{i}=1" for i in range(n // 3)),
        "stray numbers": "x = patch heads in layer 1 of m on d with kl " + " ".join("1" for _ in range(n)),
    }
    out = {}
    for name, line in shapes.items():
        p = d / (name.replace(" ", "_") + ".study")
        p.write_text(head + line + "\n")
        out[name] = p
    return out


def check_long_lines() -> None:
    with tempfile.TemporaryDirectory() as d:
        print("| line of 20,000 tokens | errors | wall s | max RSS MB | stderr KB |")
        print("|---|---|---|---|---|")
        for name, p in _long_lines(Path(d)).items():
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-c", "import resource, sys; from mechstudy.engine.cli import main; "
                                "code = main(sys.argv[1:]); "
                                "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stdout); sys.exit(code)",
                                "check", str(p)], capture_output=True, text=True, timeout=600)
            wall = time.perf_counter() - t0
            rss = int(r.stdout.strip().splitlines()[-1]) / 1024
            errors = r.stderr.strip().splitlines()[-1]
            print(f"| {name} | {errors} | {wall:.2f} | {rss:.0f} | {len(r.stderr) / 1024:.0f} |")


def _big_csv(path: Path, rows: int) -> None:
    import polars as pl

    base = pl.read_csv(ROOT / "studies" / "data" / "prompts.csv")
    df = pl.concat([base] * (rows // base.height + 1)).head(rows).with_row_index("i")
    pre = pl.format("Story {}: ", pl.col("i"))
    df.with_columns(pl.concat_str([pre, pl.col("text")]).alias("text"),
                    pl.concat_str([pre, pl.col("corrupted")]).alias("corrupted")).drop("i").write_csv(path)


def file_dataset(rows: int = 1_000_000, old_rows: int = 50_000) -> None:
    import polars as pl
    from transformers import AutoTokenizer

    from mechstudy.stdlib.datasets import encode, pad_id_of, pad_right
    from mechstudy.stdlib.datasets.file import generate, read

    tok = AutoTokenizer.from_pretrained(str(ROOT / "stdlib" / "zoo" / "models" / "mini"), local_files_only=True)
    params = {"path": "big.csv", "prompt": "text", "answer": "answer", "wrong": "wrong", "corrupted": "corrupted"}
    with tempfile.TemporaryDirectory() as d:
        csv = Path(d) / "big.csv"
        _big_csv(csv, rows)
        t0 = time.perf_counter()
        table = read(str(csv))
        t_read = time.perf_counter() - t0
        # The row-by-row way (what the generator did before): one tokenizer call per cell, a tensor per row.
        sub = table.head(old_rows)
        c0, t0 = time.process_time(), time.perf_counter()
        clean = [encode(tok, t, None) for t in sub["text"]]
        pad_right(clean, pad_id_of(tok))
        pad_right([encode(tok, t, None) for t in sub["corrupted"]], pad_id_of(tok))
        for col in ("answer", "wrong"):
            [tok(" " + a, add_special_tokens=False)["input_ids"] for a in sub[col]]
        old_wall, old_cpu = time.perf_counter() - t0, time.process_time() - c0
        c0, t0 = time.process_time(), time.perf_counter()
        art = generate(tok, table, params)
        new_wall, new_cpu = time.perf_counter() - t0, time.process_time() - c0
        scale = rows / old_rows
        assert art.tensors["clean_ids"].shape[0] == rows
        # Same ids as row by row on the measured prefix.
        ref = pad_right(clean, pad_id_of(tok))[0]
        got = art.tensors["clean_ids"][:old_rows, : ref.shape[1]]
        assert (got == ref).all() and int(art.tensors["attention_mask"][:old_rows].sum()) == sum(map(len, clean))
    print(f"\n{rows:,}-row CSV ({csv.name}, read by polars in {t_read:.1f} s)\n")
    print("| way | rows measured | wall s | CPU s | wall s for 1M rows |")
    print("|---|---|---|---|---|")
    print(f"| row by row (before) | {old_rows:,} | {old_wall:.1f} | {old_cpu:.1f} | {old_wall * scale:.0f} (scaled) |")
    print(f"| batched (the `file` generator) | {rows:,} | {new_wall:.1f} | {new_cpu:.1f} | {new_wall * 1_000_000 / rows:.0f} |")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


def zip_bomb() -> None:
    import json
    import tracemalloc
    import zipfile

    from mechstudy.engine.pack import PackError, unpack
    from mechstudy.engine.store import Store

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "bomb.zip"
        with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.writestr("pack.json", json.dumps({"pack_format": 1, "study": "s.study", "entries": ["1" * 32]}))
            z.writestr("study/s.study", 'study "s"\n')
            info = zipfile.ZipInfo("objects/" + "1" * 32 + "/tensors.safetensors")
            info.compress_type = zipfile.ZIP_DEFLATED
            with z.open(info, "w", force_zip64=True) as f:
                for _ in range(1536):
                    f.write(bytes(1 << 20))
        tracemalloc.start()
        t0 = time.perf_counter()
        try:
            unpack(p, Store(Path(d) / "cache"), Path(d) / "w")
            verdict = "IMPORTED (wrong)"
        except PackError as e:
            verdict = f"refused: {e}"
        wall = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    print(f"\nzip bomb ({p.stat().st_size if p.exists() else 0} bytes on disk, 1.5 GiB inflated): {verdict}; "
          f"{wall * 1000:.0f} ms, {peak / 1e6:.1f} MB of Python memory at peak")


def main() -> None:
    check_long_lines()
    zip_bomb()
    file_dataset(int(os.environ.get("BENCH_ROWS", "1000000")))


if __name__ == "__main__":
    if "--rows" in sys.argv:
        os.environ["BENCH_ROWS"] = sys.argv[sys.argv.index("--rows") + 1]
    main()
