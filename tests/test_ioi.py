"""The ioi dataset (aligned ABC pairs, single-token answers, explicit padding), metrics, evaluate."""

from __future__ import annotations

import math

import pytest
import torch

import mechstudy.stdlib.models.sources  # noqa: F401  (registers the hf and zoo model sources)
import mechstudy.stdlib.ops.evaluate  # noqa: F401  (registers the operator under test)
from mechstudy.stdlib import metrics
from mechstudy.stdlib.datasets import reference
from mechstudy.stdlib.datasets.ioi import generate, templates


def _check_pairs(ds, tok):
    t = ds.tensors
    clean, corr, mask, pos = t["clean_ids"], t["corrupted_ids"], t["attention_mask"], t["answer_pos"]
    rows = ds.tables["prompts"].to_dicts()
    assert clean.shape == corr.shape == mask.shape and len(rows) == clean.shape[0]
    for i, row in enumerate(rows):
        n_real = int(mask[i].sum())
        assert mask[i, :n_real].all() and not mask[i, n_real:].any()  # right padded
        assert pos[i] == n_real - 1 == row["answer_pos"]
        c, k = clean[i, :n_real].tolist(), corr[i, :n_real].tolist()
        assert c == tok(row["clean"], add_special_tokens=False)["input_ids"] or c[0] == tok.bos_token_id
        diff = [j for j in range(n_real) if c[j] != k[j]]
        assert len(diff) == 3  # the three name slots, and nothing else
        io, s = int(t["io_id"][i]), int(t["s_id"][i])
        assert tok(" " + row["io"], add_special_tokens=False)["input_ids"] == [io]
        assert tok(" " + row["s"], add_special_tokens=False)["input_ids"] == [s]
        assert sorted(c[j] for j in diff) == sorted([io, s, s])  # IO once, S twice
        assert io not in k and s not in k  # ABC: the corrupted prompt names neither answer
        assert len({k[j] for j in diff}) == 3
        assert row["clean"].count(row["s"]) == 2 and not row["clean"].endswith(row["io"])


def test_ioi_on_the_tiny_tokenizer(tiny_adapter):
    tok = tiny_adapter.tokenizer
    ds = generate(tok, n=40, seed=0)
    _check_pairs(ds, tok)
    assert ds.tables["prompts"]["length"].n_unique() > 1  # mixed lengths, padded explicitly
    again = generate(tok, n=40, seed=0)
    assert all(torch.equal(ds.tensors[k], again.tensors[k]) for k in ds.tensors)
    other = generate(tok, n=40, seed=1)
    assert not torch.equal(ds.tensors["clean_ids"], other.tensors["clean_ids"])


def test_fixed_template_aligns_positions(tiny_adapter):
    tok = tiny_adapter.tokenizer
    ds = generate(tok, n=12, seed=0, template=0)
    assert ds.tensors["attention_mask"].all() and ds.tensors["answer_pos"].unique().numel() == 1
    assert set(ds.tables["prompts"]["template"]) == {0}
    assert templates()[0].startswith("Then, [B] and [A] went to the [PLACE]")
    with_bos = generate(tok, n=12, seed=0, template=0, prepend_bos=True)
    assert (with_bos.tensors["clean_ids"][:, 0] == tok.bos_token_id).all()
    assert torch.equal(with_bos.tensors["clean_ids"][:, 1:], ds.tensors["clean_ids"])
    with pytest.raises(ValueError):
        generate(tok, n=2, template=30)


@pytest.fixture(scope="module")
def bpe_tokenizer():
    """A GPT-2-style byte-level BPE trained on IOI sentences naming only 12 people, so the other
    names split into several tokens (with their leading space) and must be skipped."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    ref = reference("ioi")
    common = ref["NAMES"][:12]
    lines = []
    for i, t in enumerate(templates() * 4):
        a, b = common[i % 12], common[(i * 5 + 1) % 12]
        if a == b:
            b = common[(i + 1) % 12]
        lines.append(t.replace("[A]", a).replace("[B]", b).replace("[PLACE]", ref["PLACES"][i % 8])
                     .replace("[OBJECT]", ref["OBJECTS"][i % 8]))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


def test_ioi_skips_names_that_are_not_single_tokens(bpe_tokenizer):
    tok = bpe_tokenizer
    names = reference("ioi")["NAMES"]
    single = [n for n in names if len(tok(" " + n, add_special_tokens=False)["input_ids"]) == 1]
    assert 5 <= len(single) < len(names) // 2
    ds = generate(tok, n=24, seed=0)
    _check_pairs(ds, tok)
    used = set(ds.tables["prompts"]["io"]) | set(ds.tables["prompts"]["s"])
    assert used <= set(single)
    assert ds.data["names_used"] == len(single)


def test_metrics_by_hand():
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.0, 1.0, 3.0, -2.0]])
    io, s = torch.tensor([0, 2]), torch.tensor([1, 1])
    assert metrics.values("logit_diff", logits, io, s).tolist() == [1.5, 2.0]
    p = metrics.values("prob", logits, io, s)
    z0 = math.exp(2) + math.exp(0.5) + math.exp(-1) + 1
    assert abs(p[0].item() - math.exp(2) / z0) < 1e-12
    clean = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 3.0, -2.0]])
    kl = metrics.values("kl", logits, io, s, clean)
    q = torch.softmax(logits[0].double(), -1)
    assert abs(kl[0].item() - sum(0.25 * math.log(0.25 / q[j].item()) for j in range(4))) < 1e-12
    assert abs(kl[1].item()) < 1e-12  # KL of a distribution with itself
    assert metrics.normalise(0.25, clean=1.0, corrupted=-1.0) == 0.625
    assert metrics.normalise(0.3, clean=0.0, corrupted=0.6) == pytest.approx(1 - 0.3 / 0.6)  # kl form
    assert math.isnan(metrics.normalise(1.0, clean=2.0, corrupted=2.0))


def test_evaluate_runs_directly(tiny_model_artifact):
    from mechstudy.engine import spec
    from mechstudy.engine.context import Context

    ctx = Context(device="cpu", max_rows=4)
    ds = spec.DATASETS["ioi"].run({"model": tiny_model_artifact}, {"n": 9, "seed": 2}, ctx)
    adapter = ctx.model(tiny_model_artifact)
    out = spec.OPS["evaluate"].execute({"model": tiny_model_artifact, "dataset": ds}, {"metric": "logit_diff"}, ctx)
    # By hand: one prompt at a time, unpadded, full logits read at the last token.
    t = ds.tensors
    for which in ("clean", "corrupted"):
        want = []
        for i in range(9):
            n_real = int(t["attention_mask"][i].sum())
            with torch.no_grad():
                lg = adapter.model(input_ids=t[f"{which}_ids"][i : i + 1, :n_real]).logits[0, -1]
            want.append((lg[t["io_id"][i]] - lg[t["s_id"][i]]).item())
        assert torch.allclose(out.tensors[which].double(), torch.tensor(want, dtype=torch.float64), atol=1e-5)
    res = out.tables["result"]
    assert res["run"].to_list() == ["clean", "corrupted"] and res["mean"][0] == pytest.approx(out.data["clean_mean"])
    kl = spec.OPS["evaluate"].execute({"model": tiny_model_artifact, "dataset": ds}, {"metric": "kl"}, ctx)
    assert kl.data["clean_mean"] == pytest.approx(0.0, abs=1e-9) and kl.data["corrupted_mean"] > 0
