"""Toy models of superposition (`train toy`): the paper's qualitative results, on CPU in seconds.

Each assertion would fail if the training, the sampler or a measurement were wrong: dedicated
orthogonal dimensions at 0% sparsity, antipodal pairs and a pentagon as sparsity grows, the
sticky dimensions per feature at 1 and 1/2, the three regions of the n=2, m=1 phase diagram,
and a linear model that never superposes.
"""

from __future__ import annotations

import json
import math

import polars as pl
import pytest
import torch

from mechstudy.engine import spec
from mechstudy.stdlib.ops import toy_superposition  # noqa: F401  (registers the op)
from mechstudy.stdlib.toy import charts, data, measure, train  # noqa: F401  (charts registers kinds)


def train_toy(**params):
    return spec.OPS["toy_superposition"].execute({}, params, None)


def best(art, sparsity, importance=1.0):
    """The model index of the lowest-loss seed of a configuration."""
    r = art.tables["result"].filter(
        pl.col("best") & (pl.col("sparsity") == sparsity) & (pl.col("importance") == importance))
    assert r.height == 1
    return r["model"][0]


@pytest.fixture(scope="module")
def five_in_two():
    """n=5, m=2, I_i = 0.9^i at S = 0 and 0.8, 6 seeds each: 12 models trained at once. Which
    solution a model reaches is decided by its initialisation (measured: the same basins at
    lr 0.03, 0.01 and 0.003), so the lowest-loss seed is the one that counts."""
    return train_toy(n=5, m=2, sparsity=[0.0, 0.8], importance=[0.9], seeds=6, steps=2000, batch=512)


@pytest.fixture(scope="module")
def pentagon():
    """n=5, m=2, equal importance, S = 0.9, 3 seeds."""
    return train_toy(n=5, m=2, sparsity=[0.9], importance=[1.0], seeds=3, steps=2000, batch=512)


# ---------------------------------------------------------------------------- the core


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("weights", ["mean", "per_row", "per_model"])
def test_hand_written_gradients_match_autograd(relu, bias, weights):
    g = torch.Generator().manual_seed(1)
    K, n, m, B = 3, 7, 3, 50
    W = torch.randn(K, m, n, generator=g, dtype=torch.float64)
    b = 0.3 * torch.randn(K, n, generator=g, dtype=torch.float64)
    x = torch.rand(K, n, B, generator=g, dtype=torch.float64) * (torch.rand(K, n, B, generator=g) > 0.5)
    imp = torch.rand(K, n, generator=g, dtype=torch.float64)
    w = {"mean": None, "per_row": torch.rand(K, B, generator=g, dtype=torch.float64),
         "per_model": torch.rand(K, generator=g, dtype=torch.float64)}[weights]
    zero = None if w is None else torch.rand(K, generator=g, dtype=torch.float64)
    Wa, ba = W.clone().requires_grad_(), b.clone().requires_grad_()
    err = ((train.forward(Wa, ba, x, relu, bias) - x) ** 2 * imp.unsqueeze(-1)).sum(1)  # [K, B]
    if w is None:
        ref = err.mean(-1)
    else:
        ref = (err * (w if w.dim() == 2 else w.unsqueeze(-1))).sum(-1)
        if bias:
            ref = ref + zero * (imp * (ba.clamp_min(0) if relu else ba) ** 2).sum(-1)
    ref.sum().backward()
    loss, gW, gb = train.loss_and_grads(W, b, x, imp, relu, bias, w, zero)
    torch.testing.assert_close(loss, ref.detach())
    torch.testing.assert_close(gW, Wa.grad)
    torch.testing.assert_close(gb, ba.grad if bias else torch.zeros_like(b))


def test_nonzero_sampler_is_the_same_distribution():
    """Rows conditioned on an active feature, plus the zero row's exact mass, give the same
    marginals and the same expected loss as plain sampling."""
    g = torch.Generator().manual_seed(0)
    S, n, rows = torch.tensor([0.0, 0.5, 0.9, 0.99]), 3, 200_000
    x, p = data.sample_nonzero(g, S, rows, n)
    torch.testing.assert_close(p, 1 - S**n)
    assert bool((x > 0).any(1).all())  # no all-zero row
    active = (x > 0).float().mean((1, 2))
    torch.testing.assert_close(active, (1 - S) / (1 - S**n), atol=4e-3, rtol=0)
    # Active values stay uniform on [0, 1]: mean 1/2, variance 1/12.
    vals = x[x > 0]
    assert abs(float(vals.mean()) - 0.5) < 3e-3 and abs(float(vals.var()) - 1 / 12) < 2e-3
    W, b = train.init_weights(g, 4, 2, n)
    b = 0.2 * torch.randn(4, n, generator=g)
    imp = torch.ones(4, n)
    plain = train.loss_and_grads(W, b, data.sample_features(g, S, 400_000, n), imp)[0]
    cond = train.loss_and_grads(W, b, x, imp, True, True, p / rows, 1 - p)[0]
    torch.testing.assert_close(cond, plain, rtol=0.02, atol=1e-4)


def test_correlated_and_anticorrelated_sets():
    g = torch.Generator().manual_seed(0)
    S = torch.tensor([0.8])
    corr = data.sample_features(g, S, 50_000, 6, "correlated", group=3)[0] > 0  # [n, B]
    assert torch.equal(corr[0], corr[1]) and torch.equal(corr[3], corr[5])  # a set fires together
    assert not torch.equal(corr[0], corr[3])
    anti = data.sample_features(g, S, 50_000, 6, "anticorrelated", group=3)[0] > 0
    assert int(anti.view(2, 3, -1).sum(1).max()) == 1  # never two of a set at once
    for x in (corr, anti):  # the marginal stays 1 - S
        assert abs(float(x.float().mean()) - 0.2) < 0.01


def test_same_params_same_bits_and_seed_matters():
    p = dict(n=4, m=2, sparsity=[0.0, 0.8], seeds=2, steps=150, batch=256)
    a, b = train_toy(**p), train_toy(**p)
    assert torch.equal(a.tensors["W"], b.tensors["W"]) and torch.equal(a.tensors["b"], b.tensors["b"])
    assert a.tables["result"].equals(b.tables["result"]) and a.tables["features"].equals(b.tables["features"])
    c = train_toy(**p, seed=1)
    assert not torch.equal(a.tensors["W"], c.tensors["W"])


def test_measurements_on_known_geometry():
    """Norms, superposition and D_i of hand-built W: a pentagon, an antipodal pair, an orthogonal pair."""
    ang = torch.arange(5) * 2 * math.pi / 5
    pent = torch.stack([ang.cos(), ang.sin()]).unsqueeze(0)
    s = measure.column_stats(pent)
    torch.testing.assert_close(s["dimensionality"], torch.full((1, 5), 0.4))  # 2/5
    torch.testing.assert_close(s["superposition"], torch.full((1, 5), 1.5))
    assert measure.pairwise_angles(pent) == [[72.0] * 5]
    W = torch.tensor([[[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]])  # pair, dedicated, absent
    s = measure.column_stats(W)
    assert s["dimensionality"].tolist() == [[0.5, 0.5, 1.0, 0.0]]
    assert measure.status(s["norm"], s["superposition"]) == [["superposition", "superposition", "dedicated",
                                                              "not represented"]]
    assert float(measure.dims_per_feature(W)[0]) == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------- the paper's results


def test_dense_top_m_features_get_dedicated_orthogonal_dimensions(five_in_two):
    k = best(five_in_two, 0.0, 0.9)
    W = five_in_two.tensors["W"][k]
    norms = W.norm(dim=0)
    assert torch.allclose(norms[:2], torch.ones(2), atol=0.03), norms  # the two most important
    assert float(norms[2:].max()) < 0.1, norms  # the rest are not represented
    assert abs(float(W[:, 0] @ W[:, 1])) < 0.03  # orthogonal
    row = five_in_two.tables["result"].filter(pl.col("model") == k)
    assert row["dims_per_feature"][0] == pytest.approx(1.0, abs=0.02)


def test_moderate_sparsity_antipodal_pairs(five_in_two):
    """S = 0.8, I_i = 0.9^i: the four most important features form two antipodal pairs and
    the least important is not represented (the paper's 80% panel)."""
    k = best(five_in_two, 0.8, 0.9)
    W = five_in_two.tensors["W"][k]
    norms = W.norm(dim=0)
    assert float(norms[:4].min()) > 0.9 and float(norms[4]) < 0.1, norms
    cos = (W / norms).T @ (W / norms)
    pairs = sorted((i, int(cos[i, :4].argmin())) for i in range(4))
    assert all(float(cos[i, j]) < -0.98 for i, j in pairs)  # each has an opposite partner
    assert measure.pairwise_angles(W[None])[0] == pytest.approx([90.0] * 4, abs=3)


def test_high_sparsity_pentagon(pentagon):
    """S = 0.9, equal importance: all five features, 72 degrees apart, D_i = 2/5."""
    k = best(pentagon, 0.9, 1.0)
    W = pentagon.tensors["W"][k]
    assert float(W.norm(dim=0).min()) > 0.9
    gaps = measure.pairwise_angles(W[None])[0]
    assert len(gaps) == 5 and max(abs(g - 72) for g in gaps) < 4, gaps
    feats = pentagon.tables["features"].filter(pl.col("model") == k)
    assert feats["dimensionality"].to_list() == pytest.approx([0.4] * 5, abs=0.03)
    assert set(feats["status"]) == {"superposition"}
    # trained features are longer than 1: m / ||W||_F^2 is ~1/3, the normalised count is 2/5
    row = pentagon.tables["result"].filter(pl.col("model") == k)
    norms = W.norm(dim=0)
    assert row["arrangement"][0] == "pentagon" and row["represented"][0] == 5
    assert row["dims_per_unit_feature"][0] == pytest.approx(0.4, abs=1e-6)
    assert row["mean_norm"][0] == pytest.approx(float(norms.mean()), abs=1e-5) and row["mean_norm"][0] > 1.05
    assert row["dims_per_feature"][0] == pytest.approx(2 / float(norms.square().sum()), rel=1e-4)
    assert row["dims_per_feature"][0] < 0.36


def test_arrangements_of_hand_built_features():
    def polygon(k, n, r=1.0):
        a = torch.arange(k) * 2 * torch.pi / k
        W = torch.zeros(2, n)
        W[0, :k], W[1, :k] = r * torch.cos(a), r * torch.sin(a)
        return W

    W = torch.stack([polygon(5, 5, 1.1), polygon(4, 5), polygon(2, 5), polygon(3, 5), torch.zeros(2, 5)])
    W[3, :, 0] *= 0.9  # a shorter (still represented) feature keeps its angle: still regular
    bent = polygon(5, 5).clone()
    bent[:, 0] = torch.tensor([1.0, 0.3])  # one vertex moved by ~17 degrees
    W = torch.cat([W, bent[None]])
    assert measure.arrangement(W) == ["pentagon", "two antipodal pairs", "antipodal pair", "regular 3-gon",
                                      "none", "irregular"]
    assert measure.dims_per_unit_feature(W)[:4].tolist() == pytest.approx([0.4, 0.5, 1.0, 2 / 3])
    assert float(measure.dims_per_feature(W[:1])[0]) == pytest.approx(2 / (5 * 1.21), rel=1e-5)
    assert measure.arrangement(torch.zeros(1, 3, 4)) == [""]


def test_dimensions_per_feature_sticky_at_one_and_one_half():
    """Across a sweep of 1/(1-S), m/||W||_F^2 sits at 1 for dense features and plateaus at 1/2
    (antipodal pairs) over a range of sparsities, with a sharp fall between."""
    inv = [1.0, 1.1, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 6.0, 10.0]
    art = train_toy(n=6, m=2, sparsity=[1 - 1 / v for v in inv], seeds=2, steps=2000, batch=512)
    r = art.tables["result"].filter(pl.col("best")).sort("inv_density")
    dpf = r["dims_per_feature"].to_list()
    assert dpf[0] == pytest.approx(1.0, abs=0.02) and dpf[1] > 0.95  # dense: sticky at 1
    half = [i for i, v in enumerate(dpf) if abs(v - 0.5) < 0.03]
    assert len(half) >= 3 and half == list(range(half[0], half[0] + len(half))), dpf  # one 1/2 plateau
    plateau = [dpf[i] for i in half]
    assert max(plateau) - min(plateau) < 0.02  # flat across a factor of 1.6 in 1/(1-S) or more
    assert inv[half[-1]] / inv[half[0]] >= 1.6
    assert dpf[2] - dpf[half[0]] > 0.4  # the fall between the plateaus is steep
    assert dpf[-1] < 0.45  # and sparser still, more than two features per dimension


def test_phase_diagram_has_all_three_regions():
    """n=2, m=1: dense and less important -> not represented; dense and more important ->
    dedicated dimension; sparse -> antipodal superposition."""
    art = train_toy(n=2, m=1, sparsity=[0.0, 0.98], importance=[0.2, 5.0], seeds=4, steps=1500, batch=512)
    f = art.tables["features"].filter(pl.col("best") & (pl.col("feature") == 1))
    region = {(row["sparsity"], row["importance"]): row["status"] for row in f.iter_rows(named=True)}
    assert region == {(0.0, 0.2): "not represented", (0.0, 5.0): "dedicated",
                      (0.98, 0.2): "superposition", (0.98, 5.0): "superposition"}
    W = art.tensors["W"][best(art, 0.98, 0.2), 0]
    assert float(W[0] * W[1]) < -0.8  # an antipodal pair in one dimension
    vl = spec.CHARTS["phase_diagram"].render(art, None)
    assert {v["status"] for v in vl["data"]["values"]} == set(charts.REGIONS)


def test_linear_model_never_superposes():
    """Without the ReLU, interference cannot be filtered out: the linear model keeps the top m
    features (principal components) even when they are sparse, where the ReLU model superposes."""
    art = train_toy(n=5, m=2, sparsity=[0.9], importance=[0.8], seeds=2, steps=1500, batch=512, output="linear")
    k = best(art, 0.9, 0.8)
    norms = art.tensors["W"][k].norm(dim=0)
    assert torch.allclose(norms[:2], torch.ones(2), atol=0.02) and float(norms[2:].max()) < 0.05, norms
    assert art.tables["result"]["dims_per_feature"][k] == pytest.approx(1.0, abs=0.02)


def test_without_bias_b_stays_zero_and_superposition_remains():
    art = train_toy(n=5, m=2, sparsity=[0.9], seeds=2, steps=1000, batch=512, bias=False)
    assert not art.tensors["b"].any()
    assert art.tables["result"].filter(pl.col("best"))["represented"][0] >= 4


@pytest.mark.parametrize("structure, within, across", [("correlated", 0.0, -1.0), ("anticorrelated", -1.0, 0.0)])
def test_correlated_sets_orthogonal_anticorrelated_sets_antipodal(structure, within, across):
    """Sets (0,1) and (2,3), S=0.9: features that fire together are placed orthogonally (and
    antipodal to the other set); features that never fire together form antipodal pairs."""
    art = train_toy(n=4, m=2, sparsity=[0.9], seeds=3, steps=1500, batch=512, features=structure, group=2)
    W = art.tensors["W"][best(art, 0.9)]
    Wn = W / W.norm(dim=0)
    cos = Wn.T @ Wn
    assert float(W.norm(dim=0).min()) > 0.9
    assert float(cos[0, 1]) == pytest.approx(within, abs=0.1) and float(cos[2, 3]) == pytest.approx(within, abs=0.1)
    assert min(float(cos[0, 2:].min()), float(cos[1, 2:].min())) == pytest.approx(across, abs=0.1)


def test_charts_render_valid_vega_lite(five_in_two):
    import vl_convert as vlc

    for kind in ("wtw", "features2d", "dims_per_feature", "dimensionality"):
        vl = spec.CHARTS[kind].render(five_in_two, "t")
        json.dumps(vl, allow_nan=False)
        assert vlc.vegalite_to_vega(vl)["marks"], kind
    wtw = spec.CHARTS["wtw"].render(five_in_two, None)["data"]["values"]
    assert len(wtw) == 2 * 25  # 2 configurations (best seeds) x 5 x 5 entries
    k = best(five_in_two, 0.8, 0.9)
    G = five_in_two.tensors["W"][k].T @ five_in_two.tensors["W"][k]
    cell = next(v for v in wtw if v["panel"] == "S=0.8" and v["i"] == 1 and v["j"] == 3)
    assert cell["value"] == pytest.approx(float(G[1, 3]), abs=1e-6)
    pts = spec.CHARTS["features2d"].render(five_in_two, None)["data"]["values"]
    assert len(pts) == 2 * 5


def test_op_validation_and_registration():
    op = spec.OPS["toy_superposition"]
    assert op.verb == "train" and op.components == ("toy",) and op.example
    assert op.default_chart in spec.CHARTS
    with pytest.raises(ValueError, match="sparsity"):
        train_toy(sparsity=[1.0], steps=1)
    with pytest.raises(ValueError, match="importance"):
        train_toy(importance=[0.0], steps=1)


def test_study_end_to_end_cached_and_sweepable(tmp_path):
    """Study text -> checked plan -> run -> store; the rerun computes nothing; `n=[3, 4]` is a
    sweep (one node per point) while `sparsity=[...]` stays one batched node."""
    from mechstudy.engine.run import run_study
    from mechstudy.engine.store import Store

    path = tmp_path / "toy.study"
    path.write_text(
        'study "toy"\n'
        "toy = train toy n=5 m=2 sparsity=[0, 0.9] seeds=2 steps=200 batch=256\n"
        "sw = train toy n=[3, 4] m=2 sparsity=[0.5] steps=50 batch=64\n"
        "plot toy as features2d\n"
    )
    cache = tmp_path / "cache"
    first = run_study(path, cache=cache, report=False, device="cpu")
    assert {k: len(r.nodes) for k, r in first.plan.results.items()} == {"toy": 1, "sw": 2}
    node = first.plan.results["toy"].nodes[0]
    art = Store(cache).get(node.key)
    direct = train_toy(n=5, m=2, sparsity=[0.0, 0.9], seeds=2, steps=200, batch=256)
    assert torch.equal(art.tensors["W"], direct.tensors["W"])  # the engine runs the same numbers
    assert art.tables["result"]["sparsity"].to_list() == [0.0, 0.0, 0.9, 0.9]
    again = run_study(path, cache=cache, report=False, device="cpu")
    assert again.computed == 0
