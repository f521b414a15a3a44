"""The zoo model `small`: GPT-2's block with rotary positions, induction heads and IOI on templates
it never read. Every number is measured here (fresh random draws, the datasets' own generators) and
compared with what behaviours.json, `study models` and the card report, with margins."""

from __future__ import annotations

import json
import re

import pytest
import torch

from mechstudy.stdlib.zoo import MODELS_DIR, corpus, measure as M, train, vocab
from mechstudy.stdlib.zoo import behaviours as B

transformers = pytest.importorskip("transformers")
PATH = MODELS_DIR / "small"
# What small does, with margins below the shipped measurements (behaviours.json, card)
PREFIX_MIN = 0.8  # the bar for an induction head
# shipped: IO over S 83% and logit difference 6.52 on novel templates, 8.02 on training ones (ratio
# 0.81); Greater-Than's two novel forms 0.71 ("began") and 0.80 ("started"), 100% > 0
IOI_NOVEL_ACC, IOI_NOVEL_LD, IOI_TRAIN_LD, IOI_RATIO = 0.75, 5.5, 7.0, 0.7
GT_NOVEL = 0.55

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


def test_small_reads_minis_corpus_and_tokenizer_and_varied_task_sentences(shipped):
    """mini's text and tokenizer, plus varied IOI / Greater-Than sentences (the overlap test in
    test_zoo_splits.py runs on small's whole text): mini's held-out splits hold for small too."""
    assert json.loads((PATH / "tokenizer.json").read_text())["model"] == \
        json.loads((MODELS_DIR / "mini" / "tokenizer.json").read_text())["model"]
    assert json.loads((PATH / "splits.json").read_text())["evaluate_on"] == \
        json.loads((MODELS_DIR / "mini" / "splits.json").read_text())["evaluate_on"]
    info = shipped["info"]
    mini, docs = corpus.training_documents("mini"), corpus.training_documents("small")
    assert docs[: len(mini)] == mini and len(docs) == info["n_docs"] == len(mini) + info["varied_ioi"] + info["varied_gt"]
    varied = docs[len(mini):]
    # every varied IOI sentence: two people meet (in either order), then one hands something to the other
    known = set(corpus.ioi_names())
    for d in varied[: info["varied_ioi"]][:2000]:
        names = [w for w in d.replace(",", " ").replace(".", " ").split() if w in known]
        assert len(names) == 4 and set(names[:2]) == set(names[2:]) and names[2] != names[3], d
    # every varied Greater-Than sentence: a training noun and two different years of one century
    for d in varied[info["varied_ioi"]:]:
        y1, y2 = re.findall(r"\b1[0-8]\d\d\b", d)
        assert y1[:2] == y2[:2] and y1 != y2 and any(f" {n} " in d for n in corpus.gt_nouns("train")), d
    assert len(set(varied)) > 0.5 * len(varied)  # written in many ways, not a few sentences repeated


def test_small_heldout_text_is_its_recipe_and_never_training_text():
    """`corpus c = zoo "small" split=heldout`: documents of small's recipe (mini's kinds and the varied
    sentences, in the recipe's share) that never occur in its training text."""
    import itertools

    held = list(itertools.islice(corpus.heldout_documents("small", 0), 4000))
    seen = {d.strip() for d in corpus.training_documents("small", 0)}
    assert not [d for d in held if d.strip() in seen]
    share = (train.SMALL["varied_ioi"] + train.SMALL["varied_gt"]) / len(seen)
    # words only the varied sentences use (14 of the 18 hand-overs; 8 of the 12 Greater-Than forms)
    marks = (" lent ", " sent ", " offered ", " mailed ", " returned ", " tossed ", " promised ", " tried to give ",
             " carried ", " goodbye ", " waved ", " talked ", " wrote ", " read a ", " until ", " through ",
             " between ", " closed in ")
    varied = [d for d in held if any(m in d for m in marks)]
    assert 0.6 * share < len(varied) / len(held) < 1.3 * share  # measured 0.30 for a share of 0.31
    mini_held = list(itertools.islice(corpus.heldout_documents("mini", 0), 4000))
    assert sum(any(m in d for m in marks) for d in mini_held) / len(mini_held) < 0.05  # mini's stream: 1%


def test_small_has_induction_heads_on_unseen_offsets(small, shipped):
    """Prefix matching on repeated random one-token corpus words at offsets training never used, a
    draw of our own (built here by hand, not by the measuring code)."""
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
    for form in ("began", "started"):
        assert gt[f"novel/{form}"]["prob_diff"] > GT_NOVEL and gt[f"novel/{form}"]["positive_share"] > 0.9, form
        assert gt[f"novel/{form}"]["mass_on_years"] > 0.9, form  # it reads both forms as year prompts


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
        "base = evaluate m on ioi with logit_diff\nheads = patch heads in all layers of m on ioi with logit_diff\n"
        "att = attention pattern in layer 0 of m on ioi\n",
        directory=tmp_path, cache=tmp_path / "cache")
    rows = {f"a{r['layer']}.h{r['head']}": r for r in res["induction"].table.to_dicts()}
    listed = {h["head"]: h["prefix_matching"] for h in numbers["induction_heads"]}
    assert listed == {k: pytest.approx(r["prefix_matching"], abs=1e-4) for k, r in rows.items() if r["prefix_matching"] > 0.5}
    assert res["base"].data["clean_mean"] == pytest.approx(numbers["ioi_novel"]["clean"], abs=1e-3)
    top = sorted(res["heads"].table.to_dicts(), key=lambda r: -r["effect"])[:4]
    assert [(f"a{r['layer']}.h{r['head']}", round(r["effect"], 3)) for r in top] == \
        [(h["head"], round(h["effect"], 3)) for h in numbers["ioi_heads_novel"]]
    answer = {f"a{r['layer']}.h{r['head']}": r for r in res["att"].points[0].artifact.tables["answer"].to_dicts()}
    for head, want in numbers["answer_attention"].items():
        if head.startswith("a0."):
            assert {k: round(answer[head][k], 4) for k in want} == pytest.approx(want, abs=1e-4), head
    assert numbers["answer_attention"]["a0.h3"]["to_s2"] > 0.9  # what the study's notes say of a0.h3
    # one head carries small's IOI, the same on templates it never read as on its training templates
    novel, trained = numbers["ioi_heads_novel"], numbers["ioi_heads_train"]
    assert novel[0]["head"] == trained[0]["head"] == "a0.h3"
    assert novel[0]["effect"] > 0.8 and trained[0]["effect"] > 0.7 and max(novel[1]["effect"], trained[1]["effect"]) < 0.2


def test_the_ioi_head_suppresses_the_last_name_said(small):
    """What the circuits study's notes say of a0.h3, measured here with the model's own attention
    weights and its weight matrices: at the answer position it attends to the subject's second
    mention (S2), and its OV circuit writes against the name it reads (copy suppression)."""
    from mechstudy.stdlib.datasets import ioi as IOI

    model, tok = small
    art = IOI.generate(tok, n=64, seed=11, split="novel")
    t = art.tensors
    with torch.no_grad():
        attn = model(input_ids=t["clean_ids"], attention_mask=t["attention_mask"], output_attentions=True).attentions
    to_s2, to_io = [], []
    for b, ids in enumerate(t["clean_ids"]):
        s_pos = (ids == t["s_id"][b]).nonzero().flatten().tolist()
        row = attn[0][b, 3, t["answer_pos"][b]]
        to_s2.append(row[s_pos[-1]].item())
        to_io.append(row[ids == t["io_id"][b]].sum().item())
    assert sum(to_s2) / len(to_s2) > 0.9 and sum(to_io) / len(to_io) < 0.05
    # OV circuit on the IOI names: the logit of the name read, against the mean logit it writes
    layer, d_head = model.gpt_neox.layers[0], model.config.hidden_size // model.config.num_attention_heads
    names = [i for i in (tok.convert_tokens_to_ids(tok.tokenize(" " + n)) for n in corpus.ioi_names()) if len(i) == 1]
    names = torch.tensor([i[0] for i in names])
    with torch.no_grad():
        qkv = layer.attention.query_key_value(layer.input_layernorm(model.gpt_neox.embed_in.weight[names]))
        v = qkv.view(len(names), model.config.num_attention_heads, 3 * d_head)[:, 3, 2 * d_head:]
        out = v @ layer.attention.dense.weight[:, 3 * d_head: 4 * d_head].T
        logits = out @ model.get_output_embeddings().weight[names].T  # name read x name written
    own, other = logits.diagonal(), (logits.sum(1) - logits.diagonal()) / (len(names) - 1)
    assert len(names) > 50 and (own < other).float().mean() > 0.9 and (other - own).mean() > 1.0


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
