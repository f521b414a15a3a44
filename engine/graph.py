"""Plan -> Dask graph -> run.

Each plan node becomes one Dask task (built with Dask's task-spec classes, keyed
`"{op}-{hash16}"`) that loads its result from the store or computes and stores it. Tasks pass
small references (the node key and how it was obtained), never tensors. Only the part of the
plan that is needed is turned into tasks: a node whose entry is in the store is a leaf, so a
warm rerun touches no model at all.

Stopping: a stop request (engine/nodeprogress.py; the CLI makes Ctrl-C and SIGTERM one) makes the
next `ctx.progress` call of every running node raise `Interrupted`, and a node that finishes
after the request is not committed either: an interrupted node never enters the store.
"""

from __future__ import annotations

import copy
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from dask.task_spec import Task, TaskRef

from mechstudy.engine import nodeprogress
from mechstudy.engine import spec
from mechstudy.engine.context import Context, device_type
from mechstudy.engine.plan import Node, walk
from mechstudy.engine.nodeprogress import Interrupted
from mechstudy.engine.store import CorruptEntry, Store, StoreAddress

# Model-bound nodes run one at a time per device (within a process): two forwards competing for
# the same cores or GPU memory are slower than one after the other.
_DEVICE_LOCKS: dict[str, threading.Lock] = {}
_DEVICE_LOCKS_GUARD = threading.Lock()


def _device_lock(device: str) -> threading.Lock:
    with _DEVICE_LOCKS_GUARD:
        return _DEVICE_LOCKS.setdefault(device, threading.Lock())


class OpFailed(Exception):
    """An operator raised; carries the node and the original traceback text."""

    def __init__(self, node: Node, message: str, tb: str) -> None:
        super().__init__(message)
        self.node = node
        self.tb = tb


@dataclass
class Outcome:
    key: str
    op: str
    status: str  # "computed" | "cached" | "imported" (served by an untrusted pack's entry)
    seconds: float


def _ensure_registered(op: str, module: str) -> None:
    """On a fresh worker process the registries are empty: fill them, then the op's module."""
    if op in spec.OPS:
        return
    import importlib

    import mechstudy.engine.builtins  # noqa: F401
    import mechstudy.stdlib as stdlib

    if hasattr(stdlib, "load_all"):
        stdlib.load_all()
    if op not in spec.OPS:
        importlib.import_module(module)


def execute_node(node: Node, module: str, store: StoreAddress, device: str, max_rows: int | None,
                 *deps: Outcome) -> Outcome:
    """The body of every task: cache hit, or compute + store under the per-key lock."""
    _ensure_registered(node.op, module)
    st = store.open()

    def hit() -> Outcome:
        st.mark_used(node.key)
        return Outcome(node.key, node.op, "cached" if st.origin(node.key) is None else "imported", 0.0)

    if st.has(node.key):
        return hit()
    nodeprogress.check()
    with st.lock(node.key):
        if st.has(node.key):  # another run computed it while we waited
            return hit()
        s = spec.OPS[node.op]
        inputs = {}
        for name, child in node.inputs:
            try:
                inputs[name] = st.get(child.key)
            except CorruptEntry as e:
                # Found damaged on read (an object store checks checksums when it copies an entry):
                # dropped, so the next run recomputes it.
                st.discard(child.key)
                raise OpFailed(node, f"input {name} ({child.dask_key}) is damaged ({e}); it was discarded: "
                               "run again to recompute it", "") from None
            st.mark_used(child.key)
        ctx = Context(device=device, max_rows=max_rows, key=node.key, op=node.op)
        # Every declared parameter reaches run, keyed (params) or not (settings), defaults filled in.
        params = {**dict(node.settings), **dict(node.params)}
        t0 = time.perf_counter()
        try:
            with nodeprogress.running(node.key, node.op):
                if s.uses_model:
                    with _device_lock(device):
                        nodeprogress.check()
                        art = s.execute(inputs, params, ctx)
                else:
                    art = s.execute(inputs, params, ctx)
        except Interrupted:
            raise
        except Exception as e:  # noqa: BLE001 - re-raised with the node attached
            raise OpFailed(node, f"{type(e).__name__}: {e}", traceback.format_exc()) from e
        seconds = time.perf_counter() - t0
        nodeprogress.check()  # a node that finished after a stop request is not committed
        st.put(
            node.key,
            art,
            {
                "op": node.op,
                "op_version": node.version,
                "params": dict(node.params),
                "inputs": {name: child.key for name, child in node.inputs},
                "seconds": round(seconds, 4),
                "device": device,
            },
        )
        return Outcome(node.key, node.op, "computed", seconds)


def needed(roots: list[Node], store: Store, warn: Callable[[str], None]) -> list[Node]:
    """Nodes that must run as tasks: roots, plus inputs of nodes that are missing.

    Cached entries are verified here, by sizes and modification times when they are as written
    (`Store.verify(quick=True)`), else by checksums; a corrupt one is reported, discarded and
    recomputed. `study cache verify` checks every checksum.
    """
    out: dict[str, Node] = {}

    def ok(n: Node) -> bool:
        if not store.has(n.key):
            return False
        try:
            store.verify(n.key, quick=True)
            return True
        except (CorruptEntry, KeyError) as e:
            warn(f"cache entry {n.dask_key} is damaged ({e}); recomputing it")
            store.discard(n.key)
            return False

    def visit(n: Node) -> None:
        if n.key in out:
            return
        out[n.key] = n
        if not ok(n):
            for _, child in n.inputs:
                visit(child)

    for r in roots:
        visit(r)
    # dependencies first
    order = {n.key: i for i, n in enumerate(walk(roots))}
    return sorted(out.values(), key=lambda n: order[n.key])


def prepare_imports() -> None:
    """Import, once and up front, what model sources need to load models and tokenizers: the
    first node to compute (a dataset tokenising its prompts) would otherwise time the import of
    transformers, and threads importing it at once wait on each other."""
    for src in spec.MODEL_SOURCES.values():
        if src.prepare is not None:
            src.prepare()


def node_resources(node: Node, device: str) -> dict[str, float]:
    """The Dask worker resources a task declares: a model-bound node on a GPU needs `GPU: 1`, so
    a dask.distributed scheduler runs at most one per GPU a worker offers (`dask worker
    --resources GPU=1`); on a CPU nothing (a worker process's threads are its cores). In one
    process model-bound nodes also take a per-device lock (`_device_lock`)."""
    if spec.OPS[node.op].uses_model and device_type(device) == "cuda":
        return {"GPU": 1}
    return {}


def to_dask(nodes: list[Node], store: StoreAddress, device: str, max_rows: int | None) -> dict[str, Task]:
    keys = {n.key for n in nodes}
    graph: dict[str, Task] = {}
    for n in nodes:
        # A dependency that is cached and not itself needed is not a task; it is read from the
        # store by key inside execute_node. Dependencies that are tasks are awaited.
        deps = [TaskRef(child.dask_key) for _, child in n.inputs if child.key in keys]
        graph[n.dask_key] = Task(n.dask_key, execute_node, n, spec.OPS[n.op].module, store, device, max_rows, *deps)
    return graph


def run_nodes(
    roots: list[Node],
    store: Store,
    *,
    device: str,
    max_rows: int | None = None,
    scheduler: str | None = None,
    warn: Callable[[str], None] = print,
    progress: Callable[[Outcome, int, int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> dict[str, Outcome]:
    """Run what is needed to have every root in the store. Returns outcomes by node key.

    scheduler: None -> local threads; "tcp://HOST:PORT" -> an existing dask.distributed
    scheduler; "local:N" -> a LocalCluster of N worker processes (the store must be a path
    every worker can reach).
    """
    nodes = needed(roots, store, warn)
    if any(not store.has(n.key) for n in nodes):
        prepare_imports()
    graph = to_dask(nodes, store.address(), device, max_rows)
    keys = [n.dask_key for n in nodes]
    if on_start is not None:
        on_start(len(keys))  # how many tasks will report: the progress display's total
    if not keys:
        return {}
    if scheduler is None:
        import dask.threaded
        from dask.callbacks import Callback

        done = [0]

        def posttask(key, result, dsk, state, worker_id):  # noqa: ANN001 - dask's signature
            done[0] += 1
            if progress is not None and isinstance(result, Outcome):
                progress(result, done[0], len(keys))

        with Callback(posttask=posttask):
            results = _interruptible(lambda: dask.threaded.get(graph, keys, pool=_pool()))
    else:
        resources = {n.dask_key: r for n in nodes if (r := node_resources(n, device))}
        results = _distributed_get(graph, keys, scheduler, resources)
    return {o.key: o for o in results}


_POOL: Any = None
_POOL_GUARD = threading.Lock()


def _pool() -> Any:
    """The threads that run nodes: one per core (Dask's own default, which Dask gives only to calls
    from the main thread; `_interruptible` calls it from a helper thread)."""
    global _POOL
    import atexit

    import dask
    import dask.threaded

    with _POOL_GUARD:
        if _POOL is None:
            _POOL = dask.threaded.ContextAwareThreadPoolExecutor(dask.config.get("num_workers", None) or dask.threaded.CPU_COUNT)
            atexit.register(_POOL.shutdown)
        return _POOL


def _interruptible(fn: Callable[[], Any]) -> Any:
    """Run `fn` in a helper thread while the main thread waits in short slices.

    A signal (Ctrl-C, SIGTERM) may be delivered to any thread, but Python runs its handler only
    in the main thread, and only between bytecodes: a main thread blocked in Dask's queue wait
    would not see it until the running node ends. Waiting in 0.2 s slices lets the handler run
    within that time, wherever the signal landed."""
    if threading.current_thread() is not threading.main_thread():
        return fn()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller as it was raised
            box["error"] = e

    t = threading.Thread(target=target, name="mechstudy-dask", daemon=True)
    t.start()
    while t.is_alive():
        t.join(0.2)
    if "error" in box:
        raise box["error"]
    return box["value"]


def _distributed_get(graph: dict, keys: list[str], scheduler: str, resources: dict[str, dict[str, float]]) -> list[Outcome]:
    """Run the graph on dask.distributed: "local:N" starts a LocalCluster of N worker processes
    here (on a GPU machine the first min(N, GPUs) of them offer `GPU=1`); otherwise `scheduler`
    is the address of a running scheduler. Tasks that declare resources (`node_resources`) run
    only on workers that offer them; a cluster where none does is refused up front rather than
    left waiting."""
    from distributed import Client

    if scheduler.startswith("local:"):
        n = int(scheduler.split(":", 1)[1])
        gpus = 0
        if resources:
            import torch

            gpus = min(n, torch.cuda.device_count())
        with local_cluster(n, gpus=gpus) as cluster, Client(cluster) as client:
            return _submit(client, graph, keys, resources)
    with Client(scheduler) as client:
        return _submit(client, graph, keys, resources)


def local_cluster(n: int, *, gpus: int = 0) -> Any:
    """A LocalCluster of `n` single-threaded worker processes, the first `gpus` of which offer the
    resource `GPU=1` (each worker process's torch runs one thread: see engine/context.py)."""
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=0, threads_per_worker=1, processes=True, dashboard_address=None)
    for i in range(n):
        w = copy.deepcopy(cluster.new_spec)
        if i < gpus:
            w["options"]["resources"] = {"GPU": 1}
        cluster.worker_spec[f"mechstudy-{i}"] = w
    cluster.sync(cluster._correct_state)
    return cluster


def _submit(client: Any, graph: dict, keys: list[str], resources: dict[str, dict[str, float]]) -> list[Outcome]:
    if not resources:
        return client.get(graph, keys)
    from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

    client.wait_for_workers(1, timeout=60)
    offered: dict[str, float] = {}
    for w in client.scheduler_info(n_workers=-1)["workers"].values():
        for r, amount in (w.get("resources") or {}).items():
            offered[r] = max(offered.get(r, 0), amount)
    for key, want in resources.items():
        for r, amount in want.items():
            if offered.get(r, 0) < amount:
                raise RuntimeError(f"task {key} needs the worker resource {r}={amount:g}, and no worker of the "
                                   f"cluster offers it: start GPU workers with `dask worker ADDRESS --resources {r}=1`")
    # One layer; its annotation gives each model-bound task its resources (the others none).
    layer = MaterializedLayer(graph, annotations={"resources": lambda k: resources.get(k, {})})
    return client.get(HighLevelGraph({"mechstudy": layer}, {"mechstudy": set()}), keys)
