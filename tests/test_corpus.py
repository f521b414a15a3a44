"""Corpora: the `corpus` declaration and `over` clause in the language, packing text into token
rows (against a plain reference), the text and parquet sources keyed by content, and a corpus read
by an operator (`on` for evaluation on text)."""

from __future__ import annotations

import polars as pl
import pytest
import torch

from lang_fakes import registry  # noqa: F401  (a fixture)
from mechstudy.lang import StudyErrors, check


@pytest.fixture(scope="module")
def tok():
    from mechstudy.stdlib.models.tiny import make_tiny_tokenizer

    return make_tiny_tokenizer()


def test_pack_is_the_concatenation_cut_into_rows(tok):
    from mechstudy.stdlib.datasets.corpus import pack

    docs = ["John went to the store", "Mary gave a drink to John", "the office", "Then Mary"]
    out = pack(docs, tok, context=5, tokens=14)
    sep = tok.eos_token_id if tok.eos_token_id is not None else tok.bos_token_id
    stream, owner = [], []
    for i, d in enumerate(docs):
        enc = tok(d, add_special_tokens=False)["input_ids"]
        stream += enc + [sep]
        owner += [i] * len(enc) + [-1]
    assert out["input_ids"].shape == (2, 5)  # 14 // 5 rows of exactly 5 tokens
    assert out["input_ids"].flatten().tolist() == stream[:10]
    assert out["doc_id"].flatten().tolist() == owner[:10]
    assert out["attention_mask"].all()
    short = pack(["John"], tok, context=8, tokens=64)  # the text runs out: one padded row
    assert short["input_ids"].shape == (1, 8) and short["attention_mask"].sum() == 2


def _write_text(tmp_path):
    d = tmp_path / "books"
    d.mkdir()
    (d / "a.txt").write_text("John went to the store.\n\nMary gave a drink to John.\n")
    (d / "b.txt").write_text("Then Mary and John went to the office.\n\nThe office was closed.\n")
    return d


def test_corpus_declarations_check_and_key_by_content(stdlib_loaded, tiny_gpt2_dir, tmp_path, monkeypatch):
    from mechstudy.engine.run import check_and_plan

    monkeypatch.chdir(tmp_path)
    _write_text(tmp_path)
    study = tmp_path / "c.study"
    study.write_text(f'model m = hf "{tiny_gpt2_dir}"\ncorpus web = text "books/*.txt" tokens=32 context=8\n'
                     "lens resid_post in all layers of m on web at all positions\n")
    plan = check_and_plan(study)
    (node,) = [n for n in plan.nodes() if n.op == "dataset"]
    assert node.param("generator") == "corpus.text" and node.param("params")["content_hash"]
    before = node.key
    (tmp_path / "books" / "b.txt").write_text("Something else entirely.\n")
    assert [n for n in check_and_plan(study).nodes() if n.op == "dataset"][0].key != before  # content keys it


@pytest.mark.parametrize("text,message,hint", [
    ('corpus c = txt "x.txt"\n', "unknown corpus source 'txt'", "did you mean 'text'?"),
    ('dataset c = text "x.txt"\n', "unknown dataset generator 'text'", "text is a corpus source"),
    ('corpus c = text "nothing/*.txt"\n', "no files match 'nothing/*.txt'", "a glob"),
    ('corpus c = text "books" context=1\n', "context must be at least 2 tokens", None),
    ('corpus c = text "books" tokens=1000000000\n', "tokens must be between", "shard"),
    ('dataset d = ioi(n=4)\nevaluate m on d over d\n', "does not take `over", None),
])
def test_corpus_mistakes_are_check_errors(stdlib_loaded, tiny_gpt2_dir, tmp_path, monkeypatch, text, message, hint):
    monkeypatch.chdir(tmp_path)
    _write_text(tmp_path)
    with pytest.raises(StudyErrors) as e:
        check(f'model m = hf "{tiny_gpt2_dir}"\n' + text, "c.study")
    (err,) = e.value.errors
    assert message in err.message, err.message
    if hint:
        assert hint in (err.hint or ""), err.hint
    assert "^" in e.value.render() and "c.study:" in e.value.render()


def test_over_takes_a_corpus_not_a_dataset(registry):
    from mechstudy.engine import spec
    from mechstudy.engine.spec import CORPUS, DatasetSpec, MODEL, OpSpec, Param

    registry.DATASETS["corpus.text"] = DatasetSpec("corpus.text", 1, (Param("path", str),), lambda *a: None,
                                                   provides=frozenset({"text"}))
    registry.OPS["fit"] = OpSpec("fit", 1, (Param("model", MODEL), Param("corpus", CORPUS)), run=lambda *a: None, verb="fit")
    head = 'model m = hf "tiny"\ndataset d = ioi(n=4)\ncorpus web = text "x"\n'
    point = dict(check(head + "fit m over web\n", "t.study").calls[0].points[0])
    assert point["corpus"].name == "web" and point["corpus"].kind == "dataset"
    with pytest.raises(StudyErrors) as e:
        check(head + "fit m over d\n", "t.study")
    assert e.value.errors[0].message == "'d' is a dataset, not a corpus"
    with pytest.raises(StudyErrors) as e:
        check(head + "fit m over nope\n", "t.study")
    assert "unknown corpus 'nope'" in e.value.errors[0].message
    assert spec.CORPUS == "corpus"


def test_text_and_parquet_corpora_run_and_a_lens_reads_text(stdlib_loaded, tiny_gpt2_dir, tmp_path, monkeypatch):
    from mechstudy.engine.run import run_study
    from mechstudy.engine.store import Store

    monkeypatch.chdir(tmp_path)
    books = _write_text(tmp_path)
    docs = [p for f in sorted(books.iterdir()) for p in f.read_text().split("\n\n") if p.strip()]
    pl.DataFrame({"body": docs}).write_parquet(tmp_path / "docs.parquet")
    study = tmp_path / "c.study"
    study.write_text(f'model m = hf "{tiny_gpt2_dir}"\n'
                     'corpus web = text "books" tokens=24 context=6\n'
                     'corpus pq = parquet "docs.parquet" column=body tokens=24 context=6\n'
                     "lw = lens resid_post in all layers of m on web at all positions\n"
                     "lp = lens resid_post in all layers of m on pq at all positions\n")
    res = run_study(study, cache=tmp_path / "cache", device="cpu", report=False)
    store = Store(tmp_path / "cache")
    corpora = {n.param("generator"): store.get(n.key) for n in res.plan.nodes() if n.op == "dataset"}
    text, pq = corpora["corpus.text"], corpora["corpus.parquet"]
    # the same documents in the same order: the same rows, whichever source read them
    assert torch.equal(torch.as_tensor(text.tensors["input_ids"]), torch.as_tensor(pq.tensors["input_ids"]))
    assert text.data["rows"] == 4 and text.data["tokens"] == 24
    lw = store.get(res.plan.results["lw"].nodes[0].key).tables["result"]
    assert lw["kl"][-1] < 1e-6 and lw["kl"][0] > 0 and "answer_prob" not in lw.columns  # text has no answers


def test_zoo_corpus_streams_the_training_text_and_held_out_text_never_in_it(stdlib_loaded, tmp_path, monkeypatch):
    """`corpus c = zoo "mini" split=train|heldout`: the train rows are mini's own training documents
    (the recipe's code, in its order) tokenised by the reader; every held-out document is absent from
    the training documents, is drawn by the same recipe, and the stream is the same on every run."""
    import itertools

    from transformers import AutoTokenizer

    from mechstudy.engine.run import run_study
    from mechstudy.engine.store import Store
    from mechstudy.stdlib.datasets.corpus import pack
    from mechstudy.stdlib.zoo import MODELS_DIR, corpus as zc

    monkeypatch.chdir(tmp_path)
    study = tmp_path / "z.study"
    study.write_text('model m = zoo "mini"\n'
                     'corpus seen = zoo "mini" split=train tokens=512 context=64\n'
                     'corpus held = zoo "mini" split=heldout tokens=512 context=64\n'
                     "ls = lens resid_post in all layers of m on seen at all positions\n"
                     "lh = lens resid_post in all layers of m on held at all positions\n")
    res = run_study(study, cache=tmp_path / "cache", device="cpu", report=False)
    store = Store(tmp_path / "cache")
    got = {store.get(n.key).data["split"]: store.get(n.key) for n in res.plan.nodes() if n.op == "dataset"}
    tok = AutoTokenizer.from_pretrained(MODELS_DIR / "mini")
    train_docs = zc.training_documents("mini", 0)
    expected = pack(iter(train_docs), tok, 64, 512)
    assert torch.equal(torch.as_tensor(got["train"].tensors["input_ids"]), expected["input_ids"])
    assert got["train"].data["rows"] == 8 and got["heldout"].data["rows"] == 8
    held = list(itertools.islice(zc.heldout_documents("mini", 0), 3000))
    seen = {d.strip() for d in train_docs}
    assert not [d for d in held if d.strip() in seen]
    assert held == list(itertools.islice(zc.heldout_documents("mini", 0), 3000))  # deterministic
    assert sum(" gave " in d for d in held) > 800 and sum(" lasted from " in d for d in held) > 100  # same recipe
    assert torch.equal(torch.as_tensor(got["heldout"].tensors["input_ids"]), pack(iter(held), tok, 64, 512)["input_ids"])
    # an operator reads the zoo corpus as text (the last layer decodes to the model itself)
    ls = store.get(res.plan.results["ls"].nodes[0].key).tables["result"]
    assert ls["kl"][-1] < 1e-6
    with pytest.raises(StudyErrors) as e:
        check('model m = zoo "mini"\ncorpus c = zoo "attn2" tokens=64 context=8\n', "z.study")
    assert "zoo model 'attn2' has no text corpus" in e.value.render() and "^" in e.value.render()
