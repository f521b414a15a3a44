"""The cold and warm paths of `study run` (engine/warm.py, engine/store.py's quick checks,
stdlib/datasets' tokenizer):

- a warm rerun of an unchanged, fully cached study imports neither torch, transformers, dask nor
  the stdlib, and prints what a full warm run prints;
- anything a plan depends on takes the full path again: an edit of the study, a changed dataset
  file, a changed entry (size or mtime), a new file in the model directory, a missing memo;
- entries are checked by sizes and mtimes on the hot path, by checksums otherwise;
- a dataset node tokenises without loading the model's weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

STUDY = """\
study "warm"

model m = hf "{model}"
dataset ioi = ioi(n=6, seed=0)
dataset words = file "words.csv" prompt=text answer=io wrong=s corrupted=abc

base  = evaluate m on ioi with logit_diff
heads = patch heads in layer 1 of m on ioi with logit_diff
own   = evaluate m on words with logit_diff
"""

# Runs the CLI in a fresh interpreter and reports which heavy modules it imported.
PROBE = """\
import sys
from mechstudy.engine import cli
code = cli.main(sys.argv[1:])
heavy = sorted(m for m in ("torch", "transformers", "dask", "mechstudy.stdlib", "lark", "polars") if m in sys.modules)
print("HEAVY " + ",".join(heavy))
sys.exit(code)
"""


@pytest.fixture()
def study(tmp_path, tiny_gpt2_dir):
    (tmp_path / "words.csv").write_text("text,io,s,abc\nThen Mary and John went to the store John gave a drink to,"
                                        "Mary,John,Then Alice and David went to the store Laura gave a drink to\n")
    p = tmp_path / "warm.study"
    p.write_text(STUDY.format(model=tiny_gpt2_dir))
    return p


def _run(study: Path, cache: Path, *extra: str) -> tuple[str, set[str]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", PROBE, "run", str(study), "--cache", str(cache),
                        "--out", str(study.parent / "out"), *extra],
                       capture_output=True, text=True, timeout=600, env=env, cwd=study.parent)
    assert r.returncode == 0, r.stderr
    heavy = next(line for line in r.stdout.splitlines() if line.startswith("HEAVY "))[6:]
    return r.stdout, set(filter(None, heavy.split(",")))


def test_warm_rerun_imports_nothing_heavy(study, tmp_path):
    cache = tmp_path / "cache"
    out, heavy = _run(study, cache)
    assert "0 from cache" in out and "torch" in heavy  # cold: everything computed
    n = int(out.split(" computed")[0].split()[-1])
    report = tmp_path / "out" / "report.html"
    before = report.stat().st_mtime_ns
    t0 = time.perf_counter()
    out, heavy = _run(study, cache)
    took = time.perf_counter() - t0
    assert f"0 computed, {n} from cache" in out and f"report: {report.resolve()}" in out
    assert heavy == set(), heavy  # neither torch, transformers, dask, lark nor the stdlib
    assert report.stat().st_mtime_ns == before  # the report is left as the full run wrote it
    assert took < 30  # generous: a shared test machine; BENCHMARKS.md has the measured times
    # --json carries the same events as a full warm run: start, a node event per root, finish
    out, heavy = _run(study, cache, "--json")
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events][0] == "start" and events[-1]["event"] == "finish"
    assert events[-1]["computed"] == 0 and events[-1]["cached"] == n and not heavy


def test_anything_the_plan_depends_on_takes_the_full_path(study, tmp_path, tiny_gpt2_dir):
    cache = tmp_path / "cache"
    _run(study, cache)
    _, heavy = _run(study, cache)
    assert not heavy
    # an edit of the study: full path, and only the edited statement recomputes
    study.write_text(study.read_text().replace("in layer 1", "in layer 0"))
    out, heavy = _run(study, cache)
    assert "torch" in heavy and "computed" in out and not out.splitlines()[-1].startswith("0 computed")
    _, heavy = _run(study, cache)
    assert not heavy  # warm again
    # a dataset file the plan fingerprinted
    csv = tmp_path / "words.csv"
    csv.write_text(csv.read_text() + "Then Kevin and Sarah met at the station Kevin gave a snack to,Sarah,Kevin,"
                                     "Then Lisa and Peter met at the station Ryan gave a snack to\n")
    out, heavy = _run(study, cache)
    assert "mechstudy.stdlib" in heavy and "computed" in out
    _run(study, cache)
    # a changed store entry: the quick check fails, the full path checksums and recomputes it
    from mechstudy.engine.store import Store

    store = Store(cache)
    key = json.loads(Path(str(study) + ".lock").read_text())["results"]["heads"][0]
    f = store.path(key) / "tensors.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    out, heavy = _run(study, cache)
    assert "torch" in heavy and "1 computed" in out
    # the memo gone: full path, which writes it again
    for p in (cache / "plans").iterdir():
        p.unlink()
    _, heavy = _run(study, cache)
    assert "mechstudy.stdlib" in heavy
    _, heavy = _run(study, cache)
    assert not heavy


def test_new_file_in_the_model_directory_changes_the_fingerprint_path(tmp_path, tiny_gpt2_dir):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_gpt2_dir, model)
    p = tmp_path / "s.study"
    p.write_text(f'model m = hf "{model}"\ndataset ioi = ioi(n=4)\nb = evaluate m on ioi with logit_diff\n')
    cache = tmp_path / "cache"
    _run(p, cache)
    assert not _run(p, cache)[1]
    (model / "extra.json").write_text("{}")  # a new file the fingerprint reads
    _, heavy = _run(p, cache)
    assert "mechstudy.stdlib" in heavy


def test_quick_check_uses_sizes_and_mtimes_then_checksums(tmp_path):
    import torch

    from mechstudy.engine.spec import Artifact
    from mechstudy.engine.store import CorruptEntry, Store, unchanged_since_written

    store = Store(tmp_path / "c")
    store.put("a" * 32, Artifact(tensors={"x": torch.arange(10.0)}, data={"k": 1}), {"op": "t"})
    d, m = store.path("a" * 32), store.manifest("a" * 32)
    assert all(isinstance(v["mtime_ns"], int) for v in m["files"].values())
    assert unchanged_since_written(d, m)
    store.verify("a" * 32, quick=True)
    f = d / "data.json"
    f.write_text(f.read_text().replace("1", "2"))  # same size, new mtime: caught by the checksum
    assert not unchanged_since_written(d, m)
    with pytest.raises(CorruptEntry, match="checksum"):
        store.verify("a" * 32, quick=True)
    old = {**m, "files": {k: {kk: vv for kk, vv in v.items() if kk != "mtime_ns"} for k, v in m["files"].items()}}
    assert not unchanged_since_written(d, old)  # entries written before mtimes: checksummed


def test_dataset_node_tokenises_without_loading_the_model(tiny_model_artifact):
    from mechstudy.engine import spec
    from mechstudy.engine.context import Context, _MODEL_MEMO
    from mechstudy.engine.run import load_stdlib

    load_stdlib()
    _MODEL_MEMO.clear()
    art = spec.OPS["dataset"].run({"model": tiny_model_artifact},
                                  {"generator": "ioi", "generator_version": 1, "params": {"n": 5, "seed": 0}},
                                  Context(device="cpu"))
    assert art.tensors["clean_ids"].shape[0] == 5
    assert not _MODEL_MEMO  # no model was loaded for it
