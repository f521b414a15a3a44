"""`study explain` (the plan as stable text) and `study why` (why a result will miss the cache)."""

from __future__ import annotations

from typing import Any

from mechstudy.engine.build import Plan
from mechstudy.engine.plan import Node
from mechstudy.engine.store import Store

# Params that identify rather than describe: shown shortened in plan text.
_SHORT = {"fingerprint": 12}
_HIDDEN = {"libs"}


def _fmt(v: Any) -> str:
    if isinstance(v, str):
        return v if v and all(c.isalnum() or c in "_-./" for c in v) else repr(v)
    if isinstance(v, list):
        if len(v) > 2 and all(isinstance(x, int) for x in v) and v == list(range(v[0], v[0] + len(v))):
            return f"{v[0]}..{v[-1]}"
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}={_fmt(x)}" for k, x in v.items()) + "}"
    if v is None:
        return "none"
    return repr(v) if not isinstance(v, bool) else str(v).lower()


def node_label(n: Node) -> str:
    parts = []
    for k, v in n.params:
        if k in _HIDDEN:
            continue
        if k in _SHORT and isinstance(v, str):
            v = v[: _SHORT[k]]
        if isinstance(v, dict) and k in ("params", "options"):
            parts.extend(f"{kk}={_fmt(vv)}" for kk, vv in v.items())
            continue
        parts.append(f"{k}={_fmt(v)}")
    return " ".join(parts)


def explain(plan: Plan, store: Store | None = None, keys: bool = True) -> str:
    """The plan as stable text, dependencies first; one line per node, then the bindings.

    `n4 := patch[n1, n2, n3] component=heads layers=[9] ...  # 7c1e0d9a cached`
    """
    ids: dict[str, str] = {}
    lines = [f'# study "{plan.study.title}"']
    for i, n in enumerate(plan.nodes(), start=1):
        ids[n.key] = f"n{i}"
        args = ", ".join(ids[c.key] for _, c in n.inputs)
        line = f"{ids[n.key]} := {n.op}" + (f"[{args}]" if args else "") + (f" {node_label(n)}" if n.params else "")
        if keys:
            # "cached", "missing", "imported" (an untrusted pack's entry) or "damaged" (checksums checked)
            status = store.status(n.key).split(":")[0] if store is not None else ""
            line += f"  # {n.key[:16]}" + (f" {status}" if status else "")
        lines.append(line)
    for name, res in plan.results.items():
        shown = ", ".join(ids[n.key] for n in res.nodes)
        charts = ", ".join(ids[n.key] for n in res.charts)
        lines.append(f"{name} = {shown}" + (f"  (chart {charts})" if charts else ""))
    return "\n".join(lines) + "\n"


def why(plan: Plan, name: str, lock: dict[str, Any] | None, store: Store) -> str:
    """Explain whether result `name` will come from the cache, and if not, what changed:
    new code (an op version), new params, or a new upstream (recursively)."""
    if name not in plan.results:
        from mechstudy.engine.spec import suggest

        hint = suggest(name, plan.results)
        return f"no result named {name!r}" + (f"; did you mean {hint!r}?" if hint else "")
    out = []
    old_nodes = (lock or {}).get("nodes", {})
    old_keys = (lock or {}).get("results", {}).get(name, [])
    for i, n in enumerate(plan.results[name].nodes):
        status = store.status(n.key)
        if status in ("cached", "imported"):
            how = "" if status == "cached" else f", from pack {store.origin(n.key)[:12]}, not computed here"
            out.append(f"{name}: {status} ({n.dask_key}{how})")
            continue
        if status.startswith("damaged"):
            out.append(f"{name}: will recompute ({n.dask_key}): its cache entry is {status}")
            continue
        old_key = old_keys[i] if i < len(old_keys) else None
        if old_key is None or old_key not in old_nodes:
            out.append(f"{name}: missing ({n.dask_key}); no earlier run of this statement in the lock")
            continue
        if old_key == n.key:
            out.append(f"{name}: missing ({n.dask_key}); the key is unchanged, so its entry was removed from the store")
            continue
        out.append(f"{name}: will recompute ({n.dask_key}, was {old_key[:16]}):")
        out.extend("  " + r for r in _diff(n, old_key, old_nodes, depth=0))
    return "\n".join(out)


def _diff(n: Node, old_key: str, old_nodes: dict[str, Any], depth: int) -> list[str]:
    old = old_nodes.get(old_key)
    if old is None:
        return [f"{n.op}: no record of the previous node"]
    reasons = []
    if old["op"] != n.op:
        return [f"different operator: {old['op']} -> {n.op}"]
    if old["version"] != n.version:
        reasons.append(f"new code: {n.op} version {old['version']} -> {n.version}")
    params = dict(n.params)
    for k in sorted(set(params) | set(old["params"])):
        a, b = old["params"].get(k), params.get(k)
        if a != b:
            reasons.append(f"new params: {n.op}.{k}: {_fmt(a)} -> {_fmt(b)}")
    for k, child in n.inputs:
        ok = old["inputs"].get(k)
        if ok != child.key:
            reasons.append(f"new upstream: input {k} ({child.op}) changed")
            if ok is not None and depth < 8:
                reasons.extend("  " + r for r in _diff(child, ok, old_nodes, depth + 1))
    return reasons or ["the key changed for a reason not recorded in the lock"]
