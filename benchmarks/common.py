"""What every benchmark shares: fixed threads, paired repeats timed in CPU and wall seconds,
min/median/max, the machine and library versions, and the models the benchmarks run on.

Timing convention: one torch thread per process (OMP_NUM_THREADS=1 and torch.set_num_threads(1),
set before torch is imported by `benchmarks/run.py`), every way compared in the same process on
the same model object and inputs, repeats interleaved (way A, way B, way A, way B, ...) so a noisy
neighbour hits all ways alike, results checked equal before anything is timed. CPU seconds
(`time.process_time`) are the steady column on a shared machine; wall seconds are reported too.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODELS = HERE / ".models"  # built on first use, git-ignored


def threads(n: int = 1) -> int:
    """Fix torch's intra-op threads (and BLAS's) for this process; returns the count."""
    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ["MKL_NUM_THREADS"] = str(n)
    import torch

    torch.set_num_threads(n)
    return torch.get_num_threads()


def mmm(xs: Sequence[float], fmt: str = "{:.2f}") -> str:
    """"min / median / max" of a list of numbers."""
    return " / ".join(fmt.format(v) for v in (min(xs), statistics.median(xs), max(xs)))


def stats(xs: Sequence[float]) -> dict[str, float]:
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs)}


def timed(ways: dict[str, Callable[[], Any]], repeat: int, sync: Callable[[], None] = lambda: None
          ) -> dict[str, dict[str, list[float]]]:
    """Each way `repeat` times, interleaved: {way: {"cpu": [...], "wall": [...]}} in seconds."""
    out = {name: {"cpu": [], "wall": []} for name in ways}
    for _ in range(repeat):
        for name, fn in ways.items():
            sync()
            c, w = time.process_time(), time.perf_counter()
            fn()
            sync()
            out[name]["cpu"].append(time.process_time() - c)
            out[name]["wall"].append(time.perf_counter() - w)
    return out


def ratios(slow: Sequence[float], fast: Sequence[float]) -> list[float]:
    """Per-repeat ratios of paired timings (repeat i of one way against repeat i of the other)."""
    return [s / f for s, f in zip(slow, fast)]


def machine() -> dict[str, Any]:
    """The machine and the library versions, for the report's header."""
    import importlib.metadata as md

    import torch

    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) / 2**20
    except OSError:
        pass
    versions = {}
    for pkg in ("mechstudy", "torch", "transformers", "dask", "transformer-lens"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem, 1) if mem else None,
            "python": platform.python_version(), "versions": versions, "threads": torch.get_num_threads(),
            "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else None, "gpu": gpu,
            "date": time.strftime("%Y-%m-%d %H:%M")}


def gpt2_small(layers: int = 12) -> Path:
    """A GPT-2-small-shaped model (12 heads, d_model 768, d_mlp 3072, vocab 50257, 1024 positions;
    `layers` layers), randomly initialised (std 0.02, seed 0), with the word-level IOI tokenizer:
    GPT-2 small's shapes, so its speed is GPT-2 small's, without downloading its weights."""
    from mechstudy.stdlib.models.tiny import make_tiny_gpt2

    d = MODELS / f"gpt2-small-shaped-{layers}"
    if not (d / "config.json").is_file():
        make_tiny_gpt2(d, seed=0, n_layer=layers, n_head=12, d_model=768, n_ctx=1024, vocab_size=50257, init_std=0.02)
    return d


def zoo(name: str = "mini") -> Path:
    from mechstudy.stdlib.models.sources import zoo_locate

    return Path(zoo_locate(name, {}))


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)
