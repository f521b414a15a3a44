"""Top-activating examples (stdlib/representations/examples.py and the `examples` operator) against a
brute-force reference that sorts every activation: top-k values and places, context windows,
histograms, interval samples, and independence from how rows are batched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mechstudy.stdlib.models.sources  # noqa: F401  (registers the hf and zoo model sources)
import mechstudy.stdlib.ops.top_examples  # noqa: F401  (registers the operator under test)
from conftest import CIRCUIT_ARCHS, ENCODER_ARCHS
from mechstudy.engine import spec
from mechstudy.engine.context import Context
from mechstudy.engine.spec import Artifact
from mechstudy.stdlib.representations import examples as ex


def _data(n=7, s=11, u=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(n, s, u, generator=g)
    ids = torch.randint(0, 50, (n, s), generator=g)
    lengths = torch.randint(3, s + 1, (n,), generator=g)
    mask = torch.arange(s)[None] < lengths[:, None]
    return acts, ids, mask


def _batches(acts, ids, mask, size):
    def gen():
        for start in range(0, acts.shape[0], size):
            rows = torch.arange(start, min(start + size, acts.shape[0]))
            yield ex.Batch(acts[rows], ids[rows], mask[rows], rows)
    return gen


def _reference(acts, ids, mask, s: ex.Settings):
    """Every (value, row, pos) per unit, sorted by hand; windows cut from the full rows."""
    n, S, U = acts.shape
    out = []
    for u in range(U):
        items = sorted(((float(acts[r, p, u]), r, p) for r in range(n) for p in range(S) if mask[r, p]), reverse=True)
        top = []
        for v, r, p in items[: s.k]:
            win_ids, win_acts = [], []
            for q in range(p - s.before, p + s.after + 1):
                ok = 0 <= q < S and bool(mask[r, q])
                win_ids.append(int(ids[r, q]) if ok else ex.NO_TOKEN)
                win_acts.append(float(acts[r, q, u]) if ok else 0.0)
            top.append((v, r, p, win_ids, win_acts))
        out.append({"values": [v for v, _, _ in items], "items": items, "top": top})
    return out


@pytest.mark.parametrize("size", [1, 3, 32])
def test_top_examples_equal_a_full_sort(size):
    acts, ids, mask = _data()
    s = ex.Settings(k=6, before=3, after=2, bands=3, per_band=2, bins=7, threshold=0.0)
    got = ex.collect(_batches(acts, ids, mask, size), acts.shape[2], s)
    ref = _reference(acts, ids, mask, s)
    assert got.count == int(mask.sum())
    for u, r in enumerate(ref):
        vals = torch.tensor(r["values"], dtype=torch.float64)
        assert got.max[u] == vals.max() and got.min[u] == vals.min()
        assert got.mean[u] == pytest.approx(float(vals.mean()), abs=1e-12)
        assert int(got.active[u]) == int((vals > 0).sum())
        for rank, (v, row, pos, wid, wact) in enumerate(r["top"]):
            assert float(got.top_value[u, rank]) == v
            assert (int(got.top_row[u, rank]), int(got.top_pos[u, rank])) == (row, pos)
            assert got.top_ids[u, rank].tolist() == wid
            assert got.top_acts[u, rank].tolist() == pytest.approx(wact, abs=1e-6)
        counts, _ = np.histogram(vals.numpy(), bins=got.hist_edges[u].numpy())
        assert got.hist_counts[u].tolist() == counts.tolist()


def test_interval_samples_are_the_hash_smallest_in_each_band():
    acts, ids, mask = _data(n=9, s=13, u=4, seed=1)
    s = ex.Settings(k=3, before=2, after=1, bands=4, per_band=3, threshold=0.0, seed=7)
    a = ex.collect(_batches(acts, ids, mask, 2), 4, s)
    b = ex.collect(_batches(acts, ids, mask, 9), 4, s)
    assert torch.equal(a.band_row, b.band_row) and torch.equal(a.band_pos, b.band_pos)  # batching-independent
    for u in range(4):
        edges = a.band_edges[u]
        assert float(edges[0]) == 0.0 and float(edges[-1]) == float(acts[..., u][mask].max())
        for j in range(4):
            members = [(r, p) for r in range(9) for p in range(13)
                       if mask[r, p] and edges[j] < acts[r, p, u] <= edges[j + 1]]
            keys = {(r, p): float(ex.hash_keys(torch.tensor(r), torch.tensor(p), torch.tensor(u), 7)) for r, p in members}
            want = sorted(members, key=lambda rp: keys[rp])[:3]
            got = [(int(a.band_row[u, j, i]), int(a.band_pos[u, j, i])) for i in range(3) if a.band_row[u, j, i] >= 0]
            assert got == want
            for (r, p), v in zip(got, a.band_value[u, j].tolist()):
                assert v == float(acts[r, p, u])


def test_fewer_tokens_than_k_leaves_empty_slots():
    acts, ids, mask = _data(n=1, s=4, u=2)
    mask[:] = True
    got = ex.collect(_batches(acts, ids, mask, 1), 2, ex.Settings(k=6, before=1, after=1))
    assert (got.top_row[:, :4] >= 0).all() and (got.top_row[:, 4:] == -1).all()
    tables = got.tables(lambda i: f"<{i}>")
    assert tables["examples"].filter(tables["examples"]["group"] == "top").height == 8


def test_tables_mark_the_example_token():
    acts, ids, mask = _data()
    got = ex.collect(_batches(acts, ids, mask, 4), 5, ex.Settings(k=2, before=2, after=2, per_band=1))
    t = got.tables(lambda i: f" w{i}", {"layer": [1] * 5, "neuron": list(range(5))})["examples"]
    row = t.filter((t["neuron"] == 2) & (t["group"] == "top") & (t["rank"] == 0)).row(0, named=True)
    r, p = int(got.top_row[2, 0]), int(got.top_pos[2, 0])
    assert row["token"] == f" w{int(ids[r, p])}" and row["tokens"][row["at"]] == row["token"]
    assert f"[[ w{int(ids[r, p])}]]" in row["text"] and row["acts"][row["at"]] == pytest.approx(float(acts[r, p, 2]))


# ---- the operator, on every architecture ---------------------------------------------------------


@pytest.fixture(scope="module", params=CIRCUIT_ARCHS + ENCODER_ARCHS)
def m(request, circuit_models):
    from mechstudy.stdlib.datasets.corpus import pack

    got = circuit_models(request.param)
    docs = ["John and Mary went to the store", "Mary gave a drink to John", "the cat sat on the mat"] * 6
    got.corpus = Artifact(tensors=pack(docs, got.adapter.tokenizer, context=12, tokens=120))
    return got


def test_the_operator_reads_mlp_post_over_the_corpus(m):
    from mechstudy.stdlib.models.sites import Site

    t = m.corpus.tensors
    out = spec.OPS["examples"].execute({"model": m.artifact, "corpus": m.corpus},
                                       {"component_index": [0, 5, 7], "layers": [1], "top": 4, "before": 2, "after": 1},
                                       Context(device="cpu", max_rows=3))
    with torch.no_grad():  # the reference: one forward of every row, HF modules hooked by hand
        point = m.adapter.table.points["mlp_post"]
        mod, seen = m.adapter.module(point.module, 1), []
        h = (mod.register_forward_pre_hook(lambda _m, i: seen.append(i[0])) if point.on == "input"
             else mod.register_forward_hook(lambda _m, _i, o: seen.append(o)))
        m.adapter.model(input_ids=t["input_ids"], attention_mask=t["attention_mask"])
        h.remove()
    full = seen[0][..., [0, 5, 7]]
    ref = _reference(full, t["input_ids"], t["attention_mask"].bool(), ex.Settings(k=4, before=2, after=1))
    res = out.tables["result"]
    assert res["neuron"].to_list() == [0, 5, 7] and res["layer"].to_list() == [1, 1, 1]
    for u in range(3):
        assert res["max"][u] == pytest.approx(ref[u]["values"][0], abs=1e-5)
        assert out.tensors["top_value"][u].tolist() == pytest.approx([v for v, *_ in ref[u]["top"]], abs=1e-5)
    top = out.tables["examples"].filter(out.tables["examples"]["group"] == "top")
    assert top.height == 12 and set(top["neuron"]) == {0, 5, 7}
    assert Site(1, "mlp_post").name == "blocks.1.mlp.hook_post"


def test_statement_checks_and_refuses_a_bad_component(stdlib_loaded):
    from mechstudy.lang import StudyErrors, check

    head = 'model m = zoo "mini"\ncorpus web = text "README.md" tokens=256 context=64\n'
    check(head + "examples neurons 0..3 in layer 1 of m over web top 5\n", "s.study")
    with pytest.raises(StudyErrors) as e:
        check(head + "examples heads in layer 1 of m over web\n", "s.study")
    assert "s.study:3:" in e.value.render() and "neurons" in e.value.render()


def test_direction_examples_read_the_projection_on_the_direction(circuit_models):
    import mechstudy.stdlib.ops.direction_examples  # noqa: F401
    from mechstudy.stdlib.datasets.corpus import pack
    from mechstudy.stdlib.representations.steering import vector_artifact

    m = circuit_models("llama")
    docs = ["John and Mary went to the store", "Mary gave a drink to John", "the cat sat on the mat"] * 6
    corpus = Artifact(tensors=pack(docs, m.adapter.tokenizer, context=12, tokens=120))
    g = torch.Generator().manual_seed(4)
    vec = torch.randn(2, m.adapter.d_model, generator=g)
    v = vector_artifact(vec, [0, 1], "resid_pre", "test", m.artifact.data, {})
    out = spec.OPS["direction_examples"].execute({"model": m.artifact, "corpus": corpus, "direction": v},
                                                 {"layers": [1], "top": 3, "before": 1, "after": 1},
                                                 Context(device="cpu", max_rows=4))
    t = corpus.tensors
    with torch.no_grad():
        h = m.adapter.model(input_ids=t["input_ids"], attention_mask=t["attention_mask"],
                            output_hidden_states=True).hidden_states[1]
    proj = (h @ (vec[1] / vec[1].norm()))[t["attention_mask"].bool()]
    assert out.tables["result"]["layer"].to_list() == [1]
    assert out.tensors["top_value"][0].tolist() == pytest.approx(proj.topk(3).values.tolist(), abs=1e-5)
    assert out.tables["result"]["max"][0] == pytest.approx(float(proj.max()), abs=1e-5)


def test_a_binary_probe_is_a_direction_toward_class_one():
    from mechstudy.stdlib.representations import probes as P
    from mechstudy.stdlib.representations.steering import directions

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 200, 6, generator=g, dtype=torch.float64) * torch.tensor([1.0, 3, 0.5, 1, 2, 1])
    y = (x[0, :, 1] - x[0, :, 4] > 0).long()
    fit = P.fit_linear(x, y, 2, l2=1.0)
    art = Artifact(tensors={"task_W": fit.W.float(), "task_b": fit.b.float(), "task_std": fit.std.float(),
                            "task_mean": fit.mean.float()}, data={"site": "resid_post", "layers": [3]})
    d = directions(art)
    logit = P.logits(fit, x)[0, :, 0]
    proj = x[0] @ d.vectors[0].double()
    # the projection is the probe's logit up to a constant offset
    torch.testing.assert_close(proj - proj.mean(), logit - logit.mean(), atol=1e-4, rtol=1e-4)
    assert d.layers == [3] and d.site == "resid_post"
