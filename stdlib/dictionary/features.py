"""What a feature dashboard shows, computed: feature activations over a corpus as batches for the
shared top-examples machinery (stdlib/representations/examples.py), logit weights, a 2-D map of
decoder directions and one summary row per feature.

Conventions:
    activation   the dictionary's feature activation f (after its nonlinearity) on a token
    density      fraction of the corpus's tokens with f > 0
    logit weight W_dec[f] @ W_U: the decoder direction read by the unembedding directly (no final
                 norm), for dictionaries writing the residual stream (a crosscoder: its last block)
    map          the unit decoder directions projected on their first two principal components
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Sequence

import torch

from mechstudy.stdlib.dictionary.evaluate import Sites
from mechstudy.stdlib.dictionary.model import Dictionary

RESIDUAL = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")


def reader(sae: Dictionary, sites: Sites, features: torch.Tensor) -> Callable[[dict], torch.Tensor]:
    """captured acts -> [B, S, len(features)]: the features' activations (the read sites
    concatenated, as the dictionary was trained), for `top_examples.unit_batches`."""
    def read(acts: dict) -> torch.Tensor:
        x = torch.cat([acts[s].flatten(2).float().cpu() for s in sites.inputs], -1)
        with torch.no_grad():
            return sae.encode(x)[..., features]
    return read


def logit_weights(sae: Dictionary, unembed: torch.Tensor, features: torch.Tensor, k: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top values, top token ids, bottom values, bottom token ids), each [U, k], of W_dec[f] @ W_U
    (`unembed` [V, d]); a crosscoder's last block."""
    d = unembed.shape[1]
    dec = sae.W_dec.detach()[features][:, -d:].float()
    w = dec @ unembed.detach().float().T  # [U, V]
    k = min(k, w.shape[1])
    top, bot = w.topk(k, dim=-1), w.topk(k, dim=-1, largest=False)
    return top.values, top.indices, bot.values, bot.indices


def decoder_map(sae: Dictionary, features: torch.Tensor) -> torch.Tensor:
    """[U, 2]: the features' unit decoder directions on the first two principal components of all
    the dictionary's directions (signs fixed so each component's largest loading is positive)."""
    dirs = sae.directions().detach().double()
    centred = dirs - dirs.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    comp = v[:2]  # [2, d]
    flip = torch.sign(comp.gather(1, comp.abs().argmax(1, keepdim=True))).clamp(min=0) * 2 - 1
    comp = comp * flip
    return (centred[features] @ comp.T).float()


def purity(tokens: Sequence[str]) -> float:
    """Share of a feature's top examples whose activating token is its most common one (1: a single
    token feature; a crude legibility measure that needs no explainer).

    >>> purity([" the", " the", " a", " the"])
    0.75
    """
    if not tokens:
        return float("nan")
    return Counter(tokens).most_common(1)[0][1] / len(tokens)
