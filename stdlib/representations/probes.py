"""Probes fitted on cached activations: linear (logistic / multinomial with L2) and one-hidden-layer
MLP probes, every layer in one batched fit; control tasks and selectivity (Hewitt & Liang, 2019).

Features are standardised per dimension with the training rows' mean and standard deviation (so
one L2 strength suits every layer). The linear probe minimises, per layer and exactly as
scikit-learn's ``LogisticRegression(C=1/l2)`` does,

    sum_i CE(W x_i + b, y_i) + l2 / 2 * ||W||^2          (the intercept is not penalised)

with one logit (sigmoid) for two classes and a softmax over C logits otherwise. The layers are
independent problems solved as one sum with L-BFGS in float64 (the optimum of the sum is every
layer's optimum), on any torch device. The MLP probe (ReLU, `hidden` units) is trained full-batch
with Adam for `steps` steps, also batched over layers.

A control task (Hewitt & Liang) gives every word type a label drawn once, at random, from the
task's label distribution; a probe that scores well on it memorises word identity rather than
reading the property. Selectivity = task accuracy - control accuracy, on the same held-out rows.

>>> x = torch.tensor([[[0.0], [1.0], [2.0], [3.0]]], dtype=torch.float64)   # 1 layer, 4 points, 1 dim
>>> fit = fit_linear(x, torch.tensor([0, 0, 1, 1]), 2, l2=1e-3)
>>> predict(fit, x).argmax(-1).tolist()
[[0, 0, 1, 1]]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Labelled:
    """The labelled entries of a dataset: row, position, label, word type (each [M]), the class
    names and the number of word types."""

    row: torch.Tensor
    pos: torch.Tensor
    label: torch.Tensor
    type: torch.Tensor
    classes: list[str]

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def n(self) -> int:
        return int(self.label.shape[0])


def labelled(artifact: Any) -> Labelled:
    """The probing labels of a dataset artifact: ``label``/``label_row``/``label_pos``/``label_type``
    (the built-in labelled generators), or a user file's ``labels`` [N] read at each prompt's last
    token, whose word type is that token."""
    t, data = artifact.tensors, artifact.data or {}
    if "label" in t:
        label = torch.as_tensor(t["label"]).long()
        row, pos, typ = (torch.as_tensor(t[k]).long() for k in ("label_row", "label_pos", "label_type"))
    elif "labels" in t:
        label = torch.as_tensor(t["labels"])
        if label.is_floating_point():
            raise ValueError("probes need class labels; this dataset's label column holds numbers")
        label = label.long()
        ids = torch.as_tensor(t["clean_ids"] if "clean_ids" in t else t["input_ids"]).long()
        row = torch.arange(label.shape[0])
        pos = torch.as_tensor(t["answer_pos"]).long() if "answer_pos" in t else \
            torch.as_tensor(t["attention_mask"]).long().sum(1) - 1
        typ = torch.unique(ids[row, pos], return_inverse=True)[1]
    else:
        raise ValueError("the dataset has no labels (label, or a file's label column)")
    classes = data.get("label_classes") or [str(c) for c in range(int(label.max()) + 1)]
    if label.min() < 0 or int(label.max()) >= len(classes):
        raise ValueError(f"labels must be class indices 0..{len(classes) - 1}")
    return Labelled(row, pos, label, typ, list(classes))


def held_out_rows(n_rows: int, fraction: float, seed: int) -> torch.Tensor:
    """bool [n_rows]: the rows held out for testing (a seeded permutation; at least one each way).

    >>> held_out_rows(8, 0.25, 0).sum().item()
    2
    """
    if not 0 < fraction < 1:
        raise ValueError(f"the test fraction must be between 0 and 1, got {fraction}")
    k = min(max(1, round(n_rows * fraction)), n_rows - 1)
    perm = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed))
    out = torch.zeros(n_rows, dtype=torch.bool)
    out[perm[:k]] = True
    return out


def control_labels(types: torch.Tensor, labels: torch.Tensor, n_classes: int, seed: int) -> torch.Tensor:
    """Hewitt & Liang's control task: each word type gets one label drawn from the empirical
    distribution of `labels`; returns the control label of every entry [M].

    >>> c = control_labels(torch.tensor([0, 1, 0, 2]), torch.tensor([0, 1, 1, 0]), 2, seed=0)
    >>> bool(c[0] == c[2])
    True
    """
    g = torch.Generator().manual_seed(seed + 7919)
    freq = torch.bincount(labels, minlength=n_classes).double()
    per_type = torch.multinomial(freq / freq.sum(), int(types.max()) + 1, replacement=True, generator=g)
    return per_type[types]


@dataclass
class Fit:
    """A fitted probe per layer: standardisation (mean, std [L, D]) and weights. Linear: W [L, D, K],
    b [L, K] with K = 1 for two classes; MLP: also W2 [L, H, C], b2 [L, C]."""

    mean: torch.Tensor
    std: torch.Tensor
    W: torch.Tensor
    b: torch.Tensor
    W2: torch.Tensor | None = None
    b2: torch.Tensor | None = None
    iterations: int = 0


def standardise(x: torch.Tensor, train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) [L, D] of the training entries of x [L, M, D] (std floored at 1e-8)."""
    xt = x[:, train]
    return xt.mean(1), xt.std(1, unbiased=False).clamp(min=1e-8)


def logits(fit: Fit, x: torch.Tensor) -> torch.Tensor:
    """Raw scores [L, M, K] (K = 1 for a binary linear probe)."""
    z = (x - fit.mean[:, None]) / fit.std[:, None]
    h = torch.baddbmm(fit.b[:, None], z, fit.W)
    if fit.W2 is None:
        return h
    return torch.baddbmm(fit.b2[:, None], torch.relu(h), fit.W2)


def predict(fit: Fit, x: torch.Tensor) -> torch.Tensor:
    """Class log-probabilities [L, M, C] of x [L, M, D]."""
    s = logits(fit, x)
    if s.shape[-1] == 1:
        return torch.cat([F.logsigmoid(-s), F.logsigmoid(s)], -1)
    return torch.log_softmax(s, -1)


def fit_linear(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float = 1.0, max_iter: int = 500,
               mean: torch.Tensor | None = None, std: torch.Tensor | None = None) -> Fit:
    """L2-regularised logistic (2 classes) or multinomial regression of y [M] on x [L, M, D], every
    layer at once (see the module docstring); x holds training entries only."""
    x = x.double()
    if mean is None or std is None:
        mean, std = standardise(x, torch.ones(x.shape[1], dtype=torch.bool))
    z = (x - mean[:, None]) / std[:, None]
    L, M, D = z.shape
    K = 1 if n_classes == 2 else n_classes
    W = torch.zeros(L, D, K, dtype=torch.float64, device=x.device, requires_grad=True)
    b = torch.zeros(L, K, dtype=torch.float64, device=x.device, requires_grad=True)
    yy = y.to(x.device)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, history_size=20, tolerance_grad=1e-10,
                            tolerance_change=1e-14, line_search_fn="strong_wolfe")
    calls = [0]

    def closure():
        opt.zero_grad()
        s = torch.baddbmm(b[:, None], z, W)  # [L, M, K]
        if K == 1:
            loss = F.binary_cross_entropy_with_logits(s[..., 0], yy.double()[None].expand(L, M), reduction="sum")
        else:
            loss = F.cross_entropy(s.reshape(L * M, K), yy.repeat(L), reduction="sum")
        loss = loss + 0.5 * l2 * (W * W).sum()
        loss.backward()
        calls[0] += 1
        return loss

    opt.step(closure)
    return Fit(mean, std, W.detach(), b.detach(), iterations=calls[0])


def fit_mlp(x: torch.Tensor, y: torch.Tensor, n_classes: int, hidden: int = 64, steps: int = 300, lr: float = 1e-2,
            l2: float = 1e-4, seed: int = 0, mean: torch.Tensor | None = None, std: torch.Tensor | None = None) -> Fit:
    """A one-hidden-layer ReLU probe per layer, full-batch Adam (weight decay `l2`), float32."""
    x = x.float()
    if mean is None or std is None:
        mean, std = standardise(x, torch.ones(x.shape[1], dtype=torch.bool))
    mean, std = mean.float(), std.float()
    z = (x - mean[:, None]) / std[:, None]
    L, M, D = z.shape
    g = torch.Generator().manual_seed(seed)
    W1 = (torch.randn(L, D, hidden, generator=g) / D ** 0.5).to(x.device).requires_grad_()
    b1 = torch.zeros(L, hidden, device=x.device, requires_grad=True)
    W2 = (torch.randn(L, hidden, n_classes, generator=g) / hidden ** 0.5).to(x.device).requires_grad_()
    b2 = torch.zeros(L, n_classes, device=x.device, requires_grad=True)
    opt = torch.optim.AdamW([W1, b1, W2, b2], lr=lr, weight_decay=l2)
    yy = y.to(x.device).repeat(L)
    for _ in range(steps):
        opt.zero_grad()
        s = torch.baddbmm(b2[:, None], torch.relu(torch.baddbmm(b1[:, None], z, W1)), W2)
        loss = F.cross_entropy(s.reshape(L * M, n_classes), yy) * L
        loss.backward()
        opt.step()
    return Fit(mean, std, W1.detach(), b1.detach(), W2.detach(), b2.detach(), iterations=steps)


@dataclass
class Scores:
    """Per layer [L]: accuracy and mean cross-entropy (nats) on some entries."""

    accuracy: torch.Tensor
    loss: torch.Tensor


def score(fit: Fit, x: torch.Tensor, y: torch.Tensor) -> Scores:
    lp = predict(fit, x.to(fit.mean.dtype))  # [L, M, C]
    yy = y.to(lp.device)
    acc = (lp.argmax(-1) == yy[None]).double().mean(1)
    loss = -lp.gather(-1, yy[None, :, None].expand(lp.shape[0], -1, 1))[..., 0].double().mean(1)
    return Scores(acc.cpu(), loss.cpu())
