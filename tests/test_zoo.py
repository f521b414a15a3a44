"""The zoo: shipped models load offline and have their behaviours; recipes are deterministic.

Behaviours are measured here, not read from behaviours.json, on sets the models never saw in
training (attn2: repeat offsets that are multiples of 10; mini: held-out IOI templates and name
pairs, Greater-Than nouns, sentiment pairs).
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from mechstudy.stdlib.zoo import behaviours as B
from mechstudy.stdlib.zoo import MODELS_DIR, corpus, measure as M, train, vocab

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module", autouse=True)
def offline():
    """Nothing here may touch the network: the shipped directories are all there is."""
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TRANSFORMERS_OFFLINE", "1")
    yield
    mp.undo()


def load(name: str):
    path = MODELS_DIR / name
    model = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(path)
    return path, model, hf_tok


@pytest.fixture(scope="module")
def attn2():
    return load("attn2")


@pytest.fixture(scope="module")
def mini():
    return load("mini")


# ---------------------------------------------------------------------------------------- shipped


@pytest.mark.parametrize("name", ["attn2", "mini", "small"])
def test_shipped_directory_is_small_and_complete(name):
    path = MODELS_DIR / name
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md",
              "behaviours.json"):
        assert (path / f).is_file(), f
    for f in path.iterdir():
        assert f.stat().st_size < 8 * 2**20, f"{f} is over 8 MiB"
    assert "## Measured behaviours" in (path / "README.md").read_text()


def test_attn2_is_attention_only_llama_with_rotary(attn2):
    _, model, hf_tok = attn2
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 2
    assert all(bool((layer.mlp.down_proj.weight == 0).all()) for layer in model.model.layers)
    assert hf_tok("t5 t299").input_ids == [5, 299] and hf_tok.decode([0, 7]) == "<|endoftext|> t7"


def test_attn2_has_induction_heads_on_unseen_offsets(attn2):
    _, model, _ = attn2
    with torch.no_grad():
        r = M.measure_attn2(model, n_seqs=32, halves=(20, 30, 50))  # offsets never used in training
    assert r["best_induction_head"]["layer"] == 1 and r["best_induction_head"]["prefix_matching"] >= 0.5
    assert r["best_previous_token_head"]["layer"] == 0 and r["best_previous_token_head"]["previous_token"] >= 0.5
    assert r["loss_first_half"] > 5.0  # random tokens: ~ln(299) = 5.7
    assert r["loss_repeated_half"] < 0.25 * r["loss_first_half"]


def test_prefix_matching_matches_a_loop_reference(attn2):
    _, model, _ = attn2
    seqs = corpus.repeated_random_tokens(2, 7, 300, seed=3)
    got = torch.tensor(B.induction_scores(model, seqs)["prefix_matching"])
    pat = B.attention_patterns(model, seqs)  # [L, B, H, Q, K]
    ref = torch.zeros(2, 4)
    for lay in range(2):
        for h in range(4):
            vals = [pat[lay, b, h, 7 + i, i + 1] for b in range(2) for i in range(1, 8)]
            ref[lay, h] = sum(vals) / len(vals)
    torch.testing.assert_close(got, ref)


def test_mini_tokenizer_keeps_task_words_single(mini):
    _, model, hf_tok = mini
    assert type(model).__name__ == "GPT2LMHeadModel"
    ioi = corpus.reference("ioi")
    words = [" " + w for w in (*corpus.ioi_names(), *ioi["PLACES"], *ioi["OBJECTS"])]
    words += [f"{i:02d}" for i in range(100)] + [f" {c}" for c in range(10, 19)]
    assert [w for w in words if len(hf_tok(w).input_ids) != 1] == []
    assert hf_tok.convert_ids_to_tokens(hf_tok(" 1732").input_ids) == ["Ġ17", "32"]
    assert hf_tok.decode(hf_tok("Then, Mary gave 1732 to").input_ids) == "Then, Mary gave 1732 to"


def test_mini_ioi_on_held_out_templates_and_names(mini):
    _, model, hf_tok = mini
    tok = hf_tok.backend_tokenizer
    items = M.ioi_set(128, "heldout")
    prompts, io, s = M.encode_ioi(tok, items, bos=False)
    m = B.ioi_metrics(B.last_logits(model, prompts), io, s)
    assert m["io_over_s"] >= 0.9 and m["logit_diff"] > 1.0
    shipped = json.loads((MODELS_DIR / "mini" / "behaviours.json").read_text())["behaviours"]
    assert abs(shipped["ioi_heldout_templates"]["io_over_s"] - m["io_over_s"]) < 0.1


def test_mini_greater_than_and_recall(mini):
    _, model, hf_tok = mini
    tok = hf_tok.backend_tokenizer
    gt = M.greater_than_set(100)
    yy = [M.token(tok, f"{i:02d}") for i in range(100)]
    m = B.greater_than_metrics(B.last_logits(model, [tok.encode(g["prompt"]).ids for g in gt]), [g["yy"] for g in gt], yy)
    assert m["prob_diff"] > 0.2 and m["mass_on_years"] > 0.5
    sets = M.choice_sets(tok)
    for name in ("capital", "landmark", "sentiment"):
        cs = sets[name]
        acc = B.choice_accuracy(B.last_logits(model, cs["prompts"]), cs["answers"], cs["candidates"])
        assert acc["accuracy"] > 2 * acc["chance"] or acc["accuracy"] > 0.9, (name, acc)


def test_head_ablation_hook_equals_zeroed_weights(mini):
    """Zero-ablating head h of layer l == zeroing the rows of c_proj that read head h."""
    _, model, hf_tok = mini
    ids = torch.tensor([hf_tok("Then, Mary and John went to the store. John gave a ring to").input_ids])
    layer, head, d_head = 1, 2, model.config.n_embd // model.config.n_head
    with torch.no_grad(), B.head_replaced(model, layer, head, None):
        hooked = model(input_ids=ids).logits
    proj = model.transformer.h[layer].attn.c_proj
    saved = proj.weight.detach().clone()
    try:
        with torch.no_grad():
            proj.weight[head * d_head : (head + 1) * d_head] = 0.0  # Conv1D weight is [in, out]
            ref = model(input_ids=ids).logits
    finally:
        with torch.no_grad():
            proj.weight.copy_(saved)
    torch.testing.assert_close(hooked, ref)
    assert not torch.allclose(hooked, model(input_ids=ids).logits)


# ---------------------------------------------------------------------------------------- recipes


def test_attn2_recipe_is_bit_identical_when_rerun():
    a = train.train_attn2(steps=4, seed=0)
    b = train.train_attn2(steps=4, seed=0)
    c = train.train_attn2(steps=4, seed=1)
    sa, sb, sc = (t.model.state_dict() for t in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.layers.1.self_attn.q_proj.weight"], sc["model.layers.1.self_attn.q_proj.weight"])
    assert a.info["threads"] == 1 and a.info["loss_curve"] == b.info["loss_curve"]


def test_train_model_operator_artifact_round_trips(tmp_path):
    from mechstudy.engine import spec
    from mechstudy.stdlib.ops import train_model  # noqa: F401
    from mechstudy.stdlib.zoo import build

    op = spec.OPS["train_model"]
    assert op.verb == "train" and op.components == ("model",)
    params = {"method": "attn2", "steps": 2, "seed": 0, "lr": None, "threads": 1, "measure": False}
    art1, art2 = op.run({}, params, None), op.run({}, params, None)
    assert art1.tensors.keys() == art2.tensors.keys()
    assert all(torch.equal(art1.tensors[k], art2.tensors[k]) for k in art1.tensors)
    path = build.write_model_dir(art1, tmp_path / "attn2")
    model = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager")
    assert all(torch.equal(model.state_dict()[k], art1.tensors[k]) for k in art1.tensors)


def test_mini_corpus_and_tokenizer_are_deterministic():
    docs = corpus.mini_documents(3000, seed=0)
    assert docs == corpus.mini_documents(3000, seed=0) and docs != corpus.mini_documents(3000, seed=1)
    assert vocab.train_bpe(docs).to_str() == vocab.train_bpe(list(docs)).to_str()
    held = set(corpus.ioi_templates("heldout"))
    assert len(held) == 6 and not held & set(corpus.ioi_templates("train"))
    # No training sentence has a held-out template's wording, nor a held-out name pair.
    held_out_shape = re.compile(r"and \w+ were (commuting|thinking about going)|Friends( separated at birth)? \w+ and \w+ found")
    assert not [d for d in docs if held_out_shape.search(d)]
    names = set(corpus.ioi_names())
    for d in docs:
        if " gave " in d or " said to " in d:
            used = [w.strip(".,") for w in d.split() if w.strip(".,") in names]
            assert not any(corpus.ioi_pair_held_out(a, b) for a in used for b in used if a != b), d
