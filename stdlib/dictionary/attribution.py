"""Attribution graphs over transcoder features (the circuit tracer of Ameisen et al. 2025), computed
through hooks on the native modules.

The *local replacement model* of one prompt: every MLP's output is replaced by its transcoder's
reconstruction plus an error term (the MLP output minus the reconstruction, at that prompt, so
the forward is unchanged), the attention patterns (their queries and keys) and every norm's scale
are frozen at their values on the prompt. What remains is linear in its sources:

    sources   embeddings (resid_pre of layer 0, one node per position),
              active features (layer, position, feature): a_f * W_dec[f] written at mlp_out,
              error nodes (layer, position): the error term (a whole MLP output for a layer
              without a transcoder)
    targets   active features' pre-activations (what a transcoder's encoder reads:
              resid_mid @ W_enc + b_enc) and logits (logit minus the mean logit, at the last
              position, for the most likely tokens)

    edge(s -> t) = (write of s) . d t / d (site s writes at its position)

computed by a backward pass per target (several targets at once as rows of one batch). Frozen
queries and keys: each layer's q and k are replaced by their values on the prompt (no gradient
flows through a pattern); frozen norms: forward hooks on the norm modules recompute each norm
with its scale (sigma, or the root mean square) detached. Each target's value is the sum of its
incoming edges plus a constant (biases, seen through the frozen model): `Graph.bias`.

Pruning, as the circuit tracer: A = |adjacency| with each target's row normalised to sum 1, B =
(I - A)^-1 - I (influence along paths of every length), influence of a node = sum over logit
nodes of the logit's probability (renormalised over the kept logits) x B[logit, node]. Feature
nodes are kept in order of influence until `node_threshold` of the total is covered, then edges
(scored by normalised weight x the target's influence) until `edge_threshold`. Scores, computed
on the full graph and on the pruned one:
    replacement = influence of embeddings / (influence of embeddings + influence of errors)
    completeness = sum over nodes of (1 - share of the node's input from errors) x influence,
                   over the total influence (logits counting with their weights)
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch

from mechstudy.stdlib.dictionary.model import Dictionary
from mechstudy.stdlib.models.base import Edit, is_layer_norm, norm_scale
from mechstudy.stdlib.models.sites import Site

EMB, FEATURE, ERROR, LOGIT = "embedding", "feature", "error", "logit"


@dataclass
class Transcoder:
    """A transcoder of `layer` reading `read` (e.g. resid_mid) and writing `write` (mlp_out)."""

    layer: int
    dictionary: Dictionary
    read: str = "resid_mid"
    write: str = "mlp_out"


@dataclass
class Graph:
    """The attribution graph of one prompt.

    nodes: one dict per node (kind, layer, position, feature, token, value, activation); kinds in
    order embeddings, features, errors, logits. adjacency [N, N] float64: adjacency[t, s] is the
    edge s -> t. value [N]: each target's value (a feature's pre-activation, a logit minus the
    mean logit; the embedding/error nodes' own norm). bias [N]: value - sum of incoming edges.
    logit_probs [n_logits]: the probabilities of the logit nodes' tokens.
    """

    nodes: list[dict[str, Any]]
    adjacency: torch.Tensor
    value: torch.Tensor
    bias: torch.Tensor
    logit_probs: torch.Tensor
    tokens: list[int] = field(default_factory=list)

    def kinds(self, kind: str) -> torch.Tensor:
        return torch.tensor([n["kind"] == kind for n in self.nodes])


# ---- the frozen forward ------------------------------------------------------------------------


@contextmanager
def frozen_norms(adapter: Any) -> Iterator[None]:
    """While inside: every attention, MLP and final norm computes with its scale detached (the
    same values; no gradient through the scale)."""
    t = adapter.table
    mods = [adapter.module(t.attn_norm, l) for l in range(adapter.n_layers) if t.attn_norm]
    mods += [adapter.module(t.mlp_norm, l) for l in range(adapter.n_layers) if t.mlp_norm]
    mods += [adapter.module(t.final_norm)] if t.final_norm else []

    def hook(mod: torch.nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
        x = args[0] if args else kwargs["hidden_states"]
        s = norm_scale(mod, x).detach()
        y = ((x - x.mean(-1, keepdim=True)) if is_layer_norm(mod) else x) / s
        if getattr(mod, "weight", None) is not None:
            y = y * mod.weight
        if getattr(mod, "bias", None) is not None:
            y = y + mod.bias
        return y.to(out.dtype)

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in mods]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _logit_tokens(logits: torch.Tensor, max_logits: int, mass: float) -> tuple[list[int], torch.Tensor]:
    """The most likely tokens until their probability reaches `mass` (at most `max_logits`)."""
    p = torch.softmax(logits.double(), -1)
    top = p.topk(min(max_logits, p.numel()))
    keep = int((top.values.cumsum(0) < mass).sum()) + 1
    keep = min(keep, top.values.numel())
    return top.indices[:keep].tolist(), top.values[:keep]


def attribute(adapter: Any, ids: Sequence[int], transcoders: Sequence[Transcoder], *, max_logits: int = 5,
              logit_mass: float = 0.95, max_features: int = 2048, rows: int = 32,
              progress: Callable[[int, int, str], None] | None = None) -> Graph:
    """The attribution graph of one prompt `ids` (see the module docstring)."""
    dev = adapter.device
    x = torch.tensor([list(ids)], dtype=torch.long, device=dev)
    S, L = x.shape[1], adapter.n_layers
    by_layer = {t.layer: t for t in transcoders}
    if len(by_layer) != len(transcoders):
        raise ValueError("two transcoders for the same layer")
    for t in transcoders:
        if not 0 <= t.layer < L:
            raise ValueError(f"a transcoder of layer {t.layer}; the model has layers 0..{L - 1}")
    reads = {l: Site(l, t.read) for l, t in by_layer.items()}
    writes = {l: Site(l, by_layer[l].write if l in by_layer else "mlp_out") for l in range(L)}
    qk = [Site(l, k) for l in range(L) for k in ("q", "k")]
    emb_site = Site(0, "resid_pre")
    with torch.no_grad():
        clean = adapter.forward(x, None, capture=[emb_site, *reads.values(), *writes.values(), *qk],
                                logits_at=torch.tensor([S - 1]))
    dt = adapter.dtype
    acts = {s: a.detach() for s, a in clean.acts.items()}
    dicts = {l: Dictionary.of(t.dictionary.shape, t.dictionary.tensors()).to(dt) for l, t in by_layer.items()}
    emb = acts[emb_site][0]  # [S, d]
    # Features, reconstructions and errors of the prompt.
    feats, errors = {}, {}
    for l in range(L):
        out = acts[writes[l]][0]
        if l in by_layer:
            d = dicts[l]
            with torch.no_grad():
                a = d.encode(acts[reads[l]][0].flatten(1))
                errors[l] = out.flatten(1) - d.decode(a)
            feats[l] = a
        else:
            errors[l] = out.flatten(1)
    active = [(l, p, f, float(feats[l][p, f])) for l in sorted(feats) for p, f in feats[l].nonzero().tolist()]
    if len(active) > max_features:  # keep the strongest
        active = sorted(active, key=lambda r: -abs(r[3]))[:max_features]
        active.sort()
    tokens, probs = _logit_tokens(clean.logits[0], max_logits, logit_mass)
    tok_text = [adapter.tokenizer.decode([i]) for i in ids]
    nodes: list[dict[str, Any]] = []
    nodes += [{"kind": EMB, "layer": -1, "position": p, "feature": -1, "token": tok_text[p], "activation": None}
              for p in range(S)]
    f0 = len(nodes)
    nodes += [{"kind": FEATURE, "layer": l, "position": p, "feature": f, "token": tok_text[p], "activation": a}
              for l, p, f, a in active]
    e0 = len(nodes)
    err_layers = list(range(L))
    nodes += [{"kind": ERROR, "layer": l, "position": p, "feature": -1, "token": tok_text[p], "activation": None}
              for l in err_layers for p in range(S)]
    g0 = len(nodes)
    nodes += [{"kind": LOGIT, "layer": L, "position": S - 1, "feature": t, "token": adapter.tokenizer.decode([t]),
               "activation": float(pr)} for t, pr in zip(tokens, probs.tolist())]
    N = len(nodes)
    A = torch.zeros(N, N, dtype=torch.float64)
    value = torch.zeros(N, dtype=torch.float64)
    value[:f0] = emb.double().norm(dim=-1)
    for i, l in enumerate(err_layers):
        value[e0 + i * S: e0 + (i + 1) * S] = errors[l].double().norm(dim=-1)
    # Column index of each source.
    feat_col = {(l, p, f): f0 + i for i, (l, p, f, _) in enumerate(active)}
    feat_by_layer: dict[int, tuple[torch.Tensor, ...]] = {}
    for l in sorted({l for l, _, _, _ in active}):
        rows_l = [(p, f, c, a) for (ll, p, f), c, (_, _, _, a) in zip(feat_col, feat_col.values(), active) if ll == l]
        p_, f_, c_, a_ = zip(*rows_l)
        feat_by_layer[l] = (torch.tensor(p_), torch.tensor(f_), torch.tensor(c_), torch.tensor(a_, dtype=torch.float64))
    targets = [(f0 + i, FEATURE, l, p, f) for i, (l, p, f, _) in enumerate(active)]
    targets += [(g0 + i, LOGIT, L, S - 1, t) for i, t in enumerate(tokens)]
    qk_edits = [Edit(s, acts_full) for s, acts_full in ((s, clean.acts[s]) for s in qk)]
    blocks = [targets[i:i + rows] for i in range(0, len(targets), rows)]
    with adapter._lock, frozen_norms(adapter):
        for bi, block in enumerate(blocks):
            B = len(block)
            E = emb[None].expand(B, S, -1).clone().requires_grad_()
            R = {l: acts[writes[l]].expand(B, *acts[writes[l]].shape[1:]).clone().requires_grad_() for l in range(L)}
            edits = [Edit(emb_site, E), *[Edit(writes[l], R[l]) for l in range(L)], *qk_edits]
            out = adapter.forward(x.expand(B, S), None, capture=list(reads.values()), edits=edits,
                                  logits_at=torch.full((B,), S - 1), grad=True)
            vals = []
            for r, (row, kind, l, p, f) in enumerate(block):
                if kind == FEATURE:
                    pre = dicts[l].pre(out.acts[reads[l]][r, p].flatten()[None])[0, f]
                else:
                    lg = out.logits[r]
                    pre = lg[f] - lg.mean()
                vals.append(pre)
            v = torch.stack(vals)
            grads = torch.autograd.grad(v.sum(), [E, *[R[l] for l in range(L)]], allow_unused=True)
            gE, gR = grads[0], dict(zip(range(L), grads[1:]))
            for r, (row, kind, l, p, f) in enumerate(block):
                value[row] = float(v[r].detach())
                A[row, :f0] = (gE[r].double() * emb.double()).sum(-1)
                for ll in range(L):
                    g = gR[ll]
                    if g is None:
                        continue
                    g = g[r].flatten(1).double()  # [S, d]
                    A[row, e0 + ll * S: e0 + (ll + 1) * S] = (g * errors[ll].double()).sum(-1)
                    if ll in feat_by_layer:
                        ps, fs, cs, avals = feat_by_layer[ll]
                        dec = dicts[ll].W_dec.detach().double()
                        A[row, cs] = avals * (g[ps] * dec[fs]).sum(-1)
            if progress is not None:
                progress(bi + 1, len(blocks), "targets")
    bias = value - A.sum(1)
    bias[:f0] = 0.0
    bias[e0:g0] = 0.0
    return Graph(nodes, A, value, bias, probs.double(), list(ids))


# ---- influence and pruning ---------------------------------------------------------------------


def normalized(adjacency: torch.Tensor) -> torch.Tensor:
    """|A| with each row divided by its sum (rows without inputs stay 0)."""
    a = adjacency.abs()
    s = a.sum(1, keepdim=True)
    return torch.where(s > 0, a / s.clamp_min(1e-300), torch.zeros_like(a))


def influence(norm_adj: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """w^T B with B = (I - A)^-1 - I: each node's total influence on the weighted targets, [N]."""
    N = norm_adj.shape[0]
    eye = torch.eye(N, dtype=norm_adj.dtype)
    # w^T (I - A)^-1 solves (I - A)^T y = w; subtract w for the "- I".
    y = torch.linalg.solve((eye - norm_adj).T, weights)
    return y - weights


def logit_weights(g: Graph, keep: torch.Tensor | None = None) -> torch.Tensor:
    w = torch.zeros(len(g.nodes), dtype=torch.float64)
    idx = g.kinds(LOGIT).nonzero().flatten()
    w[idx] = g.logit_probs / g.logit_probs.sum()
    if keep is not None:
        w = w * keep
    return w


def scores(adjacency: torch.Tensor, g: Graph) -> dict[str, float]:
    """Replacement and completeness scores of a graph (see the module docstring)."""
    A = normalized(adjacency)
    w = logit_weights(g)
    inf = influence(A, w)
    emb, err = g.kinds(EMB), g.kinds(ERROR)
    tok, er = float(inf[emb].sum()), float(inf[err].sum())
    non_error = 1 - A[:, err].sum(1)
    out_inf = inf + w
    return {"replacement": tok / (tok + er) if tok + er > 0 else float("nan"),
            "completeness": float((non_error * out_inf).sum() / out_inf.sum())}


def prune(g: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept nodes [N] bool, kept edges [N, N] bool) by the circuit tracer's rules."""
    A = normalized(g.adjacency)
    w = logit_weights(g)
    inf = influence(A, w)
    feat = g.kinds(FEATURE)
    keep = ~feat
    fi = inf.clone()
    fi[~feat] = -1
    order = fi.argsort(descending=True)
    total = float(inf[feat].sum())
    acc = 0.0
    for i in order.tolist():
        if not bool(feat[i]) or total <= 0 or acc >= node_threshold * total:
            break
        keep[i] = True
        acc += float(inf[i])
    masked = g.adjacency * keep[:, None] * keep[None, :]
    A2 = normalized(masked)
    inf2 = influence(A2, w) + w
    score = A2 * inf2[:, None]
    flat = score.flatten()
    tot = float(flat.sum())
    edges = torch.zeros_like(flat, dtype=torch.bool)
    if tot > 0:
        srt = flat.argsort(descending=True)
        cum = flat[srt].cumsum(0)
        n = int((cum < edge_threshold * tot).sum()) + 1
        edges[srt[:n]] = True
    edges = edges.view_as(score) & (masked != 0)
    # Nodes left without an edge (other than logits and the prompt's tokens) are dropped.
    used = edges.any(0) | edges.any(1)
    keep = keep & (used | g.kinds(LOGIT))
    return keep, edges & keep[:, None] & keep[None, :]
