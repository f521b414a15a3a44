"""`train crosscoder` (op train_crosscoder): one dictionary over several layers, or over the same layer
of two models (model diffing): the plan reads each model's shards of the corpus tokenised by itself,
the blocks' decoder norms and relative norms equal the weights', a model with another tokenisation is
refused, and a study with two models trains end to end."""

from __future__ import annotations

import pytest
import torch

from mechstudy.engine.context import Context


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, tiny_gpt2_dir):
    """The tiny GPT-2 and a second one with the same tokenizer and other weights (seed 1)."""
    from mechstudy.stdlib.models.tiny import make_tiny_gpt2

    return tiny_gpt2_dir, make_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2-b"), seed=1)


def _study(tmp_path, a, b, line):
    text = (f'model a = hf "{a}"\nmodel b = hf "{b}"\n'
            'corpus web = text "web.txt" tokens=640 context=8\n' + line + "\n")
    (tmp_path / "web.txt").write_text("When John and Mary went to the store , John gave a drink to Mary .\n\n" * 40)
    (tmp_path / "s.study").write_text(text)
    return tmp_path / "s.study"


def test_two_models_train_one_crosscoder(stdlib_loaded, tmp_path, two_models, monkeypatch):
    from mechstudy.engine.run import run_study
    from mechstudy.engine.store import Store
    from mechstudy.stdlib.ops.train_dictionary import load

    monkeypatch.chdir(tmp_path)
    a, b = two_models
    study = _study(tmp_path, a, b, "cc = train crosscoder resid_post in layer 1 of a over web other=b width=96 k=8 "
                                   "batch=64 steps=40 checkpoint=20")
    res = run_study(study, cache=tmp_path / "cache", device="cpu", report=False)
    node = res.plan.results["cc"].nodes[0]
    shards = sorted((name, c.input("model").param("ref")) for name, c in node.inputs if name.startswith("shard"))
    assert shards == [("shard0_000", str(a)), ("shard1_000", str(b))]
    # the second model reads the corpus tokenised by itself: its own dataset node
    corpora = {c.input("corpus").key for name, c in node.inputs if name.startswith("shard")}
    assert len(corpora) == 2
    art = Store(tmp_path / "cache").get(node.key)
    shape = art.data["shape"]
    assert (shape["d_in"], shape["groups"], art.data["models"]) == (128, 2, 2)
    fvu = art.tables["history"]["fvu"].to_list()
    assert fvu[-1] < fvu[0]
    W = load(art).W_dec.detach()
    na, nb = W[:, :64].norm(dim=-1), W[:, 64:].norm(dim=-1)
    feats = art.tables["features"]
    assert feats["norm_0"].to_list() == pytest.approx(na.tolist(), rel=1e-5)
    assert feats["rel_norm"].to_list() == pytest.approx((nb / (na + nb)).tolist(), rel=1e-5)


def test_a_model_that_tokenises_differently_is_refused(stdlib_loaded, tiny_model_artifact, tiny_adapter):
    from mechstudy.engine import spec
    from mechstudy.stdlib.activations import shard_inputs
    from mechstudy.stdlib.datasets.corpus import pack

    ctx = Context(device="cpu", max_rows=4)
    docs = ["When John and Mary went to the store"] * 10

    def shard(text_docs):
        corpus = spec.Artifact(tensors=pack(text_docs, tiny_adapter.tokenizer, context=8, tokens=64))
        return spec.OPS["activations"].execute({"model": tiny_model_artifact, "corpus": corpus},
                                               {"site": "resid_post", "layer": 0}, ctx)

    same, other = shard(docs), shard(["Then Mary went to the office and John went home"] * 10)
    params = {"layers": [0], "model": "a", "corpus": "c", "other": "b", "width": 32, "k": 4, "batch": 16, "steps": 2,
              "checkpoint": 2, "log_every": 1}
    inputs = {"model": tiny_model_artifact, "corpus": None, "other": tiny_model_artifact}
    with pytest.raises(ValueError, match="tokenise the corpus differently"):
        spec.OPS["train_crosscoder"].execute({**inputs, **shard_inputs([same], [other])}, params, ctx)
    art = spec.OPS["train_crosscoder"].execute({**inputs, **shard_inputs([same], [same])}, params, ctx)
    assert art.data["shape"]["groups"] == 2 and "rel_norm" in art.tables["features"].columns
    with pytest.raises(ValueError, match="reads two"):
        spec.OPS["score_dictionary"].execute({"dictionary": art, "model": tiny_model_artifact, "corpus": None},
                                             {"dictionary": "s", "corpus": "c"}, ctx)


def test_layers_of_one_model(stdlib_loaded, tiny_model_artifact, tiny_adapter):
    """Without `other`: the site at every listed layer, concatenated; no relative norm."""
    from mechstudy.engine import spec
    from mechstudy.stdlib.activations import shard_inputs
    from mechstudy.stdlib.datasets.corpus import pack

    ctx = Context(device="cpu", max_rows=4)
    corpus = spec.Artifact(tensors=pack(["When John and Mary went to the store"] * 20, tiny_adapter.tokenizer,
                                        context=8, tokens=160))
    cols = [[spec.OPS["activations"].execute({"model": tiny_model_artifact, "corpus": corpus},
                                             {"site": "resid_post", "layer": l}, ctx)] for l in (0, 1)]
    art = spec.OPS["train_crosscoder"].execute(
        {**shard_inputs(*cols), "model": tiny_model_artifact, "corpus": corpus},
        {"layers": [0, 1], "model": "m", "corpus": "c", "width": 64, "k": 4, "batch": 32, "steps": 10}, ctx)
    assert art.data["models"] == 1 and art.data["shape"]["groups"] == 2
    assert set(art.tables["features"].columns) == {"feature", "norm_0", "norm_1"}
    assert torch.as_tensor(art.tensors["W_dec"]).shape == (64, 128)


@pytest.mark.parametrize("line, message", [
    ("train crosscoder resid_post in layers 0..1 of a over web width=8 k=16", "k (16) is larger than the width (8)"),
    ("train crosscoder resid_post of a over web", "train crosscoder needs `in layer L`"),
])
def test_mistakes_are_check_errors(stdlib_loaded, line, message):
    from mechstudy.lang import StudyErrors, check

    with pytest.raises(StudyErrors) as e:
        check('model a = zoo "mini"\ncorpus web = text "README.md" tokens=256 context=16\n' + line + "\n", "t.study")
    assert message in e.value.errors[0].message, e.value.render()
