"""Measurements of toy models (Elhage et al. 2022), batched over models.

For columns v_i of a matrix V [K, m, c] (the features W_i, or hidden vectors h_t = W x_t):

- norm ``||v_i||``: about 1 for a represented feature, about 0 for one that is not;
- superposition ``sum_{j != i} (v_i_hat . v_j)^2``: how much the others load on v_i's direction;
- dimensionality ``D_i = ||v_i||^2 / sum_j (v_i_hat . v_j)^2`` (the j = i term is ||v_i||^2),
  the fraction of a dimension v_i gets: 1 dedicated, 1/2 antipodal pair, 2/5 pentagon.

And per model: ``||W||_F^2`` (counts the represented features) and the dimensions per feature
``m / ||W||_F^2``, which is "sticky" at 1 and 1/2 across a sparsity sweep. Trained features are
not unit vectors (a pentagon's have norm ~1.1, so its m / ||W||_F^2 is ~0.33, not 2/5), so the
dimensions per feature with normalised norms, ``m / (features represented)``, is reported too, with
the mean norm of the represented features and, for m = 2, the arrangement they form.

>>> W = torch.tensor([[[1.0, -1.0, 0.0], [0.0, 0.0, 0.0]]])  # an antipodal pair, one absent
>>> s = column_stats(W)
>>> s["norm"].tolist(), s["dimensionality"].tolist()
([[1.0, 1.0, 0.0]], [[0.5, 0.5, 0.0]])
>>> float(dims_per_feature(W)[0])
1.0
"""

from __future__ import annotations

import torch

REPRESENTED = 0.5  # ||W_i|| at or above this counts as represented
DEDICATED = 0.5  # superposition below this (with a represented feature) counts as a dedicated dimension
_TINY = 1e-12


def column_stats(V: torch.Tensor) -> dict[str, torch.Tensor]:
    """Norm, superposition and dimensionality of each column: V [K, m, c] -> three [K, c].

    A zero column has no direction: its superposition and dimensionality are 0.
    """
    V = V.to(torch.float64)  # the ratios of small numbers below are kinder in double
    norm = V.norm(dim=1)
    hat = V / norm.clamp_min(_TINY).unsqueeze(1)
    proj2 = torch.bmm(hat.transpose(1, 2), V).square()  # [K, c, c]: (v_i_hat . v_j)^2
    total = proj2.sum(-1)
    live = norm > 1e-9
    sq = norm.square()
    sup = torch.where(live, (total - sq).clamp_min(0), torch.zeros_like(total))
    dim = torch.where(live, sq / total.clamp_min(_TINY), torch.zeros_like(total))
    return {"norm": norm.float(), "superposition": sup.float(), "dimensionality": dim.float()}


def frobenius(W: torch.Tensor) -> torch.Tensor:
    """||W||_F^2 per model: [K, m, n] -> [K]."""
    return W.to(torch.float64).square().sum((1, 2)).float()


def dims_per_feature(W: torch.Tensor) -> torch.Tensor:
    """m / ||W||_F^2 per model: [K, m, n] -> [K]."""
    return W.shape[1] / frobenius(W).clamp_min(_TINY)


def dims_per_unit_feature(W: torch.Tensor, min_norm: float = REPRESENTED) -> torch.Tensor:
    """m / (features represented) per model: the dimensions per feature with every represented
    feature's norm set to 1 (a pentagon: 2/5 whatever its norms). [K, m, n] -> [K] (inf: none).

    >>> float(dims_per_unit_feature(1.1 * torch.eye(2)[None].repeat(1, 1, 2))[0])
    0.5
    """
    n_rep = (W.norm(dim=1) >= min_norm).sum(1).to(torch.float64)
    return (W.shape[1] / n_rep).float()


def mean_represented_norm(W: torch.Tensor, min_norm: float = REPRESENTED) -> torch.Tensor:
    """Mean ||W_i|| over the represented features of each model (0 when none): [K, m, n] -> [K]."""
    norm = W.norm(dim=1)
    rep = norm >= min_norm
    return torch.where(rep.any(1), (norm * rep).sum(1) / rep.sum(1).clamp_min(1), torch.zeros(len(W)))


ARRANGEMENT_TOLERANCE = 6.0  # degrees: every gap within this of 360/k makes a regular k-gon


def arrangement(W: torch.Tensor, min_norm: float = REPRESENTED) -> list[str]:
    """For m = 2, what the represented features form: "pentagon", "two antipodal pairs",
    "antipodal pair", "orthogonal pair", "regular k-gon", "one feature", "none" or "irregular"
    (every angular gap within ARRANGEMENT_TOLERANCE of 360/k makes a regular k-gon). "" for m != 2.

    >>> arrangement(torch.tensor([[[1.0, -1.0, 0.0], [0.0, 0.0, 0.0]]]))
    ['antipodal pair']
    """
    if W.shape[1] != 2:
        return [""] * len(W)
    names = {5: "pentagon", 4: "two antipodal pairs", 2: "antipodal pair"}
    out = []
    for gaps in pairwise_angles(W, min_norm):
        k = len(gaps)
        if k <= 1:
            out.append("one feature" if k == 1 else "none")
        elif all(abs(g - 360 / k) <= ARRANGEMENT_TOLERANCE for g in gaps):
            out.append(names.get(k, f"regular {k}-gon"))
        elif k == 2 and abs(min(gaps) - 90) <= ARRANGEMENT_TOLERANCE:
            out.append("orthogonal pair")
        else:
            out.append("irregular")
    return out


def status(norm: torch.Tensor, superposition: torch.Tensor) -> list[list[str]]:
    """Each feature's regime, as in the n=2, m=1 phase diagram (for its extra feature):
    "not represented" (norm below REPRESENTED), "dedicated" (little interference), or
    "superposition"."""
    out = []
    for nk, sk in zip(norm.tolist(), superposition.tolist()):
        out.append(["not represented" if a < REPRESENTED else "dedicated" if s < DEDICATED else "superposition"
                    for a, s in zip(nk, sk)])
    return out


def hidden_points(W: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """Hidden vectors h_t = W x_t of data points, as columns: W [K, m, n], X [K, n, T] -> [K, m, T]."""
    return torch.bmm(W, X)


def pairwise_angles(W: torch.Tensor, min_norm: float = REPRESENTED) -> list[list[float]]:
    """For m = 2: the angles (degrees, 0..360) between angularly adjacent represented features.

    A pentagon gives five gaps of 72; two antipodal pairs give four gaps of 90.
    """
    if W.shape[1] != 2:
        raise ValueError(f"pairwise_angles needs m = 2, got m = {W.shape[1]}")
    out = []
    for Wk in W:
        keep = Wk.norm(dim=0) >= min_norm
        ang = torch.rad2deg(torch.atan2(Wk[1, keep], Wk[0, keep])).sort().values
        if ang.numel() < 2:
            out.append([360.0] if ang.numel() == 1 else [])
            continue
        gaps = torch.diff(torch.cat([ang, ang[:1] + 360]))
        out.append([round(float(g), 3) for g in gaps])
    return out
