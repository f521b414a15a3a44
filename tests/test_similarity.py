"""Representational similarity (stdlib/representations/similarity.py and the `similarity` operator):
CKA against its hand-written feature-space formula, invariances, RBF CKA against a double loop,
RSA against scipy; the operator against HF's hidden states on every architecture and between two
models through a real plan."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

import mechstudy.stdlib.models.sources  # noqa: F401  (registers the hf and zoo model sources)
import mechstudy.stdlib.ops.similarity  # noqa: F401  (registers the operator under test)
from conftest import CIRCUIT_ARCHS, ENCODER_ARCHS
from mechstudy.engine import spec
from mechstudy.engine.context import Context
from mechstudy.stdlib.representations import similarity as S


def cka_by_hand(X: np.ndarray, Y: np.ndarray) -> float:
    """Kornblith et al.'s feature-space formula: ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F), centred."""
    X = X - X.mean(0)
    Y = Y - Y.mean(0)
    return np.linalg.norm(Y.T @ X) ** 2 / (np.linalg.norm(X.T @ X) * np.linalg.norm(Y.T @ Y))


def rbf_cka_by_hand(X: np.ndarray, Y: np.ndarray, frac: float) -> float:
    n = X.shape[0]

    def gram(Z):
        d = [[math.dist(Z[i], Z[j]) for j in range(n)] for i in range(n)]
        med = float(np.median([d[i][j] for i in range(n) for j in range(i + 1, n)]))
        s = frac * med
        return np.array([[math.exp(-d[i][j] ** 2 / (2 * s * s)) for j in range(n)] for i in range(n)])

    H = np.eye(n) - np.ones((n, n)) / n
    K, L = H @ gram(X) @ H, H @ gram(Y) @ H
    return float((K * L).sum() / math.sqrt((K * K).sum() * (L * L).sum()))


def test_linear_cka_equals_the_feature_space_formula():
    g = np.random.default_rng(0)
    for n, dx, dy in ((10, 3, 7), (30, 12, 5), (8, 20, 20)):
        X, Y = g.normal(size=(n, dx)), g.normal(size=(n, dy))
        Y[:, 0] += 2 * X[:, 0]  # some shared structure
        got = float(S.linear_cka(torch.tensor(X), torch.tensor(Y)))
        assert got == pytest.approx(cka_by_hand(X, Y), abs=1e-6)
        assert 0 < got < 1


def test_cka_is_one_under_orthogonal_maps_and_isotropic_scaling():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(40, 16, generator=g, dtype=torch.float64)
    Q = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=torch.float64)).Q
    assert float(S.linear_cka(X, X @ Q)) == pytest.approx(1.0, abs=1e-12)
    assert float(S.linear_cka(X, 0.3 * X @ Q + 5.0)) == pytest.approx(1.0, abs=1e-12)  # shift and scale too
    grams = torch.stack([S.rbf_gram(X), S.rbf_gram(X @ Q)])
    assert S.cka_from_grams(grams, grams)[0, 1].item() == pytest.approx(1.0, abs=1e-12)  # RBF: distances kept
    W = torch.randn(16, 16, generator=g, dtype=torch.float64)
    assert float(S.linear_cka(X, X @ W)) < 0.99  # not invariant to any invertible map


def test_rbf_cka_equals_a_double_loop():
    g = np.random.default_rng(2)
    X, Y = g.normal(size=(12, 4)), g.normal(size=(12, 6))
    Y[:, :4] += X
    got = S.similarity_matrix("rbf_cka", [torch.tensor(X)], [torch.tensor(Y)], sigma=0.8)[0, 0].item()
    assert got == pytest.approx(rbf_cka_by_hand(X, Y, 0.8), abs=1e-9)


def test_rsa_equals_scipy_spearman_of_correlation_rdms():
    g = np.random.default_rng(3)
    X, Y = g.normal(size=(15, 6)), g.normal(size=(15, 9))
    Y[:, :6] += X
    Y[0] = Y[1]  # ties in the dissimilarities
    iu = np.triu_indices(15, 1)
    want = spearmanr((1 - np.corrcoef(X))[iu], (1 - np.corrcoef(Y))[iu]).statistic
    got = S.similarity_matrix("rsa", [torch.tensor(X)], [torch.tensor(Y)])[0, 0].item()
    assert got == pytest.approx(want, abs=1e-9)


@pytest.mark.parametrize("arch", CIRCUIT_ARCHS + ENCODER_ARCHS)
@pytest.mark.parametrize("method", S.METHODS)
def test_operator_equals_hand_formulas_on_hf_hidden_states(circuit_models, arch, method):
    from mechstudy.stdlib.datasets.ioi import generate

    m = circuit_models(arch)
    ioi = generate(m.adapter.tokenizer, n=12, seed=6)
    out = spec.OPS["similarity"].execute({"model": m.artifact, "dataset": ioi},
                                         {"component": "resid_pre", "method": method, "positions": "all"},
                                         Context(device="cpu", max_rows=5))
    t = ioi.tensors
    with torch.no_grad():
        hidden = m.adapter.model(input_ids=t["clean_ids"], attention_mask=t["attention_mask"],
                                 output_hidden_states=True).hidden_states
    real = t["attention_mask"].bool()
    reps = [h[real].double().numpy() for h in hidden[: m.adapter.n_layers]]
    sim = out.tensors["similarity"]
    for i, a in enumerate(reps):
        for j, b in enumerate(reps):
            if method == "cka":
                want = cka_by_hand(a, b)
            elif method == "rsa":
                iu = np.triu_indices(a.shape[0], 1)
                want = spearmanr(np.round(1 - np.corrcoef(a), S.RDM_DECIMALS)[iu],
                                 np.round(1 - np.corrcoef(b), S.RDM_DECIMALS)[iu]).statistic
            else:
                want = S.cka_from_grams(S.rbf_gram(torch.tensor(a))[None], S.rbf_gram(torch.tensor(b))[None])[0, 0].item()
            assert float(sim[i, j]) == pytest.approx(want, abs=1e-5), (i, j)
    assert float(sim[0, 0]) == pytest.approx(1.0, abs=1e-6) and out.data["examples"] == int(real.sum())


def test_two_models_through_a_plan(circuit_models, tmp_path):
    from mechstudy.engine.run import check_and_plan, run_study
    from mechstudy.engine.store import Store
    from mechstudy.stdlib.datasets.ioi import generate

    a, b = circuit_models("gpt2"), circuit_models("neox")  # the same word-level tokenizer
    study = tmp_path / "two.study"
    study.write_text(f'model a = hf "{a.dir}"\nmodel b = hf "{b.dir}"\ndataset d = ioi(n=6, seed=1)\n'
                     "s = similarity resid_pre in all layers of a on d using cka other=b at all positions\n")
    run_study(study, cache=tmp_path / "cache", device="cpu", report=False)
    plan = check_and_plan(study)
    node = plan.results["s"].nodes[0]
    assert node.input("other_dataset").input("model").key == node.input("other").key  # tokenised by b
    sim = Store(tmp_path / "cache").get(node.key).tensors["similarity"]
    ioi = generate(a.adapter.tokenizer, n=6, seed=1)
    t = ioi.tensors
    real = t["attention_mask"].bool()
    with torch.no_grad():
        ha = a.adapter.model(input_ids=t["clean_ids"], attention_mask=t["attention_mask"], output_hidden_states=True)
        hb = b.adapter.model(input_ids=t["clean_ids"], attention_mask=t["attention_mask"], output_hidden_states=True)
    for i in range(2):
        for j in range(2):
            want = cka_by_hand(ha.hidden_states[i][real].double().numpy(), hb.hidden_states[j][real].double().numpy())
            assert float(sim[i, j]) == pytest.approx(want, abs=1e-5)
