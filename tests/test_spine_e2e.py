"""The spine end to end on a tiny GPT-2: study text -> plan -> Dask -> store -> report, via the CLI."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mechstudy.engine import cli
from mechstudy.engine.store import Store

STUDY = """\
study "Which heads move the indirect object?"

model m = hf "{model}"
dataset ioi = ioi(n=12, seed=0)

base   = evaluate m on ioi with logit_diff
heads1 = patch heads in layer 1 of m on ioi with logit_diff
heads  = patch heads in all layers of m on ioi with logit_diff

plot heads as heatmap titled "Head patching effect"
"""
# model, dataset, baseline (shared by evaluate and the patches), evaluate, captures (clean z, and the
# corrupted resid_pre and z the patches resume from), 2 patches, 2 charts
N_NODES = 11


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture()
def study(tmp_path, tiny_gpt2_dir):
    p = tmp_path / "ioi.study"
    p.write_text(STUDY.format(model=tiny_gpt2_dir))
    return p


def test_cold_warm_edit_show_explain_why(study, tmp_path, capsys):
    cache = str(tmp_path / "cache")
    out_dir = str(tmp_path / "out")
    code, out, err = _run(capsys, "run", str(study), "--cache", cache, "--out", out_dir)
    assert code == 0, err
    assert f"{N_NODES} computed, 0 from cache" in out
    assert (tmp_path / "out" / "report.html").stat().st_size > 100_000  # charts + inlined bundle
    assert Path(str(study) + ".lock").is_file()

    code, out, _ = _run(capsys, "run", str(study), "--cache", cache, "--out", out_dir)
    assert code == 0 and f"0 computed, {N_NODES} from cache" in out

    # `heads` (all layers) contains layer 1: its rows must equal heads1's exactly.
    code, out, _ = _run(capsys, "show", str(study), "heads", "--cache", cache, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(rows) == 8 and {r["layer"] for r in rows} == {"0", "1"}
    code, out1, _ = _run(capsys, "show", str(study), "heads1", "--cache", cache, "--format", "csv")
    rows1 = list(csv.DictReader(io.StringIO(out1)))
    assert [r["effect"] for r in rows if r["layer"] == "1"] == [r["effect"] for r in rows1]

    # Edit one statement: only its patch node and its chart recompute.
    study.write_text(study.read_text().replace("patch heads in layer 1", "patch heads in layer 0"))
    code, out, _ = _run(capsys, "why", str(study), "heads1", "--cache", cache)
    assert "new params: patch.layers: [1] -> [0]" in out
    code, out, _ = _run(capsys, "explain", str(study), "--cache", cache)
    assert out.count(" missing") == 2 and out.count(" cached") == N_NODES - 2
    code, out, _ = _run(capsys, "run", str(study), "--cache", cache, "--out", out_dir)
    assert code == 0 and f"2 computed, {N_NODES - 2} from cache" in out


def test_pack_unpack_run_from_and_verify(study, tmp_path, capsys, monkeypatch):
    cache = str(tmp_path / "cache")
    assert _run(capsys, "run", str(study), "--cache", cache, "--out", str(tmp_path / "o1"))[0] == 0
    pack = tmp_path / "ioi.studypack.zip"
    code, out, err = _run(capsys, "pack", str(study), "--cache", cache, "-o", str(pack))
    assert code == 0, err
    # Another researcher: a fresh store; charts appear with no recompute.
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    code, out, err = _run(capsys, "run", str(study), "--from", str(pack), "--cache", str(other / "cache"), "--out", str(other / "o"))
    assert code == 0, err
    assert "0 computed" in out
    code, out, err = _run(capsys, "verify", str(study), "--cache", str(other / "cache"))
    assert code == 0, out + err
    assert out.count("ok ") == 3 and "0 differ or missing" in out


BROKEN = """\
study "broken"
model m = hf "{model}"
dataset ioi = ioi(n=8)
a = patch heads in layer 7 of m on ioi with logit_dif
b = patch haeds in layer 0 of m on ioi with logit_diff
c = evaluate m on iio with prob
"""


def test_check_reports_all_errors_with_carets_and_no_traceback(tmp_path, tiny_gpt2_dir):
    p = tmp_path / "broken.study"
    p.write_text(BROKEN.format(model=tiny_gpt2_dir))
    r = subprocess.run([sys.executable, "-m", "mechstudy.engine.cli", "check", str(p)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr + r.stdout
    assert f"{p}:4:" in r.stderr and "error:" in r.stderr and "^" in r.stderr
    assert "did you mean 'logit_diff'?" in r.stderr
    assert "did you mean 'heads'?" in r.stderr
    assert "did you mean 'ioi'?" in r.stderr
    assert "layer 7" in r.stderr


KILL_STUDY = """\
study "kill me"
model m = hf "{model}"
dataset ioi = ioi(n=24, seed=1)
{stmts}
"""


def test_sigkill_during_study_run_then_rerun_completes(tmp_path, tiny_gpt2_dir):
    stmts = "\n".join(f"r{i} = patch resid in all layers of m on ioi with {m}" for i, m in enumerate(["logit_diff", "prob", "kl"]))
    stmts += "\n" + "\n".join(f"h{i} = patch heads in layer {i} of m on ioi with {m}" for i in (0, 1) for m in ["prob"])
    p = tmp_path / "k.study"
    p.write_text(KILL_STUDY.format(model=tiny_gpt2_dir, stmts=stmts))
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "mechstudy.engine.cli", "run", str(p), "--cache", str(cache), "--out", str(tmp_path / "o")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    objects = cache / "objects"
    while time.time() < deadline and proc.poll() is None:
        if objects.is_dir() and len(list(objects.glob("*/*/manifest.json"))) >= 4:
            break
        time.sleep(0.02)
    if proc.poll() is not None:
        pytest.fail("the run finished before it could be killed; make the study bigger")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = Store(cache)
    before = list(store.keys())
    for k in before:
        store.verify(k)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    # model, dataset, captures (clean and corrupted z and resid_pre), baselines (logit_diff, prob,
    # kl); 5 patches; 5 charts
    total = 6 + 3 + 5 + 5
    computed = int(r.stdout.strip().splitlines()[-1].split()[0])
    # Whatever was whole before the kill is reused; everything else is computed exactly once.
    assert computed == total - len(before) and len(list(store.keys())) == total
    for k in store.keys():
        store.verify(k)
