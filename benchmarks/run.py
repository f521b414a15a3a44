"""Run the benchmarks and write BENCHMARKS.md.

    python benchmarks/run.py                 # every benchmark (make bench), then BENCHMARKS.md
    python benchmarks/run.py sweeps flops    # some of them (names are substrings of bench_*.py)
    python benchmarks/run.py --no-write      # print only
    python benchmarks/run.py sweeps --write  # some of them, and BENCHMARKS.md says which were not run
    python benchmarks/run.py --gpu-quick     # the GPU check: one short command on a CUDA machine

Every benchmark runs in its own process with one torch thread (OMP_NUM_THREADS=1,
torch.set_num_threads(1)), compares its ways in that one process on the same model and inputs,
checks their numbers equal before timing, and reports min / median / max over repeats. The
TransformerLens comparison needs TransformerLens, which is never in the lock: this script makes
the benchmark's own environment, benchmarks/.venv-tl (a venv that sees the project's packages and
adds TransformerLens and exactly what it needs from benchmarks/requirements-tl.txt, which `make lock`
writes with the lock), on first use; without network it
reports the comparison as skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TL_ENV = HERE / ".venv-tl"
HISTORY = HERE / "history.md"  # measurements of the steps that made the sweeps faster (kept by hand)
TL_ONLY = {"bench_sweeps"}  # run under the TransformerLens environment when there is one


def tl_python() -> tuple[str | None, str]:
    """The benchmark environment's interpreter (made if missing), or None and why not."""
    py = TL_ENV / "bin" / "python"
    if not py.is_file():
        import site
        import venv

        venv.create(TL_ENV, with_pip=True)
        ours = [p for p in site.getsitepackages() if Path(p).is_dir()]
        target = next(TL_ENV.glob("lib/python*/site-packages"))
        # the project's environment first in line: the same torch, transformers and mechstudy
        (target / "mechstudy_project.pth").write_text("".join(f"import site; site.addsitedir({p!r})\n" for p in ours))
        # exact versions of everything TransformerLens adds (written by `make lock`): nothing is resolved
        r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "-r", str(HERE / "requirements-tl.txt")],
                           capture_output=True, text=True)
        if r.returncode != 0:
            return None, "pip could not install TransformerLens: " + r.stderr.strip().splitlines()[-1][:200]
    r = subprocess.run([str(py), "-c", "import transformer_lens, torch, mechstudy"], capture_output=True, text=True)
    if r.returncode != 0:
        return None, "TransformerLens does not import: " + (r.stderr.strip().splitlines() or ["?"])[-1][:200]
    return str(py), ""


def run_one(path: Path, python: str) -> dict:
    """A benchmark's main() in a fresh process; its JSON result (or its printed output)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    code = (f"import json, sys; sys.path.insert(0, {str(HERE)!r}); import {path.stem} as b; "
            f"r = b.main([]) if 'argv' in b.main.__code__.co_varnames else b.main(); "
            f"open({str(out)!r}, 'w').write(json.dumps(r if isinstance(r, dict) else {{}}, default=str))")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
           "PYTHONUNBUFFERED": "1"}
    t = time.perf_counter()
    r = subprocess.run([python, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t
    print(r.stdout[-4000:], end="")
    if r.returncode != 0:
        print(r.stderr[-3000:], file=sys.stderr)
        return {"markdown": f"## {path.stem}\n\nfailed: {(r.stderr.strip().splitlines() or ['?'])[-1][:300]}"}
    res = json.loads(out.read_text() or "{}")
    out.unlink()
    if "markdown" not in res:  # a benchmark that only prints
        res["markdown"] = f"## `{path.stem}`\n\n```\n{r.stdout.strip()}\n```"
    res["seconds"] = took
    return res


def header(machine: dict, tl_note: str) -> str:
    v = machine["versions"]
    rows = [("CPU", f"{machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB"),
            ("threads", f"{machine['threads']} torch thread per process (OMP_NUM_THREADS=1)"),
            ("load average at start", f"{machine['load']:.1f} (the machine is shared; CPU seconds are the steady column)"),
            ("Python", machine["python"]),
            ("libraries", ", ".join(f"{k} {x}" for k, x in v.items())),
            ("TransformerLens", tl_note),
            ("date", machine["date"])]
    return ("# Benchmarks\n\nWritten by `make bench` (`python benchmarks/run.py`; one benchmark: "
            "`python benchmarks/run.py NAME`; the GPU check: `python benchmarks/run.py --gpu-quick`). "
            "Every way is compared in one process on the same model and inputs, numbers are checked "
            "equal before timing, one torch thread per process, repeats interleaved, min / median / max "
            "reported; ratios are per repeat (repeat i of one way against repeat i of the other).\n\n"
            + "| | |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows))


def main(argv: list[str]) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if "--gpu-quick" in argv:
        sys.path.insert(0, str(HERE))
        import gpu_quick

        gpu_quick.main([a for a in argv if a != "--gpu-quick"])
        return 0
    write = "--no-write" not in argv
    names = [a for a in argv if not a.startswith("--")]
    files = sorted(HERE.glob("bench_*.py"))
    if names:
        files = [f for f in files if any(a in f.stem for a in names)]
    tl, why = tl_python() if any(f.stem in TL_ONLY for f in files) else (None, "not run")
    tl_note = f"3.9, in benchmarks/.venv-tl ({tl})" if tl else f"skipped: {why}"
    sections = []
    for f in files:
        print(f"== {f.stem}", flush=True)
        res = run_one(f, tl if (tl and f.stem in TL_ONLY) else sys.executable)
        print(f"   ({res.get('seconds', 0):.0f} s)", flush=True)
        sections.append(res["markdown"])
    sys.path.insert(0, str(HERE))
    from common import machine, threads

    threads(1)
    skipped = [f.stem for f in sorted(HERE.glob("bench_*.py")) if f not in files]
    if skipped:
        sections.append("## Not run in this pass\n\n" + ", ".join(f"`{s}`" for s in skipped)
                        + ": `make bench` runs every benchmark.")
    text = "\n\n".join([header(machine(), tl_note), *sections] + ([HISTORY.read_text().strip()] if HISTORY.is_file() else []))
    if write and (not names or "--write" in argv):
        (ROOT / "BENCHMARKS.md").write_text(text + "\n")
        print(f"wrote {ROOT / 'BENCHMARKS.md'}")
    elif write:
        print("(some benchmarks only: BENCHMARKS.md left as it is; run them all to rewrite it)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
