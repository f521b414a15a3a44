"""The zoo model `small`: GPT-2's block with rotary positions, induction heads and IOI on templates
it never read. Every number is measured here (fresh random draws, the datasets' own generators) and
compared with what behaviours.json, `study models` and the card report, with margins."""

from __future__ import annotations

import json

import pytest
import torch

from mechstudy.stdlib.zoo import MODELS_DIR, corpus, measure as M, train, vocab
from mechstudy.stdlib.zoo import behaviours as B

transformers = pytest.importorskip("transformers")
PATH = MODELS_DIR / "small"
# What small does, with margins below the shipped measurements (behaviours.json, card)
PREFIX_MIN = 0.8  # the bar for an induction head
# shipped: IO over S 74% and logit difference 4.53 on novel templates, 9.31 on training ones (ratio 0.49:
# not the parity the issue asked for); Greater-Than "began" form 0.62
IOI_NOVEL_ACC, IOI_NOVEL_LD, IOI_TRAIN_LD, IOI_RATIO = 0.65, 3.5, 8.0, 0.35
GT_NOVEL = 0.5


@pytest.fixture(scope="module")
def small():
    model = transformers.AutoModelForCausalLM.from_pretrained(PATH, attn_implementation="eager").eval()
    return model, transformers.AutoTokenizer.from_pretrained(PATH)


@pytest.fixture(scope="module")
def shipped():
    return json.loads((PATH / "behaviours.json").read_text())


def test_small_is_gpt2_block_with_rotary_positions(small):
    model, _ = small
    cfg = model.config
    assert cfg.model_type == "gpt_neox" and cfg.use_parallel_residual is False  # sequential, as GPT-2
    assert cfg.rope_parameters["partial_rotary_factor"] == 1.0 and cfg.hidden_act == "gelu"
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size) == \
        (train.SMALL["n_layers"], train.SMALL["n_heads"], train.SMALL["d_model"])
    # the adapter reads it as a sequential NeoX: resid_mid is what the MLP's LayerNorm reads
    from mechstudy.stdlib.models.archs.neox import NEOX

    assert NEOX.parallel(cfg.to_dict()) is False
    for f in PATH.iterdir():
        assert f.stat().st_size < 8 * 2**20, f"{f} is over 8 MiB"


def test_small_reads_minis_corpus_and_tokenizer():
    """Same text, same tokenizer: mini's held-out splits and overlap test hold for small too."""
    assert json.loads((PATH / "tokenizer.json").read_text())["model"] == \
        json.loads((MODELS_DIR / "mini" / "tokenizer.json").read_text())["model"]
    assert json.loads((PATH / "splits.json").read_text())["evaluate_on"] == \
        json.loads((MODELS_DIR / "mini" / "splits.json").read_text())["evaluate_on"]
    assert corpus.training_documents("small") == corpus.training_documents("mini")


def test_small_has_induction_heads_on_unseen_offsets(small, shipped):
    """Prefix matching on repeated random tokens of the whole vocabulary, a draw of our own."""
    model, tok = small
    eos = tok.convert_tokens_to_ids(corpus.EOS)
    words = torch.tensor(train.repeat_token_ids(vocab_tokenizer()))
    best = []
    for half in (20, 40):
        assert not corpus.offset_seen_in_training(half)
        gen = torch.Generator().manual_seed(4242 + half)
        r = words[torch.stack([torch.randperm(len(words), generator=gen)[:half] for _ in range(32)])]
        seqs = torch.cat([torch.full((32, 1), eos), r, r], dim=1)
        r = B.induction_scores(model, seqs)
        best.append(max(max(row) for row in r["prefix_matching"][1:]))
        assert r["loss_repeated_half"] < r["loss_first_half"] - 1.0, half  # it copies
    assert min(best) > PREFIX_MIN
    card = shipped["behaviours"]["induction_words"]["best_induction_head"]["prefix_matching"]
    assert card > PREFIX_MIN


def test_small_ioi_generalises_to_templates_it_never_read(small, shipped):
    model, tok = small
    got = M.measure_splits(model, tok)
    per = shipped["behaviours"]["per_split"]
    for split in ("train", "heldout", "novel"):
        assert got["ioi"][split]["logit_diff"] == pytest.approx(per["ioi"][split]["logit_diff"], abs=2e-3)
    ioi = got["ioi"]
    assert ioi["novel"]["io_over_s"] > IOI_NOVEL_ACC and ioi["novel"]["logit_diff"] > IOI_NOVEL_LD
    assert ioi["train"]["io_over_s"] > 0.95 and ioi["train"]["logit_diff"] > IOI_TRAIN_LD
    assert ioi["novel"]["logit_diff"] / ioi["train"]["logit_diff"] > IOI_RATIO
    gt = got["greater_than"]
    assert gt["novel/began"]["prob_diff"] > GT_NOVEL


def test_small_recipe_is_bit_identical_when_rerun():
    a = train.train_small(steps=3, seed=0)
    b = train.train_small(steps=3, seed=0)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa) and a.info["loss_curve"] == b.info["loss_curve"]
    assert vocab.EOS in a.tokenizer.get_vocab()


def test_circuits_in_study_models_are_the_studys_findings(shipped, stdlib_loaded):
    from mechstudy.engine.docs import models_listing

    circuits = shipped["behaviours"]["circuits"]
    assert circuits["study"] == "studies/circuits/small.study" and len(circuits["findings"]) >= 5
    text = models_listing()
    block = text[text.index("\nsmall ") :].split("\n\n")[0]
    assert "circuits (measured by studies/circuits/small.study" in block
    assert all(f"    - {line}" in block for line in circuits["findings"])
    assert circuits["findings"][0] in (PATH / "README.md").read_text()


def test_findings_are_what_the_study_computes(shipped, tmp_path):
    """The induction heads and IOI numbers the card lists, recomputed by the study's own statements."""
    import mechstudy as ms

    numbers = shipped["behaviours"]["circuits"]["numbers"]
    res = ms.run_text(
        'study "check"\nmodel m = zoo "small"\ndataset rep = induction(n=32, length=30, seed=1, tokens=words)\n'
        "dataset ioi = ioi(n=64, seed=0)\ninduction = induction heads in all layers of m on rep\n"
        "base = evaluate m on ioi with logit_diff\nheads = patch heads in all layers of m on ioi with logit_diff\n",
        directory=tmp_path, cache=tmp_path / "cache")
    rows = {f"a{r['layer']}.h{r['head']}": r for r in res["induction"].table.to_dicts()}
    listed = {h["head"]: h["prefix_matching"] for h in numbers["induction_heads"]}
    assert listed == {k: pytest.approx(r["prefix_matching"], abs=1e-4) for k, r in rows.items() if r["prefix_matching"] > 0.5}
    assert res["base"].data["clean_mean"] == pytest.approx(numbers["ioi_novel"]["clean"], abs=1e-3)
    top = sorted(res["heads"].table.to_dicts(), key=lambda r: -r["effect"])[:4]
    assert [(f"a{r['layer']}.h{r['head']}", round(r["effect"], 3)) for r in top] == \
        [(h["head"], round(h["effect"], 3)) for h in numbers["ioi_heads_novel"]]
    # small's IOI heads are the same on templates it never read as on its training templates
    assert {h["head"] for h in numbers["ioi_heads_novel"]} == {h["head"] for h in numbers["ioi_heads_train"]}


def test_induction_words_draws_only_one_token_words(small):
    from mechstudy.stdlib.datasets import induction as I

    _, tok = small
    words = set(train.repeat_token_ids(vocab_tokenizer()))
    art = I.generate(tok, n=8, length=30, seed=3, tokens="words")
    drawn = {t for row in art.tables["prompts"]["tokens"].to_list() for t in row}
    assert drawn <= words and len(drawn) > 100 and art.data["candidates"] == len(words) == 346
    with pytest.raises(ValueError, match="one-token words"):
        I.generate(tok, n=1, length=200, tokens="words")


def vocab_tokenizer():
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(PATH / "tokenizer.json"))
