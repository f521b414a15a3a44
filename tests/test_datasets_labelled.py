"""The labelled datasets for probing and steering: `sentiment` (sentence-level, contrast pairs,
held-out pairs) and `entities` (every token labelled name / place / other, templates that no zoo
model trained on)."""

from __future__ import annotations

import re

import pytest
import torch

from mechstudy.stdlib.datasets import entities, sentiment
from mechstudy.stdlib.zoo import lexicon as lx
from mechstudy.stdlib.zoo.corpus import sentiment_pair_held_out


@pytest.fixture(scope="module")
def mini_tok():
    from transformers import AutoTokenizer

    from mechstudy.stdlib.zoo import MODELS_DIR

    return AutoTokenizer.from_pretrained((MODELS_DIR / "mini"), local_files_only=True)


def test_sentiment_rows_are_labelled_contrast_pairs(mini_tok):
    art = sentiment.generate(mini_tok, split="all", seed=1)
    t, rows = art.tensors, art.tables["prompts"].to_dicts()
    assert len(rows) == len(lx.SENTIMENT_SUBJECTS) * 24 * 3  # every word is one token for mini
    for i, r in enumerate(rows):
        ids, alt = t["clean_ids"][i], t["corrupted_ids"][i]
        real = t["attention_mask"][i].bool()
        diff = (ids != alt) & real
        assert diff.nonzero().flatten().tolist() == [int(t["adj_pos"][i])]  # only the adjective differs
        assert mini_tok.decode([int(ids[t["adj_pos"][i]])]) == " " + r["adjective"]
        assert int(t["label"][i]) == (r["adjective"] in lx.POSITIVE) and (r["contrast_adjective"] in lx.POSITIVE) != r["label"]
        want, other = lx.REACTIONS[r["form"]] if r["label"] else lx.REACTIONS[r["form"]][::-1]
        assert mini_tok.decode([int(t["io_id"][i])]) == " " + want and mini_tok.decode([int(t["s_id"][i])]) == " " + other
        assert int(t["label_pos"][i]) == int(real.sum()) - 1 == int(t["answer_pos"][i])
        assert art.data["label_types"][int(t["label_type"][i])] == r["adjective"]
    assert art.data["label_classes"] == ["negative", "positive"]


def test_sentiment_splits_partition_the_pairs_mini_held_out(mini_tok):
    held = sentiment.generate(mini_tok, split="heldout").tables["prompts"]
    train = sentiment.generate(mini_tok, split="train").tables["prompts"]
    assert all(sentiment_pair_held_out(s, a) for s, a in zip(held["subject"], held["adjective"]))
    assert not any(sentiment_pair_held_out(s, a) for s, a in zip(train["subject"], train["adjective"]))
    assert held.height + train.height == sentiment.generate(mini_tok, split="all").tables["prompts"].height
    assert sentiment.default_split({"source": "zoo"})[0] == "heldout" and sentiment.default_split({"source": "hf"})[0] == "all"


def test_sentiment_reads_the_adjective_when_asked(mini_tok):
    art = sentiment.generate(mini_tok, n=10, read="adjective")
    assert torch.equal(art.tensors["label_pos"], art.tensors["adj_pos"])
    with pytest.raises(ValueError, match="split must be one of"):
        sentiment.generate(mini_tok, split="novel")


def test_entities_label_every_token(mini_tok):
    art = entities.generate(mini_tok, n=40, seed=3)
    t = art.tensors
    lex = entities.lexicon()
    names = {" " + w for w in lex["N"]}
    places = {" " + w for w in lex["C"] + lex["P"]}
    assert int(t["label"].shape[0]) == int(t["attention_mask"].sum())  # every real token, no BOS for mini
    for lab, r, p, ty in zip(*(t[k].tolist() for k in ("label", "label_row", "label_pos", "label_type"))):
        word = mini_tok.decode([int(t["clean_ids"][r, p])])
        assert lab == (1 if word in names else 2 if word in places else 0)
        assert art.data["label_types"][ty] == word  # the word type is the token itself
    assert {0, 1, 2} == set(t["label"].tolist())
    binary = entities.generate(mini_tok, n=40, seed=3, prop="place").tensors["label"]
    assert torch.equal(binary, (t["label"] == 2).long())


def test_entity_templates_never_occur_in_minis_training_text():
    from mechstudy.stdlib.zoo import corpus, train

    if hasattr(train, "text_corpus"):
        docs = train.text_corpus("mini", seed=0).docs
    else:
        docs = corpus.mini_documents(train.MINI["n_docs"], 0)
    text = "\n".join(docs)
    for t in entities.TEMPLATES:
        pattern = re.escape(t)
        for slot in ("N", "M", "C", "P"):
            pattern = pattern.replace(re.escape(f"[{slot}]"), r"\w+")
        assert re.search(pattern, text) is None, t
        # and no long stretch of a template's own wording either
        for piece in re.split(r"\[\w\]", t):
            if len(piece.split()) >= 3:
                assert piece.strip() not in text, piece
