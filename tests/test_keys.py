"""Plan keys: canonical, order-independent, sensitive to everything that changes numbers."""

import pytest

from mechstudy.engine.plan import Node, canonical, canonical_json, make_node
import engine_testops  # noqa: F401  (registers t_source, t_scale)


def test_key_is_order_independent_and_type_canonical():
    a = make_node("t_source", {"n": 3, "seed": 1}, {})
    b = make_node("t_source", {"seed": 1, "n": 3}, {})
    assert a.key == b.key and a == b and hash(a) == hash(b)
    assert make_node("t_scale", {"factor": [1, 2]}, {}).key == make_node("t_scale", {"factor": (1, 2)}, {}).key


@pytest.mark.parametrize("change", ["param", "version", "input"])
def test_key_changes_with_params_version_and_inputs(change):
    src = make_node("t_source", {"n": 3}, {})
    base = make_node("t_scale", {"factor": 2.0}, {"src": src})
    if change == "param":
        other = make_node("t_scale", {"factor": 2.5}, {"src": src})
    elif change == "version":
        other = make_node("t_scale", {"factor": 2.0}, {"src": src}, version=2)
    else:
        other = make_node("t_scale", {"factor": 2.0}, {"src": make_node("t_source", {"n": 4}, {})})
    assert other.key != base.key


def test_int_and_float_params_are_distinct_and_keys_are_stable():
    # 1 and 1.0 can change numbers (integer vs float arithmetic): they must not collide.
    assert canonical_json({"x": 1}) != canonical_json({"x": 1.0})
    n = Node("t_source", 1, (("n", 3),), ())
    # pinned: a change to the key scheme invalidates every cache and must be deliberate
    assert n.key == "eab8a99c5085dc9e61e269b1a40090cf"
    assert n.dask_key == f"t_source-{n.key[:16]}"


def test_unkeyable_values_are_refused():
    with pytest.raises(TypeError):
        canonical({"f": object()})


def test_run_receives_every_param_keyed_or_not_and_only_keyed_ones_key(tmp_path):
    """The operator contract: defaults are filled in for run; a non-keyed param (an execution
    detail) reaches run through the node's settings but never changes the key."""
    from mechstudy.engine.graph import run_nodes
    from mechstudy.engine.store import Store

    a = make_node("t_params", {"a": 1}, {})
    b = make_node("t_params", {"a": 1, "chunk": 64}, {})
    c = make_node("t_params", {"a": 1, "b": 0.5}, {})
    assert a.key == b.key == c.key  # chunk is not keyed; b's default is spelled out in the key
    assert dict(a.params) == {"a": 1, "b": 0.5} and dict(b.settings) == {"chunk": 64}
    assert make_node("t_params", {"a": 1, "b": 0.25}, {}).key != a.key
    store = Store(tmp_path / "cache")
    run_nodes([b], store, device="cpu")
    assert store.get(b.key).data["received"] == {"a": 1, "b": 0.5, "chunk": 64}
    store2 = Store(tmp_path / "cache2")
    run_nodes([a], store2, device="cpu")
    assert store2.get(a.key).data["received"] == {"a": 1, "b": 0.5, "chunk": 16}
