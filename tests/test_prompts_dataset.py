"""The `prompts` dataset: prompts written inline are the `file` dataset's rows, checked at `study check`."""

from __future__ import annotations

import polars as pl
import pytest
import torch

from mechstudy.engine import cli
from mechstudy.engine.spec import OptionError
from mechstudy.stdlib.datasets import file as file_ds
from mechstudy.stdlib.datasets.prompts import file_params, prepare, provides_of, table_of
from mechstudy.stdlib.models.tiny import make_tiny_tokenizer

TEXT = ["Then, Mary and John went to the store. John gave a drink to",
        "When Anna and Paul had lunch at the park, Paul handed a bag to"]
PARAMS = {"text": TEXT, "answer": ["Mary", "Anna"], "wrong": ["John", "Paul"],
          "corrupted": ["Then, Alice and David went to the store. Laura gave a drink to",
                        "When Emily and Mark had lunch at the park, Simon handed a bag to"],
          "label": ["baba", "abba"], "answer_space": True, "prepend_bos": None}


def test_inline_prompts_equal_the_same_rows_read_from_a_file(tmp_path):
    tok = make_tiny_tokenizer()
    path = tmp_path / "p.csv"
    pl.DataFrame({"text": TEXT, "io": PARAMS["answer"], "s": PARAMS["wrong"], "abc": PARAMS["corrupted"],
                  "kind": PARAMS["label"]}).write_csv(path)
    want = file_ds.generate(tok, file_ds.read(str(path)), {"path": str(path), "prompt": "text", "answer": "io",
                                                           "wrong": "s", "corrupted": "abc", "label": "kind"})
    got = file_ds.generate(tok, table_of(PARAMS), file_params(PARAMS))
    assert sorted(got.tensors) == sorted(want.tensors)
    assert all(torch.equal(got.tensors[k], want.tensors[k]) for k in want.tensors)
    # and by hand: the prompt's tokens, the answers' tokens, class indices in sorted order
    for i, text in enumerate(TEXT):
        ids = tok(text)["input_ids"]
        assert got.tensors["clean_ids"][i, : len(ids)].tolist() == ids and got.tensors["answer_pos"][i] == len(ids) - 1
    assert got.tensors["io_id"].tolist() == [tok.convert_tokens_to_ids(w) for w in PARAMS["answer"]]
    assert got.tensors["labels"].tolist() == [1, 0]
    assert provides_of(PARAMS) == frozenset({"answers", "corrupted", "labels"})
    assert provides_of({"text": TEXT, "answer": ["Mary", "Anna"]}) == frozenset()


@pytest.mark.parametrize("params,option,words", [
    ({"text": TEXT, "answer": ["Mary"]}, "answer", "answer has 1 element(s) but text has 2 prompt(s)"),
    ({"text": TEXT, "wrong": ["John", 3]}, "wrong", "wrong: element 1 is not a string"),
    ({"text": TEXT, "label": ["a", 1]}, "label", "all strings, all numbers or all booleans"),
    ({"text": ["a"] * 1001}, "text", "1001 prompts written inline; at most 1000"),
    ({"text": TEXT, "answer": ["", "Anna"]}, "answer", "answer: element 0 is empty"),
])
def test_mistakes_blame_their_option(params, option, words):
    with pytest.raises(OptionError) as e:
        prepare(params)
    assert e.value.option == option and words in e.value.message


def test_study_check_points_at_the_option_and_a_run_uses_the_prompts(tmp_path, tiny_gpt2_dir, capsys):
    """A length mismatch is a file:line:col error at the option; a correct study evaluates
    logit_diff on exactly these prompts (checked against the model's own logits)."""
    bad = tmp_path / "bad.study"
    bad.write_text(f'model m = hf "{tiny_gpt2_dir}"\n'
                   'dataset p = prompts(text=["a b", "c d"], answer=[" e"])\n'
                   "x = evaluate m on p with prob\n")
    assert cli.main(["check", str(bad)]) == cli.STUDY_ERRORS
    err = capsys.readouterr().err
    assert "Traceback" not in err
    col = bad.read_text().splitlines()[1].index("answer=") + 1
    assert f"{bad}:2:{col}: error: answer has 1 element(s) but text has 2 prompt(s)" in err

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    text = ["Then, Mary and John went to the store. John gave a drink to",
            "When Anna and Paul had lunch at the park, Paul handed a bag to"]
    good = tmp_path / "good.study"
    good.write_text(f'model m = hf "{tiny_gpt2_dir}"\n'
                    f'dataset p = prompts(text=["{text[0]}", "{text[1]}"], answer=["Mary", "Anna"], '
                    'wrong=["John", "Paul"], corrupted=["Then, Alice and David went to the store. Laura gave a '
                    'drink to", "When Emily and Mark had lunch at the park, Simon handed a bag to"])\n'
                    "x = evaluate m on p with logit_diff\n")
    cache = str(tmp_path / "cache")
    assert cli.main(["run", str(good), "--cache", cache, "--out", str(tmp_path / "out"), "--quiet"]) == 0
    import mechstudy as ms

    got = ms.run(str(good), cache=cache)["x"].table
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval()
    corrupted = ["Then, Alice and David went to the store. Laura gave a drink to",
                 "When Emily and Mark had lunch at the park, Simon handed a bag to"]

    def diffs(prompts: list[str]) -> torch.Tensor:
        out = []
        for t, io, s in zip(prompts, ("Mary", "Anna"), ("John", "Paul")):
            with torch.no_grad():
                logits = model(tok(t, return_tensors="pt")["input_ids"]).logits[0, -1]
            out.append((logits[tok(" " + io)["input_ids"][0]] - logits[tok(" " + s)["input_ids"][0]]).item())
        return torch.tensor(out)

    rows = {r["run"]: r for r in got.to_dicts()}
    for run, prompts in (("clean", text), ("corrupted", corrupted)):
        want = diffs(prompts)
        assert rows[run]["n"] == 2
        assert rows[run]["mean"] == pytest.approx(want.mean().item(), abs=1e-4)
        assert rows[run]["std"] == pytest.approx(want.std().item(), abs=1e-4)
