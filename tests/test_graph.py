"""Executing plans on Dask: cache hits, downstream cones, failures, crash safety, distributed."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import engine_testops
from mechstudy.engine.graph import OpFailed, run_nodes
from mechstudy.engine.plan import make_node, walk
from mechstudy.engine.store import Store

TESTS = Path(__file__).parent


def _plan(factor=2.0, n=5):
    src = make_node("t_source", {"n": n, "seed": 0}, {})
    a = make_node("t_scale", {"factor": factor}, {"src": src})
    b = make_node("t_scale", {"factor": 3.0}, {"src": src})
    return src, a, b


def test_cold_then_warm(tmp_path):
    store = Store(tmp_path)
    src, a, b = _plan()
    engine_testops.CALLS.clear()
    out = run_nodes([a, b], store, device="cpu")
    assert sorted(o.status for o in out.values()) == ["computed"] * 3
    assert engine_testops.CALLS.count("t_source") == 1  # shared sub-work ran once
    x = torch.randn(5, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(store.get(a.key).tensors["x"], 2.0 * x)
    engine_testops.CALLS.clear()
    out = run_nodes([a, b], store, device="cpu")
    assert all(o.status == "cached" for o in out.values()) and engine_testops.CALLS == []
    assert set(out) == {a.key, b.key}  # cached roots: their upstream is not even scheduled


def test_edit_recomputes_only_downstream_cone(tmp_path):
    store = Store(tmp_path)
    _, a, b = _plan()
    run_nodes([a, b], store, device="cpu")
    _, a2, b2 = _plan(factor=2.5)
    engine_testops.CALLS.clear()
    out = run_nodes([a2, b2], store, device="cpu")
    computed = [k for k, o in out.items() if o.status == "computed"]
    assert computed == [a2.key] and engine_testops.CALLS == ["t_scale"]


def test_corrupt_entry_is_reported_and_recomputed(tmp_path):
    store = Store(tmp_path)
    _, a, _ = _plan()
    run_nodes([a], store, device="cpu")
    p = store.path(a.key) / "tensors.safetensors"
    p.write_bytes(p.read_bytes()[:-3])
    warnings = []
    out = run_nodes([a], store, device="cpu", warn=warnings.append)
    assert out[a.key].status == "computed" and "damaged" in warnings[0]
    store.verify(a.key)


def test_failure_keeps_finished_nodes(tmp_path):
    store = Store(tmp_path)
    src = make_node("t_source", {"n": 2}, {})
    bad = make_node("t_fail", {}, {"src": src})
    with pytest.raises(OpFailed) as e:
        run_nodes([bad], store, device="cpu")
    assert "boom" in str(e.value) and e.value.node.op == "t_fail"
    assert store.has(src.key) and not store.has(bad.key)


_KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    import engine_testops
    from mechstudy.engine.graph import run_nodes
    from mechstudy.engine.plan import make_node
    from mechstudy.engine.store import Store
    roots = [make_node("t_slow", {{"seconds": 0.4, "tag": "n%d" % i}}, {{}}) for i in range(12)]
    run_nodes(roots, Store({store!r}), device="cpu")
    """
)


def test_sigkill_midway_leaves_consistent_cache_and_rerun_resumes(tmp_path):
    store_dir = tmp_path / "store"
    mark = tmp_path / "mark"
    script = _KILL_SCRIPT.format(tests=str(TESTS), store=str(store_dir))
    env = {**os.environ, "MECHSTUDY_TEST_MARK": str(mark)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    deadline = time.time() + 60
    while time.time() < deadline and (not mark.exists() or len(mark.read_text().split()) < 3):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = Store(store_dir)
    done_before = list(store.keys())
    assert 0 < len(done_before) < 12, "the kill must land midway"
    for k in done_before:
        store.verify(k)  # every entry present is whole
    roots = [make_node("t_slow", {"seconds": 0.4, "tag": "n%d" % i}, {}) for i in range(12)]
    out = run_nodes(roots, store, device="cpu")
    assert sum(o.status == "cached" for o in out.values()) == len(done_before)
    assert sum(o.status == "computed" for o in out.values()) == 12 - len(done_before)
    for r in roots:
        assert torch.equal(store.get(r.key).tensors["x"][:3], torch.tensor([0.0, 1.0, 2.0]) + len(r.param("tag")))


@pytest.mark.timeout(180)
def test_distributed_local_cluster_gives_same_results(tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    _, a, b = _plan(n=7)
    s1, s2 = Store(tmp_path / "threads"), Store(tmp_path / "cluster")
    run_nodes([a, b], s1, device="cpu")
    # Worker processes import this module through the node's op registry: make it importable.
    monkeypatch.setenv("PYTHONPATH", str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = run_nodes([a, b], s2, device="cpu", scheduler="local:2")
    assert all(o.status == "computed" for o in out.values()) and len(out) == 3
    for n in (a, b):
        assert torch.equal(s1.get(n.key).tensors["x"], s2.get(n.key).tensors["x"])


def test_model_bound_nodes_declare_a_gpu_only_on_cuda():
    from mechstudy.engine.graph import node_resources

    m, free = make_node("t_where", {"tag": 0}, {}), make_node("t_source", {"n": 2}, {})
    assert node_resources(m, "cuda") == {"GPU": 1} and node_resources(m, "cuda:1") == {"GPU": 1}
    assert node_resources(m, "cpu") == {} and node_resources(free, "cuda") == {}


@pytest.mark.timeout(180)
def test_model_bound_nodes_run_only_on_the_worker_that_offers_the_gpu(tmp_path, monkeypatch):
    """A real cluster of two worker processes, one offering GPU=1: every model-bound node runs
    there (the nodes only sleep: the device string is all that says cuda), one at a time."""
    pytest.importorskip("distributed")
    from distributed import Client

    from mechstudy.engine.graph import local_cluster

    monkeypatch.setenv("PYTHONPATH", str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    nodes = [make_node("t_where", {"tag": i}, {}) for i in range(6)]
    store = Store(tmp_path)
    with local_cluster(2, gpus=1) as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=60)
        pids = client.run(os.getpid)
        info = client.scheduler_info(n_workers=-1)["workers"]
        gpu = {pids[a] for a, w in info.items() if w.get("resources", {}).get("GPU")}
        out = run_nodes(nodes, store, device="cuda", scheduler=cluster.scheduler_address)
        assert all(o.status == "computed" for o in out.values())
        assert len(gpu) == 1 and len(set(pids.values())) == 2
        ran = {store.get(n.key).data["pid"] for n in nodes}
        assert ran == gpu  # without the resource the scheduler spreads six 0.2 s tasks over both
