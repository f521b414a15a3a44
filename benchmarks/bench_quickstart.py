"""The quickstart from the command line: cold, warm and one-edit runs against `study --help`.

    python benchmarks/bench_quickstart.py [--repeat 3]

Each run is a fresh `study run studies/quickstart.study --json` process (wall seconds of the
whole process, interpreter start-up included), on its own copy of the study:

- cold: an empty store, everything computed (each repeat gets a fresh store);
- warm: the same study again, nothing to compute (the warm path, engine/warm.py);
- one edit: `heads0` moved to another layer (its patch node and chart recompute), on a copy of
  the warm store;
- `study --help`: the floor, an interpreter and the CLI's parser.

The cold runs' dataset nodes are reported on their own (their seconds from the `node` events):
tokenising without loading any weights.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, mmm, table  # noqa: E402

STUDY = ROOT / "studies" / "quickstart.study"


def _study_bin() -> str:
    exe = Path(sys.executable).parent / "study"
    return str(exe) if exe.is_file() else str(ROOT / ".venv" / "bin" / "study")


def run(args: list[str], cwd: Path) -> tuple[float, list[dict], str]:
    t = time.perf_counter()
    r = subprocess.run([_study_bin(), *args], cwd=cwd, capture_output=True, text=True, timeout=1800,
                       env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"study {' '.join(args)} failed: {r.stderr[-2000:]}")
    events = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    return wall, events, r.stdout


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv if argv is not None else [])
    times: dict[str, list[float]] = {"cold": [], "warm": [], "one edit": [], "study --help": []}
    dataset_nodes: list[float] = []
    computed: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeat):
            d = Path(tmp) / f"r{r}"
            d.mkdir()
            study = d / "quickstart.study"
            shutil.copy(STUDY, study)
            common = ["run", str(study), "--cache", str(d / "cache"), "--out", str(d / "out"), "--json"]
            wall, ev, _ = run(common, d)
            times["cold"].append(wall)
            dataset_nodes += [e["seconds"] for e in ev if e.get("event") == "node" and e["op"] == "dataset"
                              and e["status"] == "computed"]
            computed["cold"] = ev[-1]["computed"]
            wall, ev, _ = run(common, d)
            times["warm"].append(wall)
            computed["warm"] = ev[-1]["computed"]
            e = d / "edit"
            shutil.copytree(d / "cache", e / "cache")
            shutil.copy(study, e / "quickstart.study")
            edited = e / "quickstart.study"
            edited.write_text(edited.read_text().replace("patch heads in layer 0", f"patch heads in layer {1 + r % 2}"))
            wall, ev, _ = run(["run", str(edited), "--cache", str(e / "cache"), "--out", str(e / "out"), "--json"], e)
            times["one edit"].append(wall)
            computed["one edit"] = ev[-1]["computed"]
            t = time.perf_counter()
            subprocess.run([_study_bin(), "--help"], capture_output=True, check=True)
            times["study --help"].append(time.perf_counter() - t)
    rows = [[k, mmm(v), computed.get(k, "")] for k, v in times.items()]
    md = ("## The quickstart from the command line (`bench_quickstart`)\n\n"
          f"`study run studies/quickstart.study` (zoo `mini`, IOI and Greater-Than, n=64) as a fresh process each "
          f"time, wall seconds including interpreter start-up, {args.repeat} repeats.\n\n"
          + table(["run", "wall s (min / median / max)", "nodes computed"], rows)
          + f"\n\nCold runs' dataset nodes (tokenising, no weights loaded): {mmm(dataset_nodes, '{:.3f}')} s each "
          f"({len(dataset_nodes)} nodes). The warm run imports neither torch, transformers, dask nor the "
          "stdlib (engine/warm.py; tests/test_warm_path.py checks it).")
    print(md)
    return {"markdown": md, "times": times, "dataset_nodes": dataset_nodes}


if __name__ == "__main__":
    main(sys.argv[1:])
