"""Batched training of toy models: K models at once, W [K, m, n], b [K, n].

The model is ``f(x) = ReLU(W^T W x + b)`` (``relu=False``: no ReLU; ``bias=False``: b = 0),
the loss of model k is ``mean_batch sum_i I_ki (x_i - f(x)_i)^2``. The models share nothing
but the random stream, so the loss summed over models has each model's own gradient.

Batches are feature-major, X [K, n, B] (see `data`). Gradients are written by hand (checked
against autograd in tests/test_superposition.py): for these tiny matrices autograd's
bookkeeping costs more than the arithmetic. With ``H = W X`` [K, m, B] and
``G = dL/d(pre-activation)`` [K, n, B]: ``dL/dW = H G^T + (W G) X^T`` (W is used twice) and
``dL/db = sum_batch G``.

The optimiser is Adam (AdamW when weight_decay > 0) with a cosine learning-rate decay to
zero, as a batched elementwise update, so every model gets exactly its own Adam.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from mechstudy.engine import nodeprogress

# Adam's constants (the PyTorch defaults).
_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8
HISTORY_POINTS = 50  # loss-curve samples kept per model


def init_weights(gen: torch.Generator, models: int, m: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Xavier-normal W [models, m, n] (std sqrt(2 / (m + n))) and zero b [models, n]."""
    W = torch.randn(models, m, n, generator=gen) * math.sqrt(2.0 / (m + n))
    return W, torch.zeros(models, n)


def forward(W: torch.Tensor, b: torch.Tensor, x: torch.Tensor, relu: bool = True, bias: bool = True) -> torch.Tensor:
    """f(x) for every model: x [K, n, B] -> [K, n, B]."""
    h = torch.bmm(W, x)
    pre = torch.baddbmm(b.unsqueeze(-1), W.transpose(1, 2), h) if bias else torch.bmm(W.transpose(1, 2), h)
    return pre.clamp_min(0) if relu else pre


def loss_and_grads(
    W: torch.Tensor,
    b: torch.Tensor,
    x: torch.Tensor,
    importance: torch.Tensor,
    relu: bool = True,
    bias: bool = True,
    weights: torch.Tensor | None = None,
    zero_mass: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-model loss [K] and its gradients with respect to W [K, m, n] and b [K, n].

    Reads W, b and x without changing them.

    Args:
        x: [K, n, B] inputs (also the targets).
        importance: [K, n] feature importances.
        weights: optional probability mass of each row, [K, B], or [K] for all rows of a model
            alike (without them rows are averaged: mass 1 / B each).
        zero_mass: optional [K] probability of the all-zero row, which is not among the rows:
            its loss sum_i I_i act(b_i)^2 is added exactly (see `data.sample_nonzero`).
    """
    K, n, B = x.shape
    h = torch.bmm(W, x)
    Wt = W.transpose(1, 2)
    pre = torch.baddbmm(b.unsqueeze(-1), Wt, h) if bias else torch.bmm(Wt, h)
    if relu:
        live = pre > 0
        r = pre.clamp_min_(0).sub_(x)
    else:
        r = pre.sub_(x)
    if weights is None or weights.dim() == 1:
        # Every row of model k has the same mass: fold it into the importances (one pass less).
        mass = torch.full((K, 1), 1.0 / B) if weights is None else weights.unsqueeze(-1)
        loss = (r * r).sum(2).mul_(importance * mass).sum(-1)
        g = r.mul_((importance * mass * 2.0).unsqueeze(-1))
    else:
        rw = r * weights.unsqueeze(1)
        loss = (rw * r).sum(2).mul_(importance).sum(-1)
        g = rw.mul_(importance.unsqueeze(-1) * 2.0)
    if relu:
        g.mul_(live)
    gW = torch.bmm(h, g.transpose(1, 2)) + torch.bmm(torch.bmm(W, g), x.transpose(1, 2))
    gb = g.sum(2) if bias else torch.zeros_like(b)
    if zero_mass is not None and bias:
        out0 = b.clamp_min(0) if relu else b  # f(0) = act(b)
        loss = loss + zero_mass * (importance * out0.square()).sum(-1)
        gb = gb + zero_mass.unsqueeze(-1) * 2.0 * importance * out0
    return loss, gW, gb


# A batch: (x [K, n, B], row masses [K, B] or [K] or None, all-zero-row mass [K] or None).
Batch = tuple[torch.Tensor, "torch.Tensor | None", "torch.Tensor | None"]


class Adam:
    """Adam / AdamW over a list of tensors, updated in place; cosine decay of the step size."""

    def __init__(self, params: list[torch.Tensor], lr: float, steps: int, weight_decay: float = 0.0) -> None:
        self.params, self.lr, self.steps, self.wd = params, lr, steps, weight_decay
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = 0

    def step(self, grads: list[torch.Tensor]) -> None:
        lr = self.lr * 0.5 * (1 + math.cos(math.pi * self.t / self.steps))
        self.t += 1
        c1, c2 = 1 - _BETA1**self.t, 1 - _BETA2**self.t
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            if self.wd:
                p.mul_(1 - lr * self.wd)
            m.mul_(_BETA1).add_(g, alpha=1 - _BETA1)
            v.mul_(_BETA2).addcmul_(g, g, value=1 - _BETA2)
            p.addcdiv_(m, v.div(c2).sqrt_().add_(_EPS), value=-lr / c1)


def fit(
    W: torch.Tensor,
    b: torch.Tensor,
    batches: Callable[[int], Batch],
    importance: torch.Tensor,
    *,
    steps: int,
    lr: float,
    relu: bool = True,
    bias: bool = True,
    weight_decay: float = 0.0,
) -> torch.Tensor:
    """Train W and b in place on `batches(step)`, a `Batch` per step.

    Returns the loss curve [K, HISTORY_POINTS]: the mean training loss over equal spans of steps.
    """
    opt = Adam([W, b] if bias else [W], lr, steps, weight_decay)
    points = min(HISTORY_POINTS, steps)
    history = torch.zeros(W.shape[0], points)
    span = steps / points
    every = max(1, steps // 200)  # progress (and the stop check) about 200 times per fit
    for t in range(steps):
        if t % every == 0:
            nodeprogress.here(t, steps, "training steps")
        x, weights, zero_mass = batches(t)
        loss, gW, gb = loss_and_grads(W, b, x, importance, relu, bias, weights, zero_mass)
        history[:, min(int(t / span), points - 1)] += loss
        opt.step([gW, gb] if bias else [gW])
    nodeprogress.here(steps, steps, "training steps")
    buckets = [min(int(t / span), points - 1) for t in range(steps)]
    counts = torch.bincount(torch.tensor(buckets), minlength=points)
    return history / counts.clamp_min(1)


def expected_loss(W, b, importance, sample: Callable[[int], Batch], rows: int, relu: bool, bias: bool) -> torch.Tensor:
    """The loss [K] estimated on `rows` fresh rows per model, drawn in chunks of 4096."""
    total = torch.zeros(W.shape[0])
    done = 0
    while done < rows:
        x, weights, zero_mass = sample(min(4096, rows - done))
        chunk = x.shape[2]
        loss, _, _ = loss_and_grads(W, b, x, importance, relu, bias, weights, zero_mass)
        total += loss * chunk
        done += chunk
    return total / rows


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the enclosed torch work on one intra-op thread, then restore the setting.

    Why: these tensors are small, and on a shared 2-core machine two OpenMP threads that wait
    on each other were measured 10-30x slower than one; one thread also keeps the bits of a
    result independent of the machine's core count.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
