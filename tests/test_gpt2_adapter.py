"""The GPT-2 adapter: native HF numbers, every site in the right place, edits, model sources."""

from __future__ import annotations

import copy

import pytest
import torch

import mechstudy.stdlib.models.sources  # noqa: F401  (registers the hf and zoo model sources)
from mechstudy.stdlib.models.base import Edit, load_adapter
from mechstudy.stdlib.models.sites import LAYER_KINDS as KINDS, Site


@pytest.fixture(scope="module")
def batch(tiny_adapter):
    from mechstudy.stdlib.datasets.ioi import generate

    ds = generate(tiny_adapter.tokenizer, n=5, seed=3)
    return ds.tensors["clean_ids"], ds.tensors["attention_mask"], ds.tensors["answer_pos"]


def test_no_hooks_means_native_logits(tiny_adapter, batch):
    ids, mask, _ = batch
    model = tiny_adapter.model
    # The adapter runs HF's fused attention unless a pattern is read or written, eager otherwise.
    with torch.no_grad(), tiny_adapter.attention(tiny_adapter.kernel):
        plain = model(input_ids=ids, attention_mask=mask).logits
    with torch.no_grad(), tiny_adapter.attention("eager"):
        plain_eager = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(tiny_adapter.forward(ids, mask).logits, plain)
    torch.testing.assert_close(plain, plain_eager, atol=1e-5, rtol=0)  # the two kernels agree
    # Capturing every site reads, never writes: still bit-identical, and the hooks are gone after.
    out = tiny_adapter.forward(ids, mask, capture=[Site(l, k) for l in range(2) for k in KINDS if k != "pattern"])
    assert torch.equal(out.logits, plain)
    out = tiny_adapter.forward(ids, mask, capture=[Site(l, k) for l in range(2) for k in KINDS])  # eager
    assert torch.equal(out.logits, plain_eager)
    for m in model.modules():
        # transformers installs its own output-recording hooks once any caller asks it for
        # attentions or hidden states; only hooks of ours must be gone.
        ours = [h for h in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())
                if not getattr(h, "__module__", "").startswith("transformers")]
        assert ours == []
    assert torch.equal(tiny_adapter.forward(ids, mask).logits, plain)


def test_every_site_has_its_shape_and_meaning(tiny_adapter, batch):
    ids, mask, _ = batch
    a, (b, s) = tiny_adapter, ids.shape
    sites = [Site(l, k) for l in range(a.n_layers) for k in KINDS] + [Site(1, "z", head=2), Site(0, "pattern", head=1)]
    acts = a.forward(ids, mask, capture=sites).acts
    for site in sites:
        assert tuple(acts[site].shape) == a.shape(site, b, s), site
    assert tuple(acts[Site(0, "z")].shape) == (b, s, 4, 16)
    with torch.no_grad():
        hf = a.model(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    for l in range(a.n_layers):
        blk = a.model.transformer.h[l]
        pre, mid, post = (acts[Site(l, k)] for k in ("resid_pre", "resid_mid", "resid_post"))
        # HF's own hidden states are the residual stream before each block.
        assert torch.equal(pre, hf.hidden_states[l])
        assert torch.equal(acts[Site(l, "pattern")], hf.attentions[l])
        torch.testing.assert_close(mid, pre + acts[Site(l, "attn_out")], atol=1e-6, rtol=0)
        torch.testing.assert_close(post, mid + acts[Site(l, "mlp_out")], atol=1e-6, rtol=0)
        with torch.no_grad():  # z through the output projection is attn_out; mlp_post through c_proj is mlp_out
            torch.testing.assert_close(blk.attn.c_proj(acts[Site(l, "z")].flatten(-2)), acts[Site(l, "attn_out")])
            torch.testing.assert_close(blk.mlp.c_proj(acts[Site(l, "mlp_post")]), acts[Site(l, "mlp_out")])
    assert torch.equal(acts[Site(0, "resid_post")], acts[Site(1, "resid_pre")])
    assert torch.equal(acts[Site(1, "z", head=2)], acts[Site(1, "z")][:, :, 2])
    assert torch.equal(acts[Site(0, "pattern", head=1)], acts[Site(0, "pattern")][:, 1])
    # Early stop: capturing layer 0 alone gives the same numbers without running the rest.
    # (With the pattern read too, so both runs use eager attention.)
    early = a.capture(ids, mask, [Site(0, "z"), Site(0, "pattern")])
    assert torch.equal(early[Site(0, "z")], acts[Site(0, "z")])


def test_site_names_round_trip():
    for k in KINDS:
        assert Site.parse(Site(3, k).name) == Site(3, k)
    assert Site.parse("blocks.1.attn.hook_z[2]") == Site(1, "z", head=2)
    with pytest.raises(ValueError):
        Site(0, "resid_pre", head=1)


def test_logits_at_answer_positions(tiny_adapter, batch):
    ids, mask, pos = batch
    full = tiny_adapter.forward(ids, mask).logits
    at = tiny_adapter.forward(ids, mask, logits_at=pos).logits
    torch.testing.assert_close(at, full[torch.arange(len(pos)), pos], atol=1e-5, rtol=0)
    two = tiny_adapter.forward(ids, mask, logits_at=torch.stack([pos, pos - 1], 1)).logits
    torch.testing.assert_close(two[:, 1], full[torch.arange(len(pos)), pos - 1], atol=1e-5, rtol=0)
    # The fallback for transformers without per-row logits_to_keep: full logits, then gathered.
    old = copy.copy(tiny_adapter)
    old._native_keep = False
    assert torch.equal(old.forward(ids, mask, logits_at=pos).logits, full[torch.arange(len(pos)), pos])


def test_edits_touch_only_their_region(tiny_adapter, batch):
    ids, mask, pos = batch
    a = tiny_adapter
    z0 = a.forward(ids, mask, capture=[Site(1, "z")]).acts[Site(1, "z")]
    # Zero head 2 of layer 1 in rows 1 and 3 at positions 0 and 4 only.
    e = Edit(Site(1, "z", head=2), 0.0, rows=[1, 3], positions=[4, 0, 99])
    z1 = a.forward(ids, mask, capture=[Site(1, "z")], edits=[e]).acts[Site(1, "z")]
    want = z0.clone()
    for r in (1, 3):
        for p in (0, 4):
            want[r, p, 2] = 0
    assert torch.equal(z1, want)
    # Per-row positions and a heads subset on the whole site; add mode.
    e = Edit(Site(1, "z"), 1.5, mode="add", row_positions=pos, heads=[0, 3])
    z2 = a.forward(ids, mask, capture=[Site(1, "z")], edits=[e]).acts[Site(1, "z")]
    want = z0.clone()
    for r in range(len(pos)):
        want[r, pos[r], [0, 3]] += 1.5
    assert torch.equal(z2, want)


def test_edit_matches_a_hand_written_hook(tiny_adapter, batch):
    ids, mask, _ = batch
    a = tiny_adapter
    value = torch.randn(ids.shape[0], ids.shape[1], 64, generator=torch.Generator().manual_seed(0))
    got = a.forward(ids, mask, edits=[Edit(Site(0, "mlp_out"), value, rows=[0, 2])]).logits

    def hook(module, args, out):
        out = out.clone()
        out[[0, 2]] = value[[0, 2]]
        return out

    h = a.model.transformer.h[0].mlp.register_forward_hook(hook)
    try:
        with torch.no_grad(), a.attention(a.kernel):
            ref = a.model(input_ids=ids, attention_mask=mask).logits
    finally:
        h.remove()
    assert torch.equal(got, ref)


def test_resid_mid_is_written_through_attn_out(tiny_adapter, batch):
    ids, mask, _ = batch
    a = tiny_adapter
    value = torch.randn(ids.shape[0], ids.shape[1], 64, generator=torch.Generator().manual_seed(1))
    out = a.forward(ids, mask, capture=[Site(1, "resid_mid"), Site(1, "resid_post"), Site(1, "mlp_out")],
                    edits=[Edit(Site(1, "resid_mid"), value)])
    torch.testing.assert_close(out.acts[Site(1, "resid_mid")], value, atol=1e-6, rtol=0)
    # The residual branch carried the edit too, not only the layer norm's input.
    torch.testing.assert_close(out.acts[Site(1, "resid_post")], value + out.acts[Site(1, "mlp_out")], atol=1e-6, rtol=0)
    with pytest.raises(ValueError):
        a.forward(ids, mask, edits=[Edit(Site(0, "pattern"), 0.0)])


def test_model_sources(tiny_gpt2_dir, monkeypatch, tmp_path):
    from mechstudy.engine import spec

    hf, zoo = spec.MODEL_SOURCES["hf"], spec.MODEL_SOURCES["zoo"]
    info = hf.describe(str(tiny_gpt2_dir), {"dtype": "float32"})
    assert (info.arch, info.n_layers, info.n_heads, info.d_model) == ("gpt2", 2, 4, 64)
    assert hf.locate(str(tiny_gpt2_dir), {}) == str(tiny_gpt2_dir.resolve())
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache: nothing to find, nothing fetched
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LookupError, match="huggingface-cli download gpt2"):
        hf.describe("gpt2", {})
    with pytest.raises(LookupError, match="available"):
        zoo.describe("no-such-model", {})
    for name in zoo.names():  # whatever the zoo holds today: gpt2 ones describe, others say why not
        try:
            assert zoo.describe(name, {}).n_layers >= 1
        except LookupError as err:
            assert "no adapter for model_type" in str(err)
    assert [p.choices for p in hf.options] == [("float32", "float16", "bfloat16")]
    from mechstudy.stdlib.models import sources

    (tmp_path / "zoo" / "tiny").mkdir(parents=True)
    (tmp_path / "zoo" / "tiny" / "config.json").write_bytes((tiny_gpt2_dir / "config.json").read_bytes())
    (tmp_path / "zoo" / "half-built").mkdir()  # no config.json: not listed
    monkeypatch.setattr(sources, "ZOO_DIR", tmp_path / "zoo")
    assert zoo.names() == ["tiny"] and zoo.describe("tiny", {}).n_layers == 2
    with pytest.raises(LookupError, match="did you mean 'tiny'"):
        zoo.locate("tinny", {})
    m = spec.MODEL_SOURCES["hf"].load({"path": str(tiny_gpt2_dir), "options": {"dtype": "bfloat16"}}, "cpu")
    assert m.dtype == torch.bfloat16 and m.model.config._attn_implementation == "eager" and not m.model.training


def test_unknown_architecture_is_a_lookup_error(tmp_path):
    from mechstudy.stdlib.models.sources import describe_dir

    (tmp_path / "config.json").write_text('{"model_type": "mamba"}')
    with pytest.raises(LookupError, match="no adapter for model_type 'mamba'"):
        describe_dir(tmp_path)


def test_load_all_fills_the_registries(stdlib_loaded):
    from mechstudy.engine import spec

    assert {"capture", "evaluate", "patch"} <= set(spec.OPS)
    assert "ioi" in spec.DATASETS and {"logit_diff", "prob", "kl"} <= set(spec.METRICS)
    assert spec.OPS["patch"].default_chart == "heatmap" and spec.OPS["capture"].verb is None
    assert "mechstudy.stdlib.models.archs.gpt2" in stdlib_loaded


def test_load_adapter_roundtrip(tiny_gpt2_dir):
    a = load_adapter(tiny_gpt2_dir, dtype="float32")
    assert (a.n_layers, a.n_heads, a.d_head, a.d_mlp) == (2, 4, 16, 256)


def test_tiny_model_is_deterministic(tiny_gpt2_dir, tmp_path):
    from mechstudy.engine.fingerprint import model_fingerprint
    from mechstudy.stdlib.models.tiny import make_tiny_gpt2

    assert model_fingerprint(make_tiny_gpt2(tmp_path / "again", seed=0)) == model_fingerprint(tiny_gpt2_dir)
    assert model_fingerprint(make_tiny_gpt2(tmp_path / "other", seed=1)) != model_fingerprint(tiny_gpt2_dir)


def test_left_padding_counts_positions_from_the_first_real_token(tiny_adapter, batch):
    ids, mask, pos = batch
    n = mask.sum(1)
    assert n.unique().numel() > 1
    left, lmask = torch.zeros_like(ids), torch.zeros_like(mask)
    for i in range(len(n)):
        left[i, ids.shape[1] - n[i]:], lmask[i, ids.shape[1] - n[i]:] = ids[i, : n[i]], 1
    right_last = tiny_adapter.forward(ids, mask, logits_at=pos).logits
    left_last = tiny_adapter.forward(left, lmask, logits_at=torch.full_like(pos, ids.shape[1] - 1)).logits
    torch.testing.assert_close(left_last, right_last, atol=1e-5, rtol=0)
