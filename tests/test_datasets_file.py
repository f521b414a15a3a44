"""The file dataset: declared columns, formats, tokenisation, errors, content hash, and a study run."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import polars as pl
import pytest
import torch

from mechstudy.stdlib.datasets import pad_id_of
from mechstudy.stdlib.datasets.file import ColumnError, generate, prepare, provides_of, read
from mechstudy.stdlib.models.tiny import make_tiny_tokenizer

ROOT = Path(__file__).resolve().parent.parent
STUDY = ROOT / "studies" / "datasets_file.study"
ROWS = {
    "text": ["Then, Mary and John went to the store. John gave a drink to",
             "When Anna and Paul had lunch at the park, Paul handed a bag to",
             "Then, Kevin and Sarah met at the station. Kevin gave a snack to"],
    "io": ["Mary", "Anna", "Sarah"],
    "s": ["John", "Paul", "Kevin"],
    "abc": ["Then, Alice and David went to the store. Laura gave a drink to",
            "When Emily and Mark had lunch at the park, Simon handed a bag to",
            "Then, Lisa and Peter met at the station. Ryan gave a snack to"],
    "kind": ["baba", "abba", "baba"],
    "score": [1, 0, 1],
    "weight": [0.5, 1.5, 2.5],
    "flag": [True, False, True],
}
DECL = {"prompt": "text", "answer": "io", "wrong": "s", "corrupted": "abc", "label": "kind"}


@pytest.fixture(scope="module")
def tok():
    return make_tiny_tokenizer()


@pytest.fixture()
def csv_file(tmp_path):
    p = tmp_path / "prompts.csv"
    pl.DataFrame(ROWS).write_csv(p)
    return p


def _params(path, **kw):
    return {"path": str(path), **{r: None for r in ("answer", "wrong", "corrupted", "label")}, **DECL, **kw}


def test_tensors_from_declared_columns(csv_file, tok):
    ds = generate(tok, read(str(csv_file)), _params(csv_file))
    t = ds.tensors
    assert sorted(t) == ["answer_pos", "attention_mask", "clean_ids", "corrupted_ids", "io_id", "labels", "s_id"]
    for i, text in enumerate(ROWS["text"]):
        ids = tok(text)["input_ids"]
        n = len(ids)
        assert t["clean_ids"][i, :n].tolist() == ids and t["attention_mask"][i].sum() == n == t["answer_pos"][i] + 1
        assert t["corrupted_ids"][i, :n].tolist() == tok(ROWS["abc"][i])["input_ids"]
        assert not t["attention_mask"][i, n:].any()
        assert t["io_id"][i] == tok.convert_tokens_to_ids(ROWS["io"][i])
        assert t["s_id"][i] == tok.convert_tokens_to_ids(ROWS["s"][i])
    assert t["labels"].tolist() == [1, 0, 1] and ds.data["label_classes"] == ["abba", "baba"]
    assert ds.data["provides"] == ["answers", "corrupted", "labels"]
    assert ds.tables["prompts"].columns == ["row", "prompt", "answer", "wrong", "corrupted", "label", "length",
                                             "answer_pos"]
    only = generate(tok, read(str(csv_file)), {"path": str(csv_file), "prompt": "text", "n": 2})
    assert sorted(only.tensors) == ["answer_pos", "attention_mask", "clean_ids"]
    assert only.tensors["clean_ids"].shape[0] == 2
    assert torch.equal(only.tensors["clean_ids"], t["clean_ids"][:2, : only.tensors["clean_ids"].shape[1]])


def test_every_format_reads_the_same(tmp_path, csv_file, tok):
    df = pl.DataFrame(ROWS)
    df.write_parquet(tmp_path / "p.parquet")
    df.write_ndjson(tmp_path / "p.jsonl")
    df.write_json(tmp_path / "p.json")
    df.write_csv(tmp_path / "p.tsv", separator="\t")
    df.write_csv(tmp_path / "p.txt")
    want = generate(tok, read(str(csv_file)), _params(csv_file)).tensors
    for name, fmt in (("p.parquet", "auto"), ("p.jsonl", "auto"), ("p.json", "auto"), ("p.tsv", "auto"),
                      ("p.txt", "csv")):
        path = tmp_path / name
        got = generate(tok, read(str(path), fmt), _params(path, format=fmt)).tensors
        assert all(torch.equal(got[k], want[k]) for k in want), name
    with pytest.raises(ColumnError, match="cannot tell the format of .*p.txt"):
        read(str(tmp_path / "p.txt"))


def test_labels_of_each_type(csv_file, tok):
    table = read(str(csv_file))
    lab = lambda col: generate(tok, table, {"path": "x", "prompt": "text", "label": col})  # noqa: E731
    assert lab("score").tensors["labels"].dtype == torch.long and lab("score").tensors["labels"].tolist() == [1, 0, 1]
    assert lab("weight").tensors["labels"].tolist() == [0.5, 1.5, 2.5] and lab("weight").data["label_classes"] is None
    flag = lab("flag")
    assert flag.tensors["labels"].tolist() == [1, 0, 1] and flag.data["label_classes"] == [False, True]


def test_missing_columns_name_the_column_and_list_the_file(csv_file):
    with pytest.raises(ColumnError) as e:
        prepare(_params(csv_file, answer="ioo"))
    assert e.value.option == "answer" and e.value.message == f"{csv_file} has no column 'ioo' (given as answer=ioo)"
    assert e.value.hint == "did you mean 'io'? its columns are: text, io, s, abc, kind, score, weight, flag"
    with pytest.raises(ColumnError) as e:
        prepare({"path": str(csv_file)})  # prompt= defaults to a column called "prompt"
    assert e.value.option == "prompt" and "prompt= defaults to 'prompt'" in e.value.message
    assert e.value.hint.startswith("name the column with prompt=COLUMN; its columns are: text, io")
    with pytest.raises(ColumnError, match=r"has no column 'zzz' \(given as label=zzz\); its columns are: text"):
        prepare(_params(csv_file, label="zzz"))
    with pytest.raises(ColumnError, match="no such file: nope.csv") as e:
        prepare({"path": "nope.csv", "prompt": "text"})
    assert e.value.option == "path" and "current directory" in e.value.hint


def test_bad_values_are_clear_errors(tmp_path, csv_file, tok):
    table = read(str(csv_file))
    with pytest.raises(ColumnError, match=r"column 'text' \(answer=\) must hold single tokens; rows 0, 1, 2 do not "
                                          r"\(row 0: ' Then, Mary"):
        generate(tok, table, {"path": "f", "prompt": "text", "answer": "text"})
    with pytest.raises(ColumnError, match=r"corrupted prompts \(column 'io'\) must be as many tokens long as their "
                                          r"prompts; rows 0, 1, 2 are not"):
        generate(tok, table, {"path": "f", "prompt": "text", "corrupted": "io"})
    holes = table.with_columns(pl.when(pl.col("score") == 0).then(None).otherwise(pl.col("io")).alias("io"))
    with pytest.raises(ColumnError, match=r"column 'io' \(answer=\) has no value in row 1$"):
        generate(tok, holes, {"path": "f", "prompt": "text", "answer": "io"})
    unknown = table.with_columns(pl.lit("Zebedee").alias("io"))
    with pytest.raises(ColumnError, match=r"\(row 0: ' Zebedee' is 1 token, unknown\)"):
        generate(tok, unknown, {"path": "f", "prompt": "text", "answer": "io"})


def test_answer_space():
    from transformers import PreTrainedTokenizerFast

    from mechstudy.stdlib.zoo.vocab import EOS, train_bpe

    # Byte-level BPE, as GPT-2's: "Mary" (starting a text) and " Mary" are different tokens.
    btok = PreTrainedTokenizerFast(tokenizer_object=train_bpe(["Mary gave it to Mary.", "Then it went to Mary."]),
                                   eos_token=EOS)
    mary, space_mary = btok("Mary")["input_ids"], btok(" Mary")["input_ids"]
    assert len(mary) == len(space_mary) == 1 and mary != space_mary
    table = pl.DataFrame({"p": ["Then it went to", "Then it went to "], "a": ["Mary", "Mary"], "b": [" Mary", "Mary"]})
    decl = {"path": "f", "prompt": "p", "answer": "a", "wrong": "b"}
    got = lambda **kw: generate(btok, table, {**decl, **kw}).tensors  # noqa: E731
    # A space before a bare answer after a prompt that does not end in one; never a second space.
    assert got()["io_id"].tolist() == space_mary + mary and got()["s_id"].tolist() == space_mary + mary
    assert got(answer_space=False)["io_id"].tolist() == mary * 2
    assert got(answer_space=False)["s_id"].tolist() == space_mary + mary


def test_provides_and_content_hash(tmp_path, csv_file, monkeypatch):
    assert provides_of(_params(csv_file)) == {"answers", "corrupted", "labels"}
    assert provides_of({"path": "f", "answer": "io"}) == frozenset()  # logit_diff needs both answers
    assert provides_of({"path": "f", "corrupted": "abc"}) == {"corrupted"}
    first = prepare(_params(csv_file))
    assert {k: v for k, v in first.items() if k != "content_hash"} == _params(csv_file)
    assert prepare(_params(csv_file))["content_hash"] == first["content_hash"]
    csv_file.write_text(csv_file.read_text().replace("drink", "snack"))
    assert prepare(_params(csv_file))["content_hash"] != first["content_hash"]
    monkeypatch.chdir(tmp_path)  # relative paths: from the current directory
    assert prepare(_params("prompts.csv"))["content_hash"] == prepare(_params(csv_file))["content_hash"]


def test_run_refuses_a_file_changed_since_the_check(csv_file, tiny_model_artifact):
    from mechstudy.engine import spec
    from mechstudy.engine.context import Context

    run = spec.DATASETS["file"].run
    ctx = Context(device="cpu", max_rows=4)
    params = prepare(_params(csv_file))
    assert run({"model": tiny_model_artifact}, params, ctx).data["content_hash"] == params["content_hash"]
    csv_file.write_text(csv_file.read_text().replace("drink", "snack"))
    with pytest.raises(ColumnError, match="changed after the study was checked"):
        run({"model": tiny_model_artifact}, params, ctx)


def test_study_run_on_the_tiny_model(tmp_path, tiny_gpt2_dir, tiny_adapter, monkeypatch, capsys):
    """studies/datasets_file.study end to end (its relative data path read from the repository root);
    its evaluate matches logits computed by hand from the CSV; a misspelt column fails by name."""
    from mechstudy.engine import cli

    monkeypatch.chdir(ROOT)
    study = tmp_path / "datasets_file.study"
    text = STUDY.read_text()
    assert 'model m = zoo "mini"' in text
    study.write_text(text.replace('zoo "mini"', f'hf "{tiny_gpt2_dir}"'))
    cache = str(tmp_path / "cache")
    assert cli.main(["run", str(study), "--cache", cache, "--out", str(tmp_path / "out")]) == 0
    assert "0 from cache" in capsys.readouterr().out
    assert cli.main(["show", str(study), "base", "--cache", cache, "--format", "csv"]) == 0
    base = {r["run"]: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    rows = list(csv.DictReader(open(ROOT / "studies" / "data" / "prompts.csv")))
    tok = tiny_adapter.tokenizer
    want = {"clean": [], "corrupted": []}
    for r in rows:
        io_id, s_id = (tok.convert_tokens_to_ids(r[k]) for k in ("answer", "wrong"))
        for run, col in (("clean", "text"), ("corrupted", "corrupted")):
            with torch.no_grad():
                lg = tiny_adapter.model(input_ids=torch.tensor([tok(r[col])["input_ids"]])).logits[0, -1]
            want[run].append((lg[io_id] - lg[s_id]).item())
    for run in want:
        assert int(base[run]["n"]) == len(rows) == 12
        assert float(base[run]["mean"]) == pytest.approx(sum(want[run]) / len(rows), abs=1e-5)

    study.write_text(study.read_text().replace("wrong=wrong", "wrong=wrnog"))
    assert cli.main(["run", str(study), "--cache", cache, "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "studies/data/prompts.csv has no column 'wrnog' (given as wrong=wrnog)" in err
    assert "did you mean 'wrong'? its columns are: text, answer, wrong, corrupted, order" in err


def _reference(tokenizer, texts, bos):
    """The slow, obviously right way: one tokenizer call per row, then pad_right."""
    from mechstudy.stdlib.datasets import encode, pad_right

    return pad_right([encode(tokenizer, t, bos) for t in texts], pad_id_of(tokenizer))


@pytest.mark.parametrize("bos", [None, True, False])
def test_batched_tokenisation_equals_row_by_row(tok, bos):
    """More rows than one batch, of varied lengths, on the word-level and the zoo's BPE tokenizer:
    the same ids and masks as tokenising each row alone."""
    from transformers import AutoTokenizer

    from mechstudy.stdlib.datasets import file as filemod

    bpe = AutoTokenizer.from_pretrained(str(ROOT / "stdlib" / "zoo" / "models" / "mini"), local_files_only=True)
    base = ROWS["text"]
    n = filemod.BATCH + 1234
    texts = [" ".join(base[i % 3].split()[: 3 + i % 9]) + (" to" if i % 5 else "") for i in range(n)]
    table = pl.DataFrame({"text": texts, "io": [ROWS["io"][i % 3] for i in range(n)]})
    for t in (tok, bpe):
        ds = generate(t, table, {"path": "f", "prompt": "text", "answer": "io", "prepend_bos": bos})
        ids, mask = _reference(t, texts, bos)
        assert torch.equal(ds.tensors["clean_ids"], ids) and torch.equal(ds.tensors["attention_mask"], mask)
        assert ds.tables["prompts"]["length"].to_list() == mask.sum(1).tolist()
        want_io = [t(" " + a if not p.endswith(" ") else a, add_special_tokens=False)["input_ids"][0]
                   for a, p in zip(table["io"], texts)]
        assert ds.tensors["io_id"].tolist() == want_io


def test_progress_is_reported_per_batch_and_a_stop_ends_the_work(tok):
    from mechstudy.engine.nodeprogress import Interrupted
    from mechstudy.stdlib.datasets import file as filemod

    n = 3 * filemod.BATCH + 5
    table = pl.DataFrame({"text": [ROWS["text"][i % 3] for i in range(n)], "abc": [ROWS["abc"][i % 3] for i in range(n)]})
    seen = []
    generate(tok, table, {"path": "f", "prompt": "text", "corrupted": "abc"}, progress=lambda d, t, note: seen.append((d, t)))
    assert seen[-1] == (2 * n, 2 * n) and len(seen) == 8 and all(a[0] < b[0] for a, b in zip(seen, seen[1:]))

    def stop(done, total, note):
        if done >= filemod.BATCH:
            raise Interrupted("stop requested")

    with pytest.raises(Interrupted):
        generate(tok, table, {"path": "f", "prompt": "text", "corrupted": "abc"}, progress=stop)


def test_study_run_reports_tokenisation_progress_as_events(tmp_path, tiny_gpt2_dir, capfd, monkeypatch):
    """`study run --json` carries the dataset node's ctx.progress calls as "progress" events."""
    import json

    from mechstudy.engine import cli

    monkeypatch.chdir(tmp_path)
    pl.DataFrame(ROWS).write_csv(tmp_path / "p.csv")
    study = tmp_path / "s.study"
    study.write_text(f'model m = hf "{tiny_gpt2_dir}"\n'
                     'dataset d = file "p.csv" prompt=text answer=io wrong=s corrupted=abc\n'
                     "base = evaluate m on d with logit_diff\n")
    assert cli.main(["run", str(study), "--cache", str(tmp_path / "c"), "--json", "--out", str(tmp_path / "o")]) == 0
    events = [json.loads(line) for line in capfd.readouterr().out.splitlines()]
    inside = [e for e in events if e["event"] == "progress"]
    assert inside and {e["op"] for e in inside} == {"dataset"} and inside[-1]["done"] == inside[-1]["total"] == 12
    assert inside[-1]["note"] == "rows tokenised" and len(inside[-1]["key"]) == 32
