"""Stopping: Ctrl-C and SIGTERM end a run within seconds, even inside a long node, and an
interrupted node is never committed. Real threads, real subprocesses, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytest

import engine_testops  # noqa: F401  (registers t_loop)
from mechstudy.engine import nodeprogress as progress
from mechstudy.engine.graph import run_nodes
from mechstudy.engine.plan import make_node
from mechstudy.engine.store import Store

TESTS = Path(__file__).parent


def test_stop_request_interrupts_a_running_node_which_is_not_committed(tmp_path):
    store = Store(tmp_path / "cache")
    node = make_node("t_loop", {"steps": 10_000, "sleep": 0.01}, {})  # 100 s if never stopped
    events: list[progress.ProgressEvent] = []
    unsubscribe = progress.subscribe(events.append)
    outcome: dict = {}

    def work() -> None:
        try:
            run_nodes([node], store, device="cpu")
            outcome["done"] = True
        except BaseException as e:  # noqa: BLE001 - what the run raised is the point
            outcome["raised"] = e

    t = threading.Thread(target=work)
    try:
        t.start()
        deadline = time.time() + 30
        while time.time() < deadline and len(events) < 3:
            time.sleep(0.05)
        assert len(events) >= 3, "the node never reported progress"
        assert events[0].node == node.dask_key and events[0].key == node.key and events[0].total == 10_000 and events[0].note == "steps"
        assert [e.done for e in events] == sorted(e.done for e in events)
        t0 = time.perf_counter()
        progress.request_stop()
        t.join(timeout=5)
        assert not t.is_alive() and time.perf_counter() - t0 < 2
    finally:
        unsubscribe()
        progress.request_stop()
        t.join(timeout=10)
        progress.clear_stop()
    assert isinstance(outcome.get("raised"), progress.Interrupted)
    assert not store.has(node.key) and list(store.keys()) == []
    assert list((store.root / "tmp").iterdir()) == []
    assert node.key not in progress.latest()
    # With the stop cleared, the same node runs to the end and is committed.
    quick = make_node("t_loop", {"steps": 3, "sleep": 0.0}, {})
    assert run_nodes([quick], store, device="cpu")[quick.key].status == "computed"


def _cli(args: list[str], env: dict) -> subprocess.Popen:
    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); import stop_ops; "
            f"from mechstudy.engine.cli import main; sys.exit(main({args!r}, hard_exit=True))")
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stop_and_time(proc: subprocess.Popen, sig: int) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the run did not stop within 60 s of the signal: " + proc.communicate()[1][-3000:])
    return time.perf_counter() - t0, err


@pytest.mark.parametrize("cooperative,sig", [(True, signal.SIGTERM), (True, signal.SIGINT), (False, signal.SIGTERM)],
                         ids=["progress-sigterm", "progress-sigint", "no-progress-sigterm"])
def test_signal_stops_a_study_run_within_seconds(tmp_path, cooperative, sig):
    study = tmp_path / "slow.study"
    study.write_text(f"x = dawdle steps=400 sleep=0.05 cooperative={'true' if cooperative else 'false'}\n")  # 60 s
    cache, mark = tmp_path / "cache", tmp_path / "mark"
    env = {**os.environ, "MECHSTUDY_TEST_MARK": str(mark), "OMP_NUM_THREADS": "1"}
    proc = _cli(["run", str(study), "--cache", str(cache), "--out", str(tmp_path / "out")], env)
    deadline = time.time() + 120
    while time.time() < deadline and not mark.exists() and proc.poll() is None:
        time.sleep(0.05)
    assert mark.exists(), proc.communicate()[1]
    time.sleep(0.5)
    seconds, err = _stop_and_time(proc, sig)
    print(f"\n{'cooperative' if cooperative else 'non-cooperative'} node, {signal.Signals(sig).name} to exit: {seconds:.2f} s")
    assert proc.returncode == 130, err
    assert seconds < 5, f"{seconds:.1f} s from the signal to the exit"
    assert "Traceback" not in err and "interrupted" in err
    store = Store(cache, create=False)
    assert list(store.keys()) == [], "an interrupted node was committed"
    assert not (cache / "tmp").exists() or list((cache / "tmp").iterdir()) == []


def test_sigterm_inside_a_large_file_dataset(tmp_path, tiny_gpt2_dir):
    """400,000 rows tokenised in batches: SIGTERM while the dataset node runs stops it at its next
    batch; the dataset entry is not committed; the rerun after it starts that node afresh."""
    n = 400_000
    words = ["Then, Mary and John went to the store. John gave a drink to",
             "When Anna and Paul had lunch at the park, Paul handed a bag to"]
    pl.DataFrame({"text": [words[i % 2] for i in range(n)], "io": ["Mary", "Anna"] * (n // 2),
                  "s": ["John", "Paul"] * (n // 2)}).write_csv(tmp_path / "big.csv")
    study = tmp_path / "big.study"
    study.write_text(f'model m = hf "{tiny_gpt2_dir}"\n'
                     'dataset d = file "big.csv" prompt=text answer=io wrong=s\n'
                     "base = evaluate m on d with prob\n")
    cache = tmp_path / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mechstudy.engine.cli", "run", str(study), "--cache", str(cache),
                             "--out", str(tmp_path / "out")], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    deadline = time.time() + 120
    while time.time() < deadline and not any("model-" in ln and "computed" in ln for ln in lines):
        assert proc.poll() is None, "".join(lines)
        time.sleep(0.05)
    time.sleep(1.0)  # inside the dataset node now
    assert proc.poll() is None, "the dataset finished before the signal; make it bigger"
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    seconds = time.perf_counter() - t0
    reader.join(timeout=5)
    err = "".join(lines)
    print(f"\nfile dataset of {n:,} rows, SIGTERM to exit: {seconds:.2f} s")
    assert proc.returncode == 130 and seconds < 5, err
    assert "Traceback" not in err
    store = Store(cache, create=False)
    ops = {store.manifest(k)["op"] for k in store.keys()}
    assert ops == {"model"}, f"committed after the signal: {ops}"
