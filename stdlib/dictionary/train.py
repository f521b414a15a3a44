"""Training a dictionary in resumable segments: `State` in, `State` out, numbers independent of
where the segments are cut.

A segment runs steps [start, stop) from a state (weights, Adam moments, steps since each feature
last fired, the batchtopk threshold, the normalisation scales) and returns the new state. Batch
number `step` of the activation store's shuffled stream is the step's batch, every random draw
is seeded by (seed, purpose, step), and the whole state round-trips through safetensors
exactly, so segments [0, 500) + [500, 1000) give the same weights as one segment [0, 1000).

Loss per step (activations normalised so that E||x|| = sqrt(width) when `normalize`):
    mse = mean_batch ||y^ - y||^2
    relu:     + l1_t * mean_batch sum_f f * ||d_f||     (decoder_norm "penalty"; plain L1 with "unit")
    jumprelu: + l0_t * mean_batch sum_f [pre_f > theta_f]  (straight-through gradient for theta)
    topk, batchtopk: no sparsity term (k sets it)
    dead = "aux": + aux_coef * ||e - e^||^2 / ||e - mean e||^2, e^ decoded from the aux_k largest
        pre-activations of dead features (AuxK, Gao et al. 2024); "resample": every dead_steps steps,
        dead features are re-initialised towards inputs the dictionary reconstructs worst
        (Bricken et al. 2023), their Adam moments reset.
The learning rate warms up linearly over `warmup` steps, the sparsity coefficient over `l1_warmup`
steps, then both stay constant (no schedule depends on the total number of steps: a longer run
continues a shorter one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from mechstudy.stdlib.activations.stream import ActivationStore, generator
from mechstudy.stdlib.dictionary.model import THRESHOLD_INIT, Dictionary, Shape

STEPS_RUN = [0]  # optimiser steps taken in this process (tests count them: resume computes only the extra)
HISTORY = ("step", "loss", "mse", "fvu", "l0", "sparsity", "aux", "dead_fraction", "lr")
_ADAM = ("exp_avg", "exp_avg_sq")


@dataclass(frozen=True)
class Hyper:
    arch: str = "topk"
    width: int = 0
    k: int = 32
    l1: float = 5.0
    l0: float = 0.01
    lr: float = 1e-3
    warmup: int = 50
    l1_warmup: int = 100
    batch: int = 4096
    seed: int = 0
    decoder_norm: str = "unit"  # "unit" | "penalty"
    dead: str = "aux"  # "aux" | "resample" | "none"
    dead_steps: int = 100
    aux_k: int = 0
    aux_coef: float = 1 / 32
    bandwidth: float = 0.001
    normalize: bool = True
    window: int = 4
    log_every: int = 10

    @classmethod
    def of(cls, params: Mapping[str, Any]) -> "Hyper":
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in params.items() if k in names and v is not None})


@dataclass
class Layout:
    """Which store columns are the input and which the target: an SAE reads and writes column 0,
    a transcoder reads 0 and writes 1, a crosscoder reads and writes all (concatenated)."""

    kind: str  # "sae" | "transcoder" | "crosscoder"

    def split(self, xs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind == "transcoder":
            return xs[0], xs[1]
        x = xs[0] if len(xs) == 1 else torch.cat(xs, -1)
        return x, x

    def groups(self, n_columns: int) -> int:
        return n_columns if self.kind == "crosscoder" else 1


@dataclass
class State:
    sae: Dictionary
    step: int
    adam: dict[str, dict[str, torch.Tensor]]
    since_fired: torch.Tensor  # [F] steps since each feature last fired
    c_in: torch.Tensor  # [d_in] normalisation factor of each input coordinate
    c_out: torch.Tensor  # [d_out]
    history: list[dict[str, float]] = field(default_factory=list)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = self.sae.tensors("sae.")
        for name, st in self.adam.items():
            for k, v in st.items():
                out[f"adam.{name}.{k}"] = v.detach().clone()
        out.update(since_fired=self.since_fired.clone(), c_in=self.c_in.clone(), c_out=self.c_out.clone(),
                   step=torch.tensor(self.step, dtype=torch.int64))
        return out

    @classmethod
    def of(cls, shape: Shape, tensors: Mapping[str, torch.Tensor], history: list[dict] | None = None) -> "State":
        sae = Dictionary.of(shape, tensors, prefix="sae.")
        adam: dict[str, dict[str, torch.Tensor]] = {}
        for key, v in tensors.items():
            if key.startswith("adam."):
                _, name, what = key.split(".", 2)
                adam.setdefault(name, {})[what] = torch.as_tensor(v).clone()
        return cls(sae, int(tensors["step"]), adam, torch.as_tensor(tensors["since_fired"]).clone(),
                   torch.as_tensor(tensors["c_in"]).float(), torch.as_tensor(tensors["c_out"]).float(),
                   list(history or []))

    def raw(self) -> Dictionary:
        """The dictionary on raw (unnormalised) activations."""
        return self.sae.scaled(self.c_in, self.c_out)


def _scales(x: torch.Tensor, groups: int, normalize: bool) -> torch.Tensor:
    """Per-coordinate factors making E||x_g|| = sqrt(d_g) in each group (1 without `normalize`)."""
    d = x.shape[1] // groups
    if not normalize:
        return torch.ones(x.shape[1])
    norms = x.view(x.shape[0], groups, d).norm(dim=-1).mean(0).clamp_min(1e-8)  # [groups]
    return (math.sqrt(d) / norms).repeat_interleave(d)


def init_state(store: ActivationStore, layout: Layout, hp: Hyper, sample_tokens: int = 16384) -> State:
    """A fresh dictionary: tied init (decoder rows random, encoder = decoder^T), b_dec at the
    targets' mean, normalisation scales from a shuffled sample of the store."""
    x, y = layout.split(store.sample(sample_tokens, hp.seed, hp.window))
    groups = layout.groups(len(store.widths))
    c_in = _scales(x, groups, hp.normalize)
    c_out = c_in if layout.kind != "transcoder" else _scales(y, 1, hp.normalize)
    d_in, d_out = x.shape[1], y.shape[1]
    width = hp.width or 8 * d_in
    shape = Shape(hp.arch, d_in, d_out, width, k=hp.k, groups=groups, pre_bias=layout.kind != "transcoder",
                  bandwidth=hp.bandwidth)
    sae = Dictionary(shape, generator(hp.seed, "init"))
    with torch.no_grad():
        if hp.decoder_norm == "unit":
            sae.W_dec.div_(sae.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12))
            if d_in == d_out:
                sae.W_enc.copy_(sae.W_dec.T)
        sae.b_dec.copy_((y * c_out).mean(0))
    return State(sae, 0, {}, torch.zeros(width, dtype=torch.int64), c_in, c_out)


def _optimizer(state: State, lr: float) -> torch.optim.Adam:
    params = dict(state.sae.named_parameters())
    opt = torch.optim.Adam(list(params.values()), lr=lr, betas=(0.9, 0.999))
    for name, p in params.items():
        st = state.adam.get(name)
        if st:
            opt.state[p] = {"step": st["step"].clone().float(), **{k: st[k].clone() for k in _ADAM}}
    return opt


def _save_optimizer(state: State, opt: torch.optim.Adam) -> None:
    for name, p in state.sae.named_parameters():
        st = opt.state.get(p)
        if st:
            state.adam[name] = {"step": torch.as_tensor(st["step"]).clone().float(),
                                **{k: st[k].detach().clone() for k in _ADAM}}


def _aux_loss(sae: Dictionary, z: torch.Tensor, err: torch.Tensor, dead: torch.Tensor, k_aux: int) -> torch.Tensor:
    """AuxK: the error reconstructed from the k_aux largest pre-activations of dead features."""
    masked = torch.where(dead[None, :], z, torch.full_like(z, -torch.inf))
    v, i = masked.topk(min(k_aux, int(dead.sum())), dim=-1)
    f = torch.zeros_like(z).scatter(-1, i, torch.relu(v))
    e_hat = f @ sae.W_dec
    denom = (err - err.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-8)
    return (e_hat - err).pow(2).sum(-1).mean() / denom


@torch.no_grad()
def _resample(state: State, opt: torch.optim.Adam, x: torch.Tensor, y: torch.Tensor, dead: torch.Tensor,
              gen: torch.Generator) -> int:
    """Re-initialise dead features towards the inputs reconstructed worst (probability ~ loss^2)."""
    sae = state.sae
    idx = dead.nonzero().flatten()
    if idx.numel() == 0:
        return 0
    err = y - sae(x)
    loss = err.pow(2).sum(-1)
    pick = torch.multinomial(loss.pow(2) + 1e-12, idx.numel(), replacement=True, generator=gen)
    dirs = err[pick]
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    alive = ~dead
    enc_norm = sae.W_enc[:, alive].norm(dim=0).mean() if alive.any() else torch.tensor(1.0)
    xin = x[pick] - (sae.b_dec if sae.shape.pre_bias else 0)
    xin = xin / xin.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    sae.W_dec[idx] = dirs * (sae.W_dec[alive].norm(dim=-1).mean() if alive.any() else 1.0)
    sae.W_enc[:, idx] = (xin * enc_norm * 0.2).T
    sae.b_enc[idx] = 0.0
    if sae.shape.arch == "jumprelu":
        sae.log_threshold[idx] = math.log(THRESHOLD_INIT)
    for name, p in sae.named_parameters():
        st = opt.state.get(p)
        if not st:
            continue
        for k in _ADAM:
            if name == "W_enc":
                st[k][:, idx] = 0.0
            elif name in ("W_dec", "b_enc", "log_threshold"):
                st[k][idx] = 0.0
    state.since_fired[idx] = 0
    return int(idx.numel())


def train_segment(state: State, store: ActivationStore, layout: Layout, hp: Hyper, stop: int,
                  progress: Callable[[int, int, str], None] | None = None) -> State:
    """Run steps [state.step, stop) in place and return the state."""
    sae = state.sae
    start = state.step
    if stop <= start:
        return state
    opt = _optimizer(state, hp.lr)
    k_aux = hp.aux_k or max(1, sae.shape.d_in // 2)
    acc: dict[str, float] = {}
    n_acc = 0
    stream = store.batches(hp.batch, hp.seed, start=start, window=hp.window)
    for step in range(start, stop):
        x, y = layout.split(next(stream))
        x, y = x * state.c_in, y * state.c_out
        lr = hp.lr * min(1.0, (step + 1) / max(1, hp.warmup))
        coef = min(1.0, (step + 1) / max(1, hp.l1_warmup))
        for g in opt.param_groups:
            g["lr"] = lr
        z = sae.pre(x)
        f = sae.activate(z, train=True)
        y_hat = sae.decode(f)
        err = y - y_hat
        mse = err.pow(2).sum(-1).mean()
        if hp.arch == "relu":
            w = sae.decoder_norms() if hp.decoder_norm == "penalty" else 1.0
            sparsity = hp.l1 * coef * (f * w).sum(-1).mean()
        elif hp.arch == "jumprelu":
            from mechstudy.stdlib.dictionary.model import _Step

            sparsity = hp.l0 * coef * _Step.apply(z, sae.log_threshold.exp(), sae.shape.bandwidth).sum(-1).mean()
        else:
            sparsity = torch.zeros(())
        dead = state.since_fired >= hp.dead_steps
        aux = torch.zeros(())
        if hp.dead == "aux" and bool(dead.any()):
            aux = hp.aux_coef * _aux_loss(sae, z, err.detach(), dead, k_aux)
        loss = mse + sparsity + aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if hp.decoder_norm == "unit" and sae.W_dec.grad is not None:
            with torch.no_grad():  # keep only the gradient that changes directions, not norms
                u = sae.W_dec / sae.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                sae.W_dec.grad -= (sae.W_dec.grad * u).sum(-1, keepdim=True) * u
        opt.step()
        STEPS_RUN[0] += 1
        with torch.no_grad():
            if hp.decoder_norm == "unit":
                sae.W_dec.div_(sae.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12))
            fired = (f > 0).any(0)
            state.since_fired = torch.where(fired, torch.zeros_like(state.since_fired), state.since_fired + 1)
            if hp.arch == "batchtopk":
                pos = f[f > 0]
                if pos.numel():
                    t = pos.min()
                    sae.threshold.copy_(t if float(sae.threshold) <= 0 else 0.99 * sae.threshold + 0.01 * t)
            fvu = err.pow(2).sum() / (y - y.mean(0)).pow(2).sum().clamp_min(1e-12)
            l0 = (f > 0).float().sum(-1).mean()
        state.step = step + 1
        if hp.dead == "resample" and state.step % hp.dead_steps == 0 and bool(dead.any()):
            _resample(state, opt, x, y, state.since_fired >= hp.dead_steps, generator(hp.seed, "resample", step))
        vals = {"loss": float(loss.detach()), "mse": float(mse.detach()), "fvu": float(fvu), "l0": float(l0),
                "sparsity": float(sparsity.detach()), "aux": float(aux.detach())}
        for k2, v in vals.items():
            acc[k2] = acc.get(k2, 0.0) + v
        n_acc += 1
        if state.step % hp.log_every == 0 or state.step == stop:
            row = {"step": state.step, **{k2: v / n_acc for k2, v in acc.items()},
                   "dead_fraction": float((state.since_fired >= hp.dead_steps).float().mean()), "lr": lr}
            state.history.append(row)
            acc, n_acc = {}, 0
            if progress is not None:
                progress(state.step - start, stop - start, f"step {state.step}, fvu {row['fvu']:.3f}, L0 {row['l0']:.1f}")
    _save_optimizer(state, opt)
    return state
