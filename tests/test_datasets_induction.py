"""The induction dataset: [BOS][r][r] sequences, their clean/corrupted prompts, and the ops reading them."""

from __future__ import annotations

import pytest
import torch

import mechstudy.stdlib.models.sources  # noqa: F401  (registers the hf and zoo model sources)
import mechstudy.stdlib.ops.evaluate  # noqa: F401  (registers the operator used below)
from mechstudy.stdlib.datasets.induction import generate, second_half_targets
from mechstudy.stdlib.models.tiny import make_tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return make_tiny_tokenizer()


@pytest.fixture(scope="module")
def attn2_tok():
    """attn2's tokenizer: <|endoftext|> (id 0, BOS) then t1 .. t299."""
    from transformers import PreTrainedTokenizerFast

    from mechstudy.stdlib.zoo.vocab import EOS, word_tokenizer

    return PreTrainedTokenizerFast(tokenizer_object=word_tokenizer(300), bos_token=EOS, eos_token=EOS, unk_token=EOS)


def _check(ds, tok, n, L, corrupt, bos=True):
    t = ds.tensors
    b = 1 if bos else 0
    ids, clean, corr = t["ids"], t["clean_ids"], t["corrupted_ids"]
    assert ids.shape == (n, b + 2 * L) and clean.shape == corr.shape == (n, b + 2 * L - 1)
    assert t["attention_mask"].all() and (t["answer_pos"] == b + 2 * L - 2).all()
    assert t["first_half"].tolist() == list(range(b, b + L))
    assert t["second_half"].tolist() == list(range(b + L, b + 2 * L))
    special = set(tok.all_special_ids)
    for i in range(n):
        row = ids[i].tolist()
        if bos:
            assert row[0] == tok.bos_token_id
        r = row[b : b + L]
        assert row[b + L :] == r and len(set(r)) == L and not special & set(r)  # the same L distinct tokens twice
        assert clean[i].tolist() == row[:-1] and t["io_id"][i] == r[-1]  # the answer is found by copying
        k, s = corr[i].tolist(), int(t["s_id"][i])
        assert k[b + L :] == r[:-1]  # the second copy is kept
        assert s not in r and s not in special and int(t["io_id"][i]) not in k[:b + L]
        if corrupt == "first_half":
            q = k[b : b + L]
            assert len(set(q)) == L and not set(q) & set(r) and q[-1] == s  # fresh tokens: nothing to copy
        else:
            diff = [j for j in range(len(k)) if k[j] != row[j]]
            assert diff == [b + L - 1] and k[b + L - 1] == s  # only the answer's first occurrence


def test_sequences_on_the_tiny_tokenizer(tok):
    ds = generate(tok, n=16, length=20, seed=0)
    _check(ds, tok, 16, 20, "first_half")
    again = generate(tok, n=16, length=20, seed=0)
    assert all(torch.equal(ds.tensors[k], again.tensors[k]) for k in ds.tensors)
    other = generate(tok, n=16, length=20, seed=1)
    assert not torch.equal(ds.tensors["ids"], other.tensors["ids"])
    answer = generate(tok, n=16, length=20, seed=0, corrupt="answer")
    _check(answer, tok, 16, 20, "answer")
    for k in ("clean_ids", "ids", "io_id", "s_id"):  # same draws whatever the corruption
        assert torch.equal(answer.tensors[k], ds.tensors[k])
    no_bos = generate(tok, n=4, length=5, seed=0, prepend_bos=False)
    _check(no_bos, tok, 4, 5, "first_half", bos=False)
    rows = ds.tables["prompts"]
    assert rows["answer"].to_list() == ds.tensors["io_id"].tolist() and rows.height == 16


def test_vocabulary_range_and_errors(tok):
    ds = generate(tok, n=8, length=6, seed=3, vocab_min=100, vocab_max=130)
    drawn = torch.cat([ds.tensors["ids"][:, 1:].flatten(), ds.tensors["s_id"]])
    assert drawn.min() >= 100 and drawn.max() < 130
    limited = generate(tok, n=8, length=6, seed=3, limit=50)  # the model's vocabulary caps the draw
    assert limited.tensors["ids"].max() < 50
    with pytest.raises(ValueError, match="needs 12 distinct"):
        generate(tok, n=2, length=6, vocab_min=100, vocab_max=111)
    with pytest.raises(ValueError, match="at least 2"):
        generate(tok, n=2, length=1)
    with pytest.raises(ValueError, match="corrupt must be"):
        generate(tok, n=2, corrupt="second_half")


def test_attn2_tokenizer(attn2_tok):
    ds = generate(attn2_tok, n=32, length=20, seed=0)
    _check(ds, attn2_tok, 32, 20, "first_half")
    ids = ds.tensors["ids"]
    assert (ids[:, 0] == 0).all() and ids[:, 1:].min() >= 1 and ids.max() < 300  # BOS 0, then t1..t299
    assert attn2_tok.decode(ids[0, :3]).startswith("<|endoftext|> t")


def test_second_half_targets():
    ds = generate(make_tiny_tokenizer(), n=3, length=4, seed=0)
    pos, tgt = second_half_targets(ds.tensors["ids"], ds.tensors["second_half"])
    assert pos.tolist() == [5, 6, 7]
    assert torch.equal(tgt, ds.tensors["ids"][:, 2:5])  # r_2 .. r_4


def test_registered_generator_and_evaluate(tiny_model_artifact):
    """Through the registry with the model node's artifact; evaluate reads it unchanged."""
    from mechstudy.engine import spec
    from mechstudy.engine.context import Context

    ctx = Context(device="cpu", max_rows=4)
    ds = spec.DATASETS["induction"].run({"model": tiny_model_artifact}, {"n": 6, "length": 10, "seed": 1}, ctx)
    assert ds.tensors["ids"].max() < tiny_model_artifact.data["info"]["d_vocab"]
    adapter = ctx.model(tiny_model_artifact)
    out = spec.OPS["evaluate"].execute({"model": tiny_model_artifact, "dataset": ds}, {"metric": "logit_diff"}, ctx)
    t = ds.tensors
    with torch.no_grad():  # by hand: the full sequences' logits one position before the end
        lg = adapter.model(input_ids=t["ids"]).logits[:, -2]
    want = lg.gather(1, t["io_id"][:, None])[:, 0] - lg.gather(1, t["s_id"][:, None])[:, 0]
    assert torch.allclose(out.tensors["clean"].double(), want.double(), atol=1e-5)


@pytest.mark.skipif(not (mechstudy.stdlib.models.sources.ZOO_DIR / "attn2" / "config.json").is_file(),
                    reason="zoo model attn2 not built yet")
def test_attn2_does_induction_on_it():
    """The zoo's attention-only model copies r_L on the clean prompts, and cannot on the corrupted."""
    from mechstudy.engine.spec import Artifact
    from mechstudy.stdlib.datasets import Pairs, tokenizer_of
    from mechstudy.stdlib.models.base import load_adapter
    from mechstudy.stdlib.ops.evaluate import evaluate

    path = str(mechstudy.stdlib.models.sources.ZOO_DIR / "attn2")
    adapter = load_adapter(path)
    ds = generate(tokenizer_of(Artifact(data={"path": path})), n=16, length=20, seed=0,
                  limit=adapter.model.config.vocab_size)
    clean, corrupted = evaluate(adapter, Pairs.of(ds), "logit_diff", 16)
    assert clean.mean() > 1 and (clean > corrupted).double().mean() > 0.9
