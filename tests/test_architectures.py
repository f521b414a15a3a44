"""GPT-NeoX (parallel and sequential), Llama (grouped-query attention) and BERT adapters on tiny
random models saved to disk: native logits with hooks inactive, every site in its place with its
shape, a head patch equal to a hand-written hook, and left padding equal to right padding.

Each check is against the native modules: the adapters must never compute what the model computes.
"""

from __future__ import annotations

import pytest
import torch

from mechstudy.stdlib.models.base import Edit, load_adapter
from mechstudy.stdlib.models.sites import LAYER_KINDS as KINDS, Site, arch_for
from tiny_models import D, H, L, build

DH = D // H
ARCHS = ("neox", "neox_seq", "llama", "mistral", "qwen2", "bert")


@pytest.fixture(scope="module", params=ARCHS)
def adapter(request, tmp_path_factory):
    return load_adapter(build(request.param, tmp_path_factory.mktemp(request.param)))


def _native(a):
    """Per-architecture native modules of layer l, for the hand-written references."""
    arch = a.table.arch
    if arch == "neox":
        def mods(l):
            b = a.model.gpt_neox.layers[l]
            return dict(out_proj=b.attention.dense, down=b.mlp.dense_4h_to_h, ln1=b.input_layernorm,
                        ln2=b.post_attention_layernorm, mlp=b.mlp)
    elif arch == "llama":
        def mods(l):
            b = a.model.model.layers[l]
            return dict(out_proj=b.self_attn.o_proj, down=b.mlp.down_proj, ln1=b.input_layernorm,
                        ln2=b.post_attention_layernorm, mlp=b.mlp)
    else:
        def mods(l):
            b = a.model.bert.encoder.layer[l]
            return dict(out_proj=b.attention.output.dense, down=b.output.dense, ln1=b.attention.output.LayerNorm,
                        ln2=b.output.LayerNorm, mlp=None, block=b)
    return mods


def _values(a, l: int, pre: torch.Tensor) -> torch.Tensor:
    """Value vectors of layer l per QUERY head, [B, S, H, d_head], from the native projections:
    under GQA query head h reads key/value head h // group."""
    arch = a.table.arch
    B, S, _ = pre.shape
    if arch == "neox":
        b = a.model.gpt_neox.layers[l]
        qkv = b.attention.query_key_value(b.input_layernorm(pre)).view(B, S, a.n_heads, 3 * a.d_head)
        return qkv[..., 2 * a.d_head:]
    if arch == "llama":
        b = a.model.model.layers[l]
        v = b.self_attn.v_proj(b.input_layernorm(pre)).view(B, S, a.n_kv_heads, a.d_head)
        return v.repeat_interleave((a.n_heads // a.n_kv_heads), dim=2)
    b = a.model.bert.encoder.layer[l]
    return b.attention.self.value(pre).view(B, S, a.n_heads, a.d_head)


def _batch(seed: int, lengths=(7, 5, 9, 4), vocab: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded random ids (ids >= 2: not the BOS/UNK specials) and their mask."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(2, vocab, (len(lengths), width), generator=g)
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids * mask, mask


def _plain(model, ids, mask, **kw):
    """The native model called as the adapter calls it. use_cache=False matters: with a KV cache
    HF's own logits differ in the last bits for some models (measured 3.6e-6 on the tiny Qwen2: the
    cached keys are laid out differently for the matmul), so "bit-identical" needs the same call."""
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, use_cache=False, **kw)


def test_tables_are_registered_by_model_type():
    assert {mt: arch_for(mt).arch for mt in ("gpt_neox", "llama", "mistral", "qwen2", "bert")} == {
        "gpt_neox": "neox", "llama": "llama", "mistral": "llama", "qwen2": "llama", "bert": "bert"}
    for mt in ("gpt_neox", "llama", "bert"):
        assert set(KINDS) <= set(arch_for(mt).points)
    assert {"q", "k", "v"} <= set(arch_for("llama").points) & set(arch_for("bert").points)


def test_no_hooks_means_native_logits(adapter):
    ids, mask = _batch(0)
    plain = _plain(adapter.model, ids, mask).logits  # the model rests in eager attention
    with adapter.attention(adapter.kernel):  # what a forward that touches no pattern runs (fused)
        fused = _plain(adapter.model, ids, mask).logits
    assert torch.equal(adapter.forward(ids, mask).logits, fused)
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=0)
    every = [Site(l, k) for l in range(L) for k in KINDS]
    out = adapter.forward(ids, mask, capture=every)  # patterns: eager attention
    assert torch.equal(out.logits, plain)  # reading never writes
    out = adapter.forward(ids, mask, capture=[s for s in every if s.kind != "pattern"])
    assert torch.equal(out.logits, fused)
    for m in adapter.model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_logits_at_positions(adapter):
    ids, mask = _batch(7)
    pos = mask.sum(1) - 1  # each row's last real token
    full = adapter.forward(ids, mask).logits
    torch.testing.assert_close(adapter.forward(ids, mask, logits_at=pos).logits, full[torch.arange(len(pos)), pos],
                               atol=1e-5, rtol=0)


def test_every_site_has_its_shape_and_meaning(adapter):
    a = adapter
    ids, mask = _batch(1)
    B, S = ids.shape
    sites = [Site(l, k) for l in range(L) for k in KINDS] + [Site(1, "z", head=3), Site(0, "pattern", head=2)]
    acts = a.forward(ids, mask, capture=sites).acts
    for s in sites:
        assert tuple(acts[s].shape) == a.shape(s, B, S), s
    # z is the output projection's input split into heads; the tiny Mistral sets head_dim 24, not 64 / 4.
    dh = getattr(a.model.config, "head_dim", None) or DH
    assert tuple(acts[Site(0, "z")].shape) == (B, S, H, dh) and _native(a)(0)["out_proj"].in_features == H * dh
    assert tuple(acts[Site(0, "mlp_post")].shape) == (B, S, 96)
    if a.table.arch == "llama":  # llama: 2 key/value heads, mistral: 1, qwen2: 4 (no GQA)
        assert a.n_kv_heads == a.model.config.num_key_value_heads and a.n_kv_heads * (a.n_heads // a.n_kv_heads) == H
    hf = _plain(a.model, ids, mask, output_hidden_states=True, output_attentions=True)
    mods = _native(a)
    with torch.no_grad():
        for l in range(L):
            m = mods(l)
            pre, mid, post, attn, mlp, z, pat, act = (acts[Site(l, k)] for k in (
                "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "z", "pattern", "mlp_post"))
            assert torch.equal(pre, hf.hidden_states[l])
            assert torch.equal(pat, hf.attentions[l])
            close = dict(atol=2e-5, rtol=1e-5)
            torch.testing.assert_close(m["out_proj"](z.flatten(-2)), attn, **close)
            torch.testing.assert_close(m["down"](act), mlp, **close)
            # z is each query head's pattern-weighted sum of its (shared, under GQA) value head.
            ref_z = torch.einsum("bhqk,bkhd->bqhd", pat, _values(a, l, pre))
            torch.testing.assert_close(z, ref_z, **close)
            if a.table.arch == "bert":  # post-LN: the stream between sub-blocks is a norm's output
                torch.testing.assert_close(mid, m["ln1"](pre + attn), **close)
                torch.testing.assert_close(post, m["ln2"](mid + mlp), **close)
                torch.testing.assert_close(act, m["block"].intermediate(mid), **close)
            else:
                torch.testing.assert_close(mid, pre + attn, atol=1e-6, rtol=0)
                torch.testing.assert_close(post, mid + mlp, atol=2e-6, rtol=0)
                # Parallel NeoX: the MLP reads resid_pre; sequential blocks: resid_mid.
                mlp_in = pre if getattr(a, "parallel", False) else mid
                torch.testing.assert_close(m["mlp"](m["ln2"](mlp_in)), mlp, **close)
    assert torch.equal(acts[Site(0, "resid_post")], acts[Site(1, "resid_pre")])
    assert torch.equal(acts[Site(1, "z", head=3)], acts[Site(1, "z")][:, :, 3])
    assert torch.equal(acts[Site(0, "pattern", head=2)], acts[Site(0, "pattern")][:, 2])
    early = a.capture(ids, mask, [Site(0, "resid_mid"), Site(0, "z"), Site(0, "pattern")])  # eager, as `acts`
    assert torch.equal(early[Site(0, "resid_mid")], acts[Site(0, "resid_mid")])
    assert torch.equal(early[Site(0, "z")], acts[Site(0, "z")])


def test_head_patch_equals_a_hand_written_hook(adapter):
    """z of layer 1 head 2 replaced by its value on another batch (for Llama: a query head whose
    key/value head it shares with head 3), against plain PyTorch hooks on the output projection."""
    a, l, h = adapter, 1, 2
    ids, mask = _batch(2)
    src, _ = _batch(3)
    out_proj = _native(a)(l)["out_proj"]
    cols = slice(h * a.d_head, (h + 1) * a.d_head)
    seen = {}
    hd = out_proj.register_forward_pre_hook(lambda mod, args: seen.update(z=args[0].clone()))
    try:
        _plain(a.model, src, mask)
    finally:
        hd.remove()

    def patch(mod, args):
        z = args[0].clone()
        z[..., cols] = seen["z"][..., cols]
        return (z,)

    hd = out_proj.register_forward_pre_hook(patch)
    try:
        ref = _plain(a.model, ids, mask).logits
    finally:
        hd.remove()
    z_src = a.capture(src, mask, [Site(l, "z", head=h)])[Site(l, "z", head=h)]
    got = a.forward(ids, mask, edits=[Edit(Site(l, "z", head=h), z_src)]).logits
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    assert (got - _plain(a.model, ids, mask).logits).abs().max() > 1e-2  # the patch did something


def _qkv_native(a, l: int, pre: torch.Tensor) -> dict[str, torch.Tensor]:
    """q, k, v of layer l straight from the native projections: q [B, S, heads, d_head], k and v
    [B, S, key/value heads, d_head] (NeoX: split from the fused per-head [q_h | k_h | v_h] output)."""
    B, S, _ = pre.shape
    if a.table.arch == "neox":
        b = a.model.gpt_neox.layers[l]
        qkv = b.attention.query_key_value(b.input_layernorm(pre)).view(B, S, a.n_heads, 3, a.d_head)
        return {k: qkv[..., i, :] for i, k in enumerate("qkv")}
    if a.table.arch == "llama":
        b = a.model.model.layers[l]
        x, mods = b.input_layernorm(pre), (b.self_attn.q_proj, b.self_attn.k_proj, b.self_attn.v_proj)
    else:
        s = a.model.bert.encoder.layer[l].attention.self
        x, mods = pre, (s.query, s.key, s.value)
    return {k: m(x).view(B, S, -1, a.d_head) for k, m in zip("qkv", mods)}


def _head_cols(a, kind: str, h: int) -> slice:
    """Columns of head h's `kind` in its native projection's output."""
    if a.table.arch == "neox":  # [q_0 | k_0 | v_0 | q_1 | ...]
        start = (3 * h + "qkv".index(kind)) * a.d_head
        return slice(start, start + a.d_head)
    return slice(h * a.d_head, (h + 1) * a.d_head)


def _proj(a, l: int, kind: str):
    if a.table.arch == "neox":
        return a.model.gpt_neox.layers[l].attention.query_key_value
    if a.table.arch == "llama":
        return getattr(a.model.model.layers[l].self_attn, f"{kind}_proj")
    return getattr(a.model.bert.encoder.layer[l].attention.self, {"q": "query", "k": "key", "v": "value"}[kind])


@pytest.mark.parametrize("kind", ["q", "k", "v"])
def test_qkv_sites_and_a_one_head_patch(adapter, kind):
    """q per query head; k and v per key/value head (fewer than query heads under GQA); NeoX's from
    its fused per-head projection. A one-head patch equals a plain hook on the native projection."""
    a, l = adapter, 1
    ids, mask = _batch(8)
    acts = a.forward(ids, mask, capture=[Site(l, k) for k in "qkv"] + [Site(l, "resid_pre")]).acts
    with torch.no_grad():
        ref = _qkv_native(a, l, acts[Site(l, "resid_pre")])
    for k in "qkv":
        assert tuple(acts[Site(l, k)].shape) == a.shape(Site(l, k), *ids.shape)
        torch.testing.assert_close(acts[Site(l, k)], ref[k], atol=1e-6, rtol=0)
    n_units = a.n_heads if kind == "q" else a.n_kv_heads
    assert acts[Site(l, kind)].shape[2] == n_units
    h = n_units - 1
    src, _ = _batch(9)
    value = a.capture(src, mask, [Site(l, kind, head=h)])[Site(l, kind, head=h)]
    got = a.forward(ids, mask, edits=[Edit(Site(l, kind, head=h), value)]).logits
    cols = _head_cols(a, kind, h)

    def patch(mod, args, out):
        out = out.clone()
        out[..., cols] = value
        return out

    hd = _proj(a, l, kind).register_forward_hook(patch)
    try:
        want = _plain(a.model, ids, mask).logits
    finally:
        hd.remove()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert (got - _plain(a.model, ids, mask).logits).abs().max() > 1e-3


def test_resid_mid_edits_reach_what_reads_it(adapter):
    a = adapter
    ids, mask = _batch(4)
    v = torch.randn(*ids.shape, D, generator=torch.Generator().manual_seed(5))
    sites = [Site(0, k) for k in ("resid_mid", "mlp_out", "resid_post", "mlp_post")]
    clean = a.forward(ids, mask, capture=sites).acts
    got = a.forward(ids, mask, capture=sites, edits=[Edit(Site(0, "resid_mid"), v)]).acts
    torch.testing.assert_close(got[Site(0, "resid_mid")], v, atol=1e-5, rtol=0)
    m = _native(a)(0)
    with torch.no_grad():
        if a.table.arch == "bert":  # written in place: both the MLP and LN_2's residual see it
            torch.testing.assert_close(got[Site(0, "mlp_post")], m["block"].intermediate(v), atol=1e-5, rtol=0)
            torch.testing.assert_close(got[Site(0, "resid_post")], m["ln2"](v + got[Site(0, "mlp_out")]),
                                       atol=1e-5, rtol=0)
            return
        torch.testing.assert_close(got[Site(0, "resid_post")], v + got[Site(0, "mlp_out")], atol=1e-5, rtol=0)
        if getattr(a, "parallel", False):  # nothing in a parallel block reads resid_mid
            assert torch.equal(got[Site(0, "mlp_out")], clean[Site(0, "mlp_out")])
        else:
            torch.testing.assert_close(got[Site(0, "mlp_out")], m["mlp"](m["ln2"](v)), atol=1e-5, rtol=0)


def _check_padding(a) -> None:
    lengths = (6, 9, 3)
    right, rmask = _batch(6, lengths)
    W = right.shape[1]
    left, lmask = torch.zeros_like(right), torch.zeros_like(rmask)
    for i, n in enumerate(lengths):
        left[i, W - n:], lmask[i, W - n:] = right[i, :n], 1
    sites = [Site(1, "resid_post"), Site(0, "z"), Site(1, "pattern"), Site(1, "resid_mid")]
    R = a.forward(right, rmask, capture=sites)
    Lf = a.forward(left, lmask, capture=sites)
    for i, n in enumerate(lengths):
        alone = a.forward(right[i:i + 1, :n], rmask[i:i + 1, :n], capture=sites)
        for out, p in ((R, slice(0, n)), (Lf, slice(W - n, W))):
            torch.testing.assert_close(out.logits[i, p], alone.logits[0], atol=1e-5, rtol=1e-5)
            for s in sites:
                got = out.acts[s][i, :, p, p] if s.kind == "pattern" else out.acts[s][i, p]
                torch.testing.assert_close(got, alone.acts[s][0], atol=1e-5, rtol=1e-5)


def test_left_and_right_padding_agree(adapter):
    """The same prompts right padded, left padded and alone: identical numbers at each prompt's
    real positions (positions count from the first real token, never from the pads)."""
    _check_padding(adapter)


def test_gpt2_left_and_right_padding_agree(tiny_adapter):
    _check_padding(tiny_adapter)


def test_describe_reads_the_config_only(tmp_path):
    from mechstudy.stdlib.models.sources import describe_dir

    d = build("llama", tmp_path / "llama")
    (d / "model.safetensors").unlink()  # describing never needs the weights
    info = describe_dir(d)
    assert (info.arch, info.n_layers, info.n_heads, info.d_model, info.n_ctx) == ("llama", L, H, D, 64)


def test_final_norm_scale_and_logits_sites(adapter):
    """The model-level sites: the final norm's output and scale, and the logits; the adapter's
    `unembed` (the logit lens) is the model's own last step."""
    from mechstudy.stdlib.models.base import is_layer_norm

    a = adapter
    ids, mask = _batch(3)
    if a.table.final_norm is None:  # BERT is post-LN: there is no final norm to read
        with pytest.raises(LookupError, match="no 'ln_final' site"):
            a.capture(ids, mask, [Site(None, "ln_final")])
        return
    last, fin, scale, logits = (Site(L - 1, "resid_post"), Site(None, "ln_final"), Site(None, "ln_final_scale"),
                                Site(None, "logits"))
    out = a.forward(ids, mask, capture=[last, fin, scale, logits])
    x = out.acts[last]
    assert torch.equal(out.acts[logits], out.logits)
    assert tuple(out.acts[scale].shape) == (*ids.shape, 1) == a.shape(scale, *ids.shape)
    norm = a.module(a.table.final_norm)
    with torch.no_grad():
        torch.testing.assert_close(out.acts[fin], norm(x), atol=1e-6, rtol=0)
        centred = x - x.mean(-1, keepdim=True) if is_layer_norm(norm) else x
        bias = norm.bias if getattr(norm, "bias", None) is not None else 0.0
        torch.testing.assert_close(centred / out.acts[scale] * norm.weight + bias, out.acts[fin], atol=1e-5, rtol=0)
        torch.testing.assert_close(a.unembed(x), out.logits, atol=1e-5, rtol=0)
    # Only the positions a forward unembeds are in the logits site.
    pos = mask.sum(1) - 1
    at = a.forward(ids, mask, capture=[logits], logits_at=pos)
    assert torch.equal(at.acts[logits][:, 0], at.logits)
