"""The greater_than dataset (Hanna et al.'s sentences, ACDC's year rule, the "01" corruption), the
prob_diff metric by hand, and evaluate / patch / ablate with it on a tiny random GPT-2 whose
word-level tokenizer splits years in digit pairs as GPT-2's BPE does (" 1732" -> " 17", "32")."""

from __future__ import annotations

import pytest
import torch

import mechstudy.stdlib.models.sources  # noqa: F401  (registers the hf and zoo model sources)
import mechstudy.stdlib.ops.ablate  # noqa: F401
import mechstudy.stdlib.ops.evaluate  # noqa: F401
import mechstudy.stdlib.ops.patch  # noqa: F401
import patch_refs as R
from mechstudy.engine import spec
from mechstudy.engine.context import Context
from mechstudy.stdlib import metrics
from mechstudy.stdlib.datasets import reference
from mechstudy.stdlib.datasets.greater_than import generate, valid_years


def make_tokenizer(split_digits: bool = True):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    ref = reference("greater_than")
    # Only the first 60 nouns: the others become <unk> and must be skipped by the generator.
    words = set(ref["NOUNS"][:60]) | set("The lasted from the year to".split()) | {f"{i:02d}" for i in range(100)}
    vocab = {w: i for i, w in enumerate(["<|endoftext|>", "<unk>"] + sorted(words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    pieces = [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    if split_digits:
        pieces.append(pre_tokenizers.Split(Regex(r"\d\d"), "isolated"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(pieces)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<unk>")


@pytest.fixture(scope="module")
def gt_model(tmp_path_factory):
    """(model artifact, adapter) of a 2-layer random GPT-2 over the Greater-Than vocabulary."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from mechstudy.engine.fingerprint import model_fingerprint
    from mechstudy.engine.spec import Artifact
    from mechstudy.stdlib.models.sources import describe_dir

    d = tmp_path_factory.mktemp("gt-gpt2")
    tok = make_tokenizer()
    cfg = GPT2Config(vocab_size=len(tok), n_positions=32, n_embd=32, n_layer=2, n_head=4, initializer_range=0.2,
                     bos_token_id=0, eos_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        GPT2LMHeadModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    art = Artifact(data={"source": "hf", "ref": str(d), "options": {"dtype": "float32"}, "path": str(d),
                         "fingerprint": model_fingerprint(str(d)), "libs": {}, "info": describe_dir(d).__dict__})
    ctx = Context(device="cpu", max_rows=6)
    return art, ctx.model(art), ctx


def test_years_follow_acdc_rule():
    tok = make_tokenizer()
    years = valid_years(tok)
    # every YY 02..98 of centuries 11..17 tokenises right here, minus each century's first and last
    assert years == [c * 100 + yy for c in range(11, 18) for yy in range(3, 98)]
    with pytest.raises(ValueError, match="no valid Greater-Than years"):
        generate(make_tokenizer(split_digits=False), n=4)  # " 1732" is one unknown word there


def test_dataset_pairs(gt_model):
    tok = make_tokenizer()
    ds = generate(tok, n=40, seed=0)
    t, rows = ds.tensors, ds.tables["prompts"].to_dicts()
    ones = tok("01", add_special_tokens=False)["input_ids"][0]
    assert t["year_tokens"].tolist() == [tok(f"{i:02d}", add_special_tokens=False)["input_ids"][0] for i in range(100)]
    assert t["attention_mask"].all() and (t["answer_pos"] == t["clean_ids"].shape[1] - 1).all()  # one length
    nouns = set(reference("greater_than")["NOUNS"][:60])
    for i, r in enumerate(rows):
        assert r["clean"] == f"The {r['noun']} lasted from the year {r['year']} to the year {r['century']}"
        assert r["corrupted"] == r["clean"].replace(f"year {r['year']}", f"year {r['century']}01")
        assert r["noun"] in nouns and r["yy"] == r["year"] % 100 == int(t["yy"][i])
        c, k = t["clean_ids"][i], t["corrupted_ids"][i]
        diff = torch.nonzero(c != k)[:, 0].tolist()
        assert diff == [int(t["yy_pos"][i])] == [7]  # ACDC's position of the YY token
        assert int(k[7]) == ones and int(c[7]) == int(t["year_tokens"][r["yy"]])
        assert int(c[-1]) == tok(str(r["century"]), add_special_tokens=False)["input_ids"][0]
    assert [r["yy"] for r in rows][:5] == [3, 4, 5, 6, 7]  # balanced: YY cycles (02 is never valid here)
    again = generate(tok, n=40, seed=0)
    assert all(torch.equal(ds.tensors[k], again.tensors[k]) for k in ds.tensors)
    acdc = generate(tok, n=3, seed=0, form="acdc", prepend_bos=True)
    r0 = acdc.tables["prompts"].row(0, named=True)
    assert r0["clean"] == f"The {r0['noun']} lasted from the year {r0['year']} to {r0['century']}"
    assert (acdc.tensors["clean_ids"][:, 0] == tok.bos_token_id).all() and (acdc.tensors["yy_pos"] == 8).all()
    uniform = generate(tok, n=40, seed=0, balanced=False)
    assert uniform.tensors["yy"].tolist() != ds.tensors["yy"].tolist()


def test_prob_diff_by_hand_and_differentiable():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 120, generator=gen, dtype=torch.float64, requires_grad=True)
    toks = torch.randperm(120, generator=gen)[:100]
    yy = torch.tensor([0, 50, 99])
    got = metrics.compute("prob_diff", logits, {"yy": yy, "year_tokens": toks})
    p = torch.softmax(logits.detach(), -1)
    for i in range(3):
        later = sum(p[i, toks[j]].item() for j in range(100) if j > yy[i])
        upto = sum(p[i, toks[j]].item() for j in range(100) if j <= yy[i])
        assert abs(got[i].item() - (later - upto)) < 1e-12
    got.sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # rows index the per-prompt tensors, not the shared year tokens
    sub = metrics.compute("prob_diff", logits[[2, 0]], {"yy": yy, "year_tokens": toks}, rows=torch.tensor([2, 0]))
    torch.testing.assert_close(sub, got[[2, 0]])


def test_evaluate_patch_and_ablate_with_prob_diff(gt_model):
    art, adapter, ctx = gt_model
    ds = spec.DATASETS["greater_than"].run({"model": art}, {"n": 6, "seed": 3}, ctx)
    t = ds.tensors
    model = adapter.model
    clean, corr, mask = t["clean_ids"], t["corrupted_ids"], t["attention_mask"]
    lc, lk = R.logits(model, clean, mask), R.logits(model, corr, mask)
    want_clean, want_corr = R.metric("prob_diff", lc, t, lc), R.metric("prob_diff", lk, t, lc)
    ev = spec.OPS["evaluate"].execute({"model": art, "dataset": ds}, {"metric": "prob_diff"}, ctx)
    torch.testing.assert_close(ev.tensors["clean"].double(), want_clean, atol=1e-6, rtol=0)
    torch.testing.assert_close(ev.tensors["corrupted"].double(), want_corr, atol=1e-6, rtol=0)

    out = spec.OPS["patch"].execute({"model": art, "dataset": ds},
                                dict(component="resid", layers=[1], positions="each", metric="prob_diff"), ctx)
    want = []
    for s in range(clean.shape[1]):
        src = R.capture(model, clean, mask, "resid_pre", 1)
        sel = torch.zeros_like(mask, dtype=torch.bool)
        sel[:, s] = True
        lg = R.logits(model, corr, mask, [("resid_pre", 1, R.write("resid_pre", None, sel, src))])
        want.append(R.metric("prob_diff", lg, t, lc))
    torch.testing.assert_close(out.tensors["per_prompt"][0].double(), torch.stack(want), atol=1e-5, rtol=0)
    # only the YY token differs: patching any other position restores nothing
    per_pos = out.tensors["effect"][0]
    assert abs(per_pos[7].item()) > 1e-3 and per_pos[:7].abs().max() < 1e-5

    abl = spec.OPS["ablate"].execute({"model": art, "dataset": ds},
                                 dict(component="heads", layers=[0], metric="prob_diff", method="zero"), ctx)
    for h in range(4):
        zero = torch.zeros(*clean.shape, 4, 8)
        lg = R.logits(model, clean, mask, [("z", 0, R.write("z", h, torch.ones_like(mask, dtype=torch.bool), zero))])
        torch.testing.assert_close(abl.tensors["per_prompt"][0, h].double(), R.metric("prob_diff", lg, t, lc),
                                   atol=1e-5, rtol=0)


def test_checker_matches_metrics_to_datasets(stdlib_loaded, tiny_gpt2_dir):
    from mechstudy.lang import StudyErrors, check

    head = f'model m = hf "{tiny_gpt2_dir}"\ndataset gt = greater_than(n=4)\ndataset ioi = ioi(n=4)\n'
    with pytest.raises(StudyErrors) as e:
        check(head + "a = patch heads in layer 0 of m on gt with logit_diff\n", "s.study")
    assert "needs answer tokens" in e.value.render() and "ioi" in e.value.render()
    with pytest.raises(StudyErrors) as e:
        check(head + "a = evaluate m on ioi with prob_diff\n", "s.study")
    assert "needs years" in e.value.render() and "gt" in e.value.render()
    check(head + "a = ablate heads in layer 0 of m on gt with prob_diff using mean\n", "s.study")
