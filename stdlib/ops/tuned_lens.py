"""`tuned_lens` (internal): the translators of a tuned lens (Belrose et al., 2023), trained on a corpus.

One affine map per layer, h -> h W_l + b_l (W_l starts at the identity, b_l at zero; the last
layer's resid_post, which is the final stream, keeps the identity), trained so that
the layer's translated stream read through the model's own final norm and unembedding
(`Adapter.unembed`, native modules) predicts what the model finally predicts: the loss is
KL(model || lens) in nats, averaged over tokens and summed over layers (layers are independent
problems trained side by side). Minibatches of `batch` corpus tokens are drawn with `seed`; Adam,
learning rate `lr`, `steps` steps. Planned by `lens ... over CORPUS` (stdlib/ops/lens.py), one node
per (model, corpus, component, settings), so every lens statement over that corpus shares it.

Tensors: W [L, d, d], b [L, d]; data: the training KL per layer before and after.
"""

from __future__ import annotations

from typing import Any

import torch

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib.datasets import Prompts
from mechstudy.stdlib.models.batching import chunks, trimmed
from mechstudy.stdlib.models.sites import SITE_KINDS, Site

STREAM_KINDS = tuple(k for k, v in SITE_KINDS.items() if v.per_layer and v.stream)


def corpus_states(adapter: Any, prompts: Prompts, kind: str, max_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(states [L, T, d] of `kind` at every layer, final [T, d] the last layer's resid_post) at
    every real token of the prompts (float32, on the CPU)."""
    L = adapter.n_layers
    sites = [Site(l, kind) for l in range(L)]
    last = Site(L - 1, "resid_post")
    want = list(dict.fromkeys(sites + [last]))
    states, finals = [], []
    with torch.no_grad():
        for rows in chunks(prompts.n, max_rows):
            ids, mask = trimmed(prompts.ids, prompts.attention_mask, rows)
            acts = adapter.capture(ids, mask, want)
            real = mask.bool()
            states.append(torch.stack([acts[s][real].float().cpu() for s in sites]))
            finals.append(acts[last][real].float().cpu())
    return torch.cat(states, 1), torch.cat(finals)


def kl_per_layer(adapter: Any, translated: torch.Tensor, final_logp: torch.Tensor) -> torch.Tensor:
    """KL(model || lens) per layer [L], mean over tokens: translated [L, B, d], final_logp [B, V]."""
    lp = torch.log_softmax(adapter.unembed(translated).float(), -1)  # [L, B, V]
    return (final_logp.exp()[None] * (final_logp[None] - lp)).sum(-1).mean(-1)


def train(adapter: Any, states: torch.Tensor, final: torch.Tensor, steps: int, lr: float, batch: int,
          seed: int, fixed: torch.Tensor | None = None) -> dict[str, Any]:
    """Fit the translators (see the module docstring); returns W, b and the KL before and after.
    Layers where `fixed` [L] is True keep the identity (the last layer's resid_post is the final
    stream itself: its lens is exact, and Adam would otherwise drift on round-off gradients)."""
    L, T, d = states.shape
    keep = torch.zeros(L, dtype=torch.bool) if fixed is None else fixed
    dev = adapter.device
    W = torch.eye(d).repeat(L, 1, 1).to(dev).requires_grad_()
    b = torch.zeros(L, d, device=dev, requires_grad=True)
    opt = torch.optim.Adam([W, b], lr=lr)
    g = torch.Generator().manual_seed(seed)
    probe = torch.randperm(T, generator=torch.Generator().manual_seed(seed + 1))[: min(T, 2048)]

    def measure() -> list[float]:
        with torch.no_grad():
            x = states[:, probe].to(dev)
            target = torch.log_softmax(adapter.unembed(final[probe].to(dev)).float(), -1)
            return kl_per_layer(adapter, torch.baddbmm(b[:, None], x, W), target).tolist()

    before = measure()
    for _ in range(steps):
        idx = torch.randint(0, T, (min(batch, T),), generator=g)
        x = states[:, idx].to(dev)
        with torch.no_grad():
            target = torch.log_softmax(adapter.unembed(final[idx].to(dev)).float(), -1)
        loss = kl_per_layer(adapter, torch.baddbmm(b[:, None], x, W), target).sum()
        # Gradients for the translators only: the model's own parameters are never touched.
        gW, gb = torch.autograd.grad(loss, [W, b])
        gW[keep.to(dev)] = 0
        gb[keep.to(dev)] = 0
        opt.zero_grad()
        W.grad, b.grad = gW, gb
        opt.step()
    return {"W": W.detach().cpu(), "b": b.detach().cpu(), "kl_before": before, "kl_after": measure(), "tokens": T}


@spec.operator(
    "tuned_lens",
    version=1,
    params=[
        Param("model", spec.MODEL),
        Param("corpus", spec.CORPUS),
        Param("kind", str, "resid_post", choices=STREAM_KINDS, doc="the residual-stream site translated"),
        Param("steps", int, 300, doc="Adam steps"),
        Param("lr", float, 1e-3, doc="learning rate"),
        Param("batch", int, 256, doc="corpus tokens per step"),
        Param("seed", int, 0, doc="minibatch draws"),
    ],
    output="tensors",
    uses_model=True,
)
def run(inputs: dict[str, Artifact], params: dict, ctx: Any) -> Artifact:
    """Affine translators per layer trained with a KL objective on a corpus (a tuned lens)."""
    adapter = ctx.model(inputs["model"])
    prompts = Prompts.of(inputs["corpus"])
    states, final = corpus_states(adapter, prompts, params["kind"], ctx.max_rows)
    fixed = torch.zeros(adapter.n_layers, dtype=torch.bool)
    fixed[-1] = params["kind"] == "resid_post"
    with torch.enable_grad():
        fit = train(adapter, states, final, params["steps"], params["lr"], params["batch"], params["seed"], fixed)
    return Artifact(tensors={"W": fit["W"].contiguous(), "b": fit["b"].contiguous()},
                    data={"kind": params["kind"], "layers": adapter.n_layers, "tokens": fit["tokens"],
                          "kl_before": fit["kl_before"], "kl_after": fit["kl_after"],
                          "objective": "KL(model || lens) in nats, mean over tokens, summed over layers"})
