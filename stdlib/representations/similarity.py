"""Representational similarity between layers (or models) on the same examples: linear CKA, RBF CKA
(Kornblith et al., 2019) and RSA (Kriegeskorte et al., 2008).

Every representation is a matrix X [n, d] (n examples in the same order everywhere; d may differ).

- Linear CKA: with columns centred, ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)``, computed in its
  Gram form ``<HKH, HLH>_F / (||HKH||_F ||HLH||_F)`` with K = X X^T, L = Y Y^T (the biased HSIC
  estimator). Invariant to orthogonal transforms and isotropic scaling of either side.
- RBF CKA: the same with K_ij = exp(-||x_i - x_j||^2 / (2 sigma^2)), sigma = `sigma` times the
  median distance between examples (0.8 in Kornblith et al.).
- RSA: each layer's representational dissimilarity matrix (1 - Pearson correlation between two
  examples' vectors, to 10 decimals), compared by the Spearman correlation of their upper triangles.

All layers are compared in one batch: [La, n, n] Gram matrices in, an [La, Lb] matrix out.

>>> X = torch.randn(20, 5, dtype=torch.float64)
>>> Q = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64)).Q
>>> round(float(linear_cka(X, 3 * X @ Q)), 9)
1.0
"""

from __future__ import annotations

import torch

METHODS = ("cka", "rbf_cka", "rsa")
# RSA ranks dissimilarities: rounded to this many decimals first, so that pairs equal up to float
# round-off (identical examples, e.g. the same first token of two prompts) tie instead of being
# ordered by noise.
RDM_DECIMALS = 10


def centre(K: torch.Tensor) -> torch.Tensor:
    """H K H for Gram matrices [..., n, n] (H = I - 11^T/n)."""
    return K - K.mean(-1, keepdim=True) - K.mean(-2, keepdim=True) + K.mean((-1, -2), keepdim=True)


def linear_gram(X: torch.Tensor) -> torch.Tensor:
    """[..., n, d] -> [..., n, n]."""
    return X @ X.transpose(-1, -2)


def sq_distances(X: torch.Tensor) -> torch.Tensor:
    g = linear_gram(X)
    d = torch.diagonal(g, dim1=-2, dim2=-1)
    return (d[..., :, None] + d[..., None, :] - 2 * g).clamp(min=0)


def rbf_gram(X: torch.Tensor, sigma: float = 0.8) -> torch.Tensor:
    """exp(-||x_i - x_j||^2 / (2 s^2)), s = sigma x the median distance between distinct examples."""
    d2 = sq_distances(X)
    n = X.shape[-2]
    iu = torch.triu_indices(n, n, 1)
    med = torch.quantile(d2[..., iu[0], iu[1]].sqrt(), 0.5, dim=-1).clamp(min=1e-12)  # the usual (averaged) median
    s = sigma * med
    return torch.exp(-d2 / (2 * s[..., None, None] ** 2))


def cka_from_grams(Ka: torch.Tensor, Kb: torch.Tensor) -> torch.Tensor:
    """CKA between every pair of (uncentred) Gram matrices: Ka [La, n, n], Kb [Lb, n, n] -> [La, Lb]."""
    a, b = centre(Ka), centre(Kb)
    num = torch.einsum("aij,bij->ab", a, b)
    na = torch.einsum("aij,aij->a", a, a).sqrt()
    nb = torch.einsum("aij,aij->a", b, b).sqrt()
    return num / (na[:, None] * nb[None, :]).clamp(min=1e-300)


def linear_cka(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Linear CKA of two representations [n, dx], [n, dy] (a scalar tensor)."""
    return cka_from_grams(linear_gram(X.double())[None], linear_gram(Y.double())[None])[0, 0]


def rdm(X: torch.Tensor) -> torch.Tensor:
    """1 - Pearson correlation between examples: [..., n, d] -> [..., n, n]."""
    Z = X - X.mean(-1, keepdim=True)
    Z = Z / Z.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    return 1 - Z @ Z.transpose(-1, -2)


def _ranks(v: torch.Tensor) -> torch.Tensor:
    """Average ranks along the last axis (ties share the mean of their ranks), float64."""
    order = v.argsort(dim=-1, stable=True)
    sorted_v = v.gather(-1, order)
    n = v.shape[-1]
    pos = torch.arange(n, dtype=torch.float64).expand(v.shape).clone()
    # ties: average the positions within each run of equal values
    new = torch.ones_like(sorted_v, dtype=torch.bool)
    new[..., 1:] = sorted_v[..., 1:] != sorted_v[..., :-1]
    run = new.long().cumsum(-1) - 1  # run id per sorted position
    sums = torch.zeros(v.shape[:-1] + (n,), dtype=torch.float64).scatter_add_(-1, run, pos)
    counts = torch.zeros_like(sums).scatter_add_(-1, run, torch.ones_like(pos))
    avg = (sums / counts.clamp(min=1)).gather(-1, run)
    return torch.empty_like(avg).scatter_(-1, order, avg)


def rsa_matrix(Xa: list[torch.Tensor], Xb: list[torch.Tensor]) -> torch.Tensor:
    """Spearman correlation of the RDMs' upper triangles for every pair: -> [len(Xa), len(Xb)]."""
    n = Xa[0].shape[0]
    iu = torch.triu_indices(n, n, 1)

    def ranked(xs: list[torch.Tensor]) -> torch.Tensor:
        r = torch.stack([_ranks(rdm(x.double())[iu[0], iu[1]].round(decimals=RDM_DECIMALS)) for x in xs])
        r = r - r.mean(-1, keepdim=True)
        return r / r.norm(dim=-1, keepdim=True).clamp(min=1e-300)

    return ranked(Xa) @ ranked(Xb).T


def similarity_matrix(method: str, Xa: list[torch.Tensor], Xb: list[torch.Tensor], sigma: float = 0.8) -> torch.Tensor:
    """[len(Xa), len(Xb)] similarities between representations of the same n examples."""
    if method == "rsa":
        return rsa_matrix(Xa, Xb)
    gram = linear_gram if method == "cka" else (lambda x: rbf_gram(x, sigma))
    if method not in METHODS:
        raise ValueError(f"similarity method must be one of {', '.join(METHODS)}; got {method!r}")
    Ka = torch.stack([gram(x.double()) for x in Xa])
    Kb = torch.stack([gram(x.double()) for x in Xb])
    return cka_from_grams(Ka, Kb)
