"""Attention maps and per-head scores (the `attention` operator, stdlib/representations/heads.py)
against HF's own attention probabilities and a loop-by-hand reference of every score, on every
architecture."""

from __future__ import annotations

import pytest
import torch

import mechstudy.stdlib.models.sources  # noqa: F401  (registers the hf and zoo model sources)
import mechstudy.stdlib.ops.attention  # noqa: F401  (registers the operator under test)
from conftest import CIRCUIT_ARCHS, ENCODER_ARCHS
from mechstudy.engine import spec
from mechstudy.engine.context import Context
from mechstudy.stdlib.representations import heads as hs
from repr_refs import reference_scores


def test_scores_equal_the_loop_reference_on_random_patterns():
    g = torch.Generator().manual_seed(0)
    A = torch.rand(5, 3, 9, 9, generator=g).tril()
    A = A / A.sum(-1, keepdim=True)
    ids = torch.randint(0, 4, (5, 9), generator=g)  # small vocabulary: many repeats
    mask = torch.arange(9)[None] < torch.tensor([9, 7, 5, 9, 3])[:, None]
    got = hs.head_scores(A, ids, mask)
    want = reference_scores(A, ids, mask)
    for name in hs.SCORES:
        assert got[name].tolist() == pytest.approx(want[name], abs=1e-12), name
    total, counts = {}, {}
    for rows in ([0, 1], [2], [3, 4]):  # chunked accumulation gives the same means
        hs.accumulate(total, counts, A[rows], ids[rows], mask[rows])
    for name in hs.SCORES:
        assert (total[name] / counts[name]).tolist() == pytest.approx(want[name], abs=1e-12)


@pytest.fixture(scope="module", params=CIRCUIT_ARCHS + ENCODER_ARCHS)
def m(request, circuit_models):
    from mechstudy.stdlib.datasets.ioi import generate

    got = circuit_models(request.param)
    got.ioi = generate(got.adapter.tokenizer, n=6, seed=4)
    return got


def test_maps_and_scores_are_hfs_own_attention(m):
    out = spec.OPS["attention"].execute({"model": m.artifact, "dataset": m.ioi},
                                        {"layers": list(range(m.adapter.n_layers)), "show": 2},
                                        Context(device="cpu", max_rows=4))
    t = m.ioi.tensors
    with torch.no_grad():
        att = m.adapter.model(input_ids=t["clean_ids"], attention_mask=t["attention_mask"], output_attentions=True).attentions
    res, maps = out.tables["result"], out.tables["maps"]
    for layer, A in enumerate(att):
        want = reference_scores(A.double(), t["clean_ids"], t["attention_mask"])
        got = res.filter(res["layer"] == layer).sort("head")
        for name in hs.SCORES:
            assert got[name].to_list() == pytest.approx(want[name], abs=1e-5, nan_ok=True), (layer, name)
        for p in range(2):
            n = int(t["attention_mask"][p].sum())
            sub = maps.filter((maps["layer"] == layer) & (maps["prompt"] == p)).sort("head", "query", "key")
            assert sub.height == m.adapter.n_heads * n * n
            torch.testing.assert_close(torch.tensor(sub["weight"].to_list(), dtype=torch.float64).view(-1, n, n),
                                       A[p, :, :n, :n].double(), atol=1e-6, rtol=0)
    tok = m.adapter.tokenizer
    first = maps.filter((maps["prompt"] == 0) & (maps["query"] == 1) & (maps["key"] == 0)).row(0, named=True)
    assert first["key_token"] == tok.decode([int(t["clean_ids"][0, 0])])


def test_attention_chart_draws_every_cell_with_token_labels(m):
    from mechstudy.stdlib.representations.charts import render_attention

    out = spec.OPS["attention"].execute({"model": m.artifact, "dataset": m.ioi}, {"layers": [0], "heads": 2},
                                        Context(device="cpu", max_rows=4))
    chart = render_attention(out, None)
    values = chart["datasets"]["attention"]
    n = int(m.ioi.tensors["attention_mask"][0].sum())
    assert len(values) == min(2, m.adapter.n_heads) * n * n  # the default chart's hint `heads`, one prompt
    first = m.adapter.tokenizer.decode([int(m.ioi.tensors["clean_ids"][0, 0])])
    assert {v["k"] for v in values} >= {f"0 {first}"}
    assert chart["spec"]["width"] == chart["spec"]["height"] >= 12 * n


def test_answer_attention_is_hfs_attention_on_io_s1_s2(m):
    """The "answer" table: attention from the answer position to IO, S1 and S2, read off HF's own
    probabilities with a loop over prompts and positions."""
    out = spec.OPS["attention"].execute({"model": m.artifact, "dataset": m.ioi},
                                        {"layers": list(range(m.adapter.n_layers))}, Context(device="cpu", max_rows=4))
    t = m.ioi.tensors
    with torch.no_grad():
        att = m.adapter.model(input_ids=t["clean_ids"], attention_mask=t["attention_mask"], output_attentions=True).attentions
    ans = out.tables["answer"]
    assert ans.height == m.adapter.n_layers * m.adapter.n_heads
    for layer, A in enumerate(att):
        for h in range(m.adapter.n_heads):
            want = {"to_io": [], "to_s1": [], "to_s2": []}
            for p in range(len(t["clean_ids"])):
                q = int(t["answer_pos"][p])
                ids = [int(i) for i in t["clean_ids"][p, :q]]
                s_at = [k for k, i in enumerate(ids) if i == int(t["s_id"][p])]
                io_at = [k for k, i in enumerate(ids) if i == int(t["io_id"][p])]
                assert len(s_at) == 2 and len(io_at) == 1  # IOI: S twice, IO once before the answer
                want["to_io"].append(sum(float(A[p, h, q, k]) for k in io_at))
                want["to_s1"].append(float(A[p, h, q, s_at[0]]))
                want["to_s2"].append(float(A[p, h, q, s_at[-1]]))
            row = ans.filter((ans["layer"] == layer) & (ans["head"] == h)).row(0, named=True)
            for k, v in want.items():
                assert row[k] == pytest.approx(sum(v) / len(v), abs=1e-5), (layer, h, k)
    no_names = spec.OPS["attention"].execute({"model": m.artifact, "dataset": _without_names(m.ioi)},
                                             {"layers": [0]}, Context(device="cpu", max_rows=4))
    assert "answer" not in no_names.tables  # only datasets that name an IO and a subject get it


def _without_names(art):
    from mechstudy.engine.spec import Artifact

    return Artifact(tensors={k: v for k, v in art.tensors.items() if k not in ("io_id", "s_id")}, data=art.data)
