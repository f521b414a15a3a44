"""The dictionary: x [B, d_in] -> features f [B, F] -> reconstruction [B, d_out].

    pre  = (x - b_dec if pre_bias else x) @ W_enc + b_enc          [B, F]
    f    = act(pre)                                                   relu | topk | batchtopk | jumprelu
    x^   = f @ W_dec + b_dec                                          [B, d_out]

A sparse autoencoder reads and writes one site (d_in = d_out, `pre_bias`: the decoder bias is
subtracted before encoding); a transcoder reads one site and writes another (an MLP's input ->
its output); a crosscoder reads and writes `groups` sites at once (layers), x being their
concatenation [B, groups * d], with each feature's decoder norm summed over groups.

Activations: ``relu``; ``topk`` (the k largest pre-activations per token, ReLU'd; Gao et al. 2024);
``batchtopk`` (the k * B largest over a training batch; at inference a global threshold, the
running mean of the smallest kept activation; Bussmann et al. 2024); ``jumprelu`` (pre * [pre >
theta] with a learned per-feature threshold theta = exp(log_threshold), trained through
straight-through estimators with a rectangle kernel of width `bandwidth`; Rajamanoharan et al.
2024).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch

ARCHS = ("relu", "topk", "batchtopk", "jumprelu")
THRESHOLD_INIT = 0.1  # JumpReLU threshold at initialisation (normalised activations)


@dataclass(frozen=True)
class Shape:
    arch: str
    d_in: int
    d_out: int
    width: int
    k: int = 0
    groups: int = 1
    pre_bias: bool = True
    bandwidth: float = 0.001

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Step(torch.autograd.Function):
    """H(z - theta) with a straight-through gradient for theta: d/dtheta = -K((z - theta)/eps)/eps."""

    @staticmethod
    def forward(ctx, z, theta, eps):  # noqa: ANN001, ANN205
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        z, theta = ctx.saved_tensors
        kernel = ((z - theta).abs() < ctx.eps / 2).to(z.dtype) / ctx.eps
        return None, (-g * kernel).sum(0), None


class _JumpReLU(torch.autograd.Function):
    """z * H(z - theta); gradient to z where it passes, to theta through the rectangle kernel."""

    @staticmethod
    def forward(ctx, z, theta, eps):  # noqa: ANN001, ANN205
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return z * (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        z, theta = ctx.saved_tensors
        kernel = ((z - theta).abs() < ctx.eps / 2).to(z.dtype) / ctx.eps
        return g * (z > theta).to(z.dtype), (-g * theta * kernel).sum(0), None


class Dictionary(torch.nn.Module):
    """A sparse dictionary (see the module docstring). Weights are float32 parameters."""

    def __init__(self, shape: Shape, gen: torch.Generator | None = None) -> None:
        super().__init__()
        if shape.arch not in ARCHS:
            raise ValueError(f"unknown dictionary architecture {shape.arch!r}; known: {', '.join(ARCHS)}")
        self.shape = shape
        d_in, d_out, F = shape.d_in, shape.d_out, shape.width
        dec = torch.randn(F, d_out, generator=gen)
        blocks = dec.view(F, shape.groups, -1)
        dec = (blocks / blocks.norm(dim=-1, keepdim=True).clamp_min(1e-12)).view(F, d_out)
        self.W_dec = torch.nn.Parameter(dec * 0.1)
        if d_in == d_out:  # tied initialisation (the encoder starts as the decoder's transpose)
            self.W_enc = torch.nn.Parameter(self.W_dec.detach().T.clone())
        else:
            self.W_enc = torch.nn.Parameter(torch.randn(d_in, F, generator=gen) / math.sqrt(d_in) * 0.1)
        self.b_enc = torch.nn.Parameter(torch.zeros(F))
        self.b_dec = torch.nn.Parameter(torch.zeros(d_out))
        if shape.arch == "jumprelu":
            self.log_threshold = torch.nn.Parameter(torch.full((F,), math.log(THRESHOLD_INIT)))
        self.register_buffer("threshold", torch.zeros(()))  # batchtopk's inference threshold

    # ---- forward ----------------------------------------------------------------------------
    def pre(self, x: torch.Tensor) -> torch.Tensor:
        if self.shape.pre_bias:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activate(self, z: torch.Tensor, train: bool = False) -> torch.Tensor:
        arch, k = self.shape.arch, self.shape.k
        if arch == "relu":
            return torch.relu(z)
        if arch == "topk" or (arch == "batchtopk" and not train and float(self.threshold) <= 0):
            v, i = z.topk(min(k, z.shape[-1]), dim=-1)
            return torch.zeros_like(z).scatter(-1, i, torch.relu(v))
        if arch == "batchtopk":
            if not train:
                return z * (z > self.threshold).to(z.dtype)
            flat = torch.relu(z).flatten()
            v, i = flat.topk(min(k * z.shape[0], flat.numel()))
            return torch.zeros_like(flat).scatter(0, i, v).view_as(z)
        theta = self.log_threshold.exp()
        if train:
            return _JumpReLU.apply(z, theta, self.shape.bandwidth)
        return z * (z > theta).to(z.dtype)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations [B, F]."""
        return self.activate(self.pre(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction [B, d_out] (inference: batchtopk uses its threshold)."""
        return self.decode(self.encode(x))

    def decoder_norms(self) -> torch.Tensor:
        """[F]: each feature's decoder norm, summed over groups (a crosscoder's layers)."""
        return _group_norms(self.W_dec, self.shape.groups)

    def directions(self) -> torch.Tensor:
        """[F, d_out] unit decoder directions (a crosscoder's: its whole concatenated row)."""
        return self.W_dec / self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    # ---- state ------------------------------------------------------------------------------
    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        return {prefix + k: v.detach().clone() for k, v in self.state_dict().items()}

    @classmethod
    def of(cls, shape: Shape | Mapping[str, Any], tensors: Mapping[str, torch.Tensor], prefix: str = "") -> "Dictionary":
        shape = shape if isinstance(shape, Shape) else Shape(**dict(shape))
        d = cls(shape)
        d.load_state_dict({k[len(prefix):]: torch.as_tensor(v).float() for k, v in tensors.items() if k.startswith(prefix)})
        return d

    @torch.no_grad()
    def scaled(self, c_in: torch.Tensor | float, c_out: torch.Tensor | float) -> "Dictionary":
        """The same dictionary for raw activations when it was trained on normalised ones (input
        c_in * x, target c_out * y; scalars or one factor per coordinate): it then reads raw x and
        writes raw y, with ReLU / TopK / threshold behaviour unchanged."""
        out = Dictionary.of(self.shape, self.tensors())
        c_in = torch.as_tensor(c_in, dtype=torch.float32).expand(self.shape.d_in)
        c_out = torch.as_tensor(c_out, dtype=torch.float32).expand(self.shape.d_out)
        out.W_enc.mul_(c_in[:, None])
        out.W_dec.div_(c_out[None, :])
        out.b_dec.div_(c_out)
        return out


def _group_norms(w: torch.Tensor, groups: int) -> torch.Tensor:
    return w.view(w.shape[0], groups, -1).norm(dim=-1).sum(-1)
