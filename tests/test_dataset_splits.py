"""`split=train|heldout|novel|all` of the ioi, greater_than and facts generators, and how the
default is chosen (a zoo model's splits.json, else all). Prompts are built with mini's tokenizer
(every dataset word is one token there); whether mini read them is tests/test_zoo_splits.py's job."""

from __future__ import annotations

import json

import pytest

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact
from mechstudy.stdlib.datasets import facts as F
from mechstudy.stdlib.datasets import greater_than as GT
from mechstudy.stdlib.datasets import ioi as IOI
from mechstudy.stdlib.datasets import reference
from mechstudy.stdlib.datasets import splits as S
from mechstudy.stdlib.zoo import MODELS_DIR


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(MODELS_DIR / "mini")


def _filled(template: str, row: dict) -> bool:
    """Whether a clean IOI prompt is `template` (less its final [A]) filled with the row's words."""
    body = template[: -len(" [A]")]
    order = [row["io"] if m == "A" else row["s"] for m in IOI._SLOT.findall(body)]
    text = IOI._fill(body, order, "\0", "\1")
    pieces = text.replace("\1", "\0").split("\0")
    clean = row["clean"]
    return clean.startswith(pieces[0]) and clean.endswith(pieces[-1]) and all(p in clean for p in pieces)


def test_ioi_splits_hold_what_their_docstring_says(tok):
    ref = reference("ioi")
    published = ref["BABA_TEMPLATES"]
    novel = S.partition("ioi")["novel_templates"]
    assert IOI.templates("all") == published + ref["ABBA_TEMPLATES_derived"]
    assert IOI.templates("all")[15:] == [IOI.abba(t) for t in published]  # the mirror is the published one
    assert set(IOI.templates("train")[:12]) | set(IOI.templates("heldout")[:3]) == set(published)
    assert not set(IOI.templates("novel")) & set(IOI.templates("all"))
    assert IOI.templates("novel")[:10] == novel and len(novel) == 10
    for split in S.SPLITS:
        art = IOI.generate(tok, n=48, seed=1, split=split)
        temps = IOI.templates(split)
        assert art.data["split"] == split and art.data["templates_in_split"] == len(temps)
        rows = list(art.tables["prompts"].iter_rows(named=True))
        assert all(_filled(temps[r["template"]], r) for r in rows), split
        assert all(r["abba"] == (r["template"] >= len(temps) // 2) for r in rows)
        assert all(r["clean"].count(" " + r["s"]) == 2 - (r["clean"].startswith(r["s"])) for r in rows)
    fixed = IOI.generate(tok, n=8, seed=0, template=3, split="novel")
    assert fixed.tensors["attention_mask"].all() and set(fixed.tables["prompts"]["template"]) == {3}
    assert fixed.tables["prompts"]["clean"][0].startswith("Yesterday, ")
    with pytest.raises(ValueError, match=r"template must be in 0..5 \(split heldout\)"):
        IOI.generate(tok, n=2, template=6, split="heldout")


def test_greater_than_splits(tok):
    held = set(GT.split_nouns("heldout"))
    assert held == set(GT.split_nouns("novel")) and not held & set(GT.split_nouns("train"))
    for split in S.SPLITS:
        art = GT.generate(tok, n=40, seed=0, split=split)
        rows = art.tables["prompts"]
        form = GT.sentence(art.data["form"])
        assert art.data["form"] == {"novel": "began"}.get(split, "hanna")
        assert all(c == form.format(noun=nn, year=y, century=y // 100)
                   for c, nn, y in zip(rows["clean"], rows["noun"], rows["year"]))
        assert all((nn in held) == (split in ("heldout", "novel")) for nn in rows["noun"]) or split == "all"
        assert rows["yy"].to_list()[:3] == [3, 4, 5]  # balanced cycling (YY 02 is each century's first valid year, dropped)
    assert GT.sentence("hanna") == reference("greater_than")["hanna_clean_sentence"]
    assert GT.generate(tok, n=4, split="novel", form="started").tables["prompts"]["clean"][0].endswith(
        "and was over by " + str(GT.generate(tok, n=4, split="novel", form="started").tables["prompts"]["century"][0]))
    with pytest.raises(ValueError, match="not a form of split novel"):
        GT.generate(tok, n=4, split="novel", form="hanna")


def test_facts_splits(tok):
    for split in F.SPLITS:
        rows = F.generate(tok, n=30, seed=0, split=split).tables["prompts"]
        if split == "novel":
            assert all(c.startswith(("The seat of the government of ", "Tourists come to see the ")) for c in rows["clean"])
        else:
            assert set(rows["clean"]) <= {f["prompt"] for f in F.facts("all")}
    assert [f["subject"] for f in F.facts("all", "novel")] == [f["subject"] for f in F.facts("all")]
    with pytest.raises(ValueError, match="split must be one of train, novel, all"):
        F.facts("all", "heldout")


def test_default_split_comes_from_the_model_directory(tmp_path):
    assert S.resolve("ioi", None, {"path": str(tmp_path)}) == ("all", "default for a model without splits.json")
    (tmp_path / "splits.json").write_text(json.dumps({"evaluate_on": {"ioi": "novel"}}))
    assert S.resolve("ioi", None, {"path": str(tmp_path)})[0] == "novel"
    assert S.resolve("greater_than", None, {"path": str(tmp_path)})[0] == "all"
    assert S.resolve("ioi", "train", {"path": str(tmp_path)}) == ("train", "declared")


def test_dataset_artifacts_say_which_split_and_why(stdlib_loaded, tiny_gpt2_dir, tok):
    mini = Artifact(data={"path": str(MODELS_DIR / "mini")})
    for name in ("ioi", "greater_than", "facts"):
        art = spec.DATASETS[name].run({"model": mini}, {"n": 4, "seed": 0}, None)
        assert art.data["split"] == "novel" and "never saw" in art.data["split_source"], name
        declared = spec.DATASETS[name].run({"model": mini}, {"n": 4, "seed": 0, "split": "train"}, None)
        assert declared.data["split"] == "train" and declared.data["split_source"] == "declared"
    # a model without splits.json gets the published dataset, exactly as before splits existed
    other = spec.DATASETS["ioi"].run({"model": Artifact(data={"path": str(tiny_gpt2_dir)})}, {"n": 6, "seed": 0}, None)
    assert other.data["split"] == "all"
    from transformers import AutoTokenizer

    same = IOI.generate(AutoTokenizer.from_pretrained(tiny_gpt2_dir), n=6, seed=0)
    assert other.tables["prompts"]["clean"].to_list() == same.tables["prompts"]["clean"].to_list()


def test_split_mistakes_are_check_errors(stdlib_loaded):
    from mechstudy.lang import StudyErrors, check

    head = 'model m = zoo "mini"\n'
    for line, needle in [("dataset gt = greater_than(n=4, split=novel, form=hanna)", "not a form of split novel"),
                         ("dataset f = facts(n=4, split=heldout)", "heldout"),
                         ("dataset i = ioi(n=4, split=seen)", "seen"),
                         ("dataset i = ioi(n=4, split=heldout, template=6)", "template must be in 0..5 for split heldout")]:
        with pytest.raises(StudyErrors) as e:
            check(head + line + "\n", "s.study")
        text = e.value.render()
        assert "s.study:2:" in text and needle in text and "^" in text and "Traceback" not in text, text
    check(head + "dataset gt = greater_than(n=4, split=heldout, form=acdc)\ndataset i = ioi(split=novel)\n", "s.study")
