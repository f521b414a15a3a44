"""`score sae ...` (op score_dictionary): the spliced-in loss against hand-written hooks on the native
modules, row by row; an SAE trained on zoo mini recovers most of the loss on held-out text; the mini
study's corpora are disjoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mechstudy.engine.context import Context
from mechstudy.engine.spec import Artifact

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def trained(stdlib_loaded, tiny_model_artifact, tiny_adapter):
    from mechstudy.engine import spec
    from mechstudy.stdlib.datasets.corpus import pack

    docs = ["John went to the store and Mary gave a drink to John", "Then Mary went to the office"] * 20
    corpus = Artifact(tensors=pack(docs, tiny_adapter.tokenizer, context=8, tokens=320))
    ctx = Context(device="cpu", max_rows=4)
    shard = spec.OPS["activations"].execute({"model": tiny_model_artifact, "corpus": corpus},
                                            {"site": "resid_post", "layer": 0}, ctx)
    sae = spec.OPS["train_dictionary"].execute(
        {"shard0_000": shard, "model": tiny_model_artifact, "corpus": corpus},
        {"layers": [0], "model": "m", "corpus": "c", "width": 128, "k": 8, "batch": 64, "steps": 60}, ctx)
    return corpus, sae


def _reference(adapter, sae, ids: torch.Tensor) -> dict[str, float]:
    """One row at a time, a plain forward hook on block 0 (GPT-2: its output is resid_post)."""
    block = adapter.model.transformer.h[0]
    sums = {"clean": 0.0, "spliced": 0.0, "zero": 0.0, "kl": 0.0}
    n = 0
    for row in ids:
        row = row[None]
        logs = {}
        for mode in ("clean", "spliced", "zero"):
            def hook(mod, args, out, mode=mode):
                h = out[0] if isinstance(out, tuple) else out
                new = sae(h).detach() if mode == "spliced" else torch.zeros_like(h)
                return (new, *out[1:]) if isinstance(out, tuple) else new
            handle = block.register_forward_hook(hook) if mode != "clean" else None
            with torch.no_grad():
                logits = adapter.model(input_ids=row).logits[0, :-1].double()
            if handle:
                handle.remove()
            logs[mode] = torch.log_softmax(logits, -1)
        target = row[0, 1:]
        for mode in ("clean", "spliced", "zero"):
            sums[mode] += float(-logs[mode][torch.arange(len(target)), target].sum())
        sums["kl"] += float((logs["clean"].exp() * (logs["clean"] - logs["spliced"])).sum())
        n += len(target)
    return {k: v / n for k, v in sums.items()}


def test_the_spliced_loss_matches_hand_written_hooks(trained, tiny_model_artifact, tiny_adapter):
    from mechstudy.engine import spec
    from mechstudy.stdlib.ops.train_dictionary import load

    corpus, sae_art = trained
    out = spec.OPS["score_dictionary"].execute({"dictionary": sae_art, "model": tiny_model_artifact, "corpus": corpus},
                                               {"dictionary": "s", "corpus": "c", "tokens": 320},
                                               Context(device="cpu", max_rows=3))
    ref = _reference(tiny_adapter, load(sae_art), corpus.tensors["input_ids"])
    d = out.data
    assert d["ce_clean"] == pytest.approx(ref["clean"], abs=1e-5)
    assert d["ce_spliced"] == pytest.approx(ref["spliced"], abs=1e-5)
    assert d["ce_zero"] == pytest.approx(ref["zero"], abs=1e-5)
    assert d["kl"] == pytest.approx(ref["kl"], abs=1e-5)
    assert d["ce_recovered"] == pytest.approx((ref["zero"] - ref["spliced"]) / (ref["zero"] - ref["clean"]), abs=1e-4)
    # reconstruction and sparsity over every token, against the dictionary applied by hand
    sae = load(sae_art)
    x = torch.as_tensor(spec.OPS["activations"].execute({"model": tiny_model_artifact, "corpus": corpus},
                                                       {"site": "resid_post", "layer": 0},
                                                       Context(device="cpu")).tensors["acts"])
    f = sae.encode(x).detach()
    err = (sae.decode(f).detach() - x).pow(2).sum()
    assert d["fvu"] == pytest.approx(float(err / (x - x.mean(0)).pow(2).sum()), rel=1e-4)
    assert d["l0"] == pytest.approx(float((f > 0).float().sum(-1).mean()), rel=1e-6) and d["l0"] <= 8
    density = (f > 0).float().mean(0)
    assert d["dead_fraction"] == pytest.approx(float((density == 0).float().mean()))
    assert out.tables["density"]["density"].to_list() == pytest.approx(density.tolist())


def test_an_sae_on_mini_recovers_most_of_the_loss(stdlib_loaded, tmp_path, monkeypatch):
    from mechstudy.engine.run import run_study
    from mechstudy.engine.store import Store

    monkeypatch.chdir(ROOT)
    study = tmp_path / "mini.study"
    study.write_text('model m = zoo "mini"\n'
                     'corpus train = text "studies/data/mini_train.txt" tokens=32768 context=64\n'
                     'corpus held = text "studies/data/mini_held.txt" tokens=4096 context=64\n'
                     "s = train sae resid_post in layer 1 of m over train width=512 k=16 batch=1024 steps=150 "
                     "checkpoint=50\n"
                     "fit = score sae s over held tokens=4096\n")
    res = run_study(study, cache=tmp_path / "cache", device="cpu", report=False)
    d = Store(tmp_path / "cache").get(res.plan.results["fit"].nodes[0].key).data
    assert d["tokens"] == 4096
    assert d["ce_clean"] < d["ce_spliced"] < d["ce_zero"]
    assert d["ce_recovered"] > 0.7, d
    assert d["fvu"] < 0.35 and 8 <= d["l0"] <= 16 and d["dead_fraction"] < 0.5


def test_the_mini_studys_corpora_are_disjoint():
    def docs(name):
        return {p.strip() for p in (ROOT / "studies/data" / name).read_text().split("\n\n") if p.strip()}

    train, held = docs("mini_train.txt"), docs("mini_held.txt")
    assert len(held) > 1000 and not train & held


@pytest.mark.parametrize("kind, site, layers", [("transcoder", "resid_mid", [1]), ("crosscoder", "resid_post", [0, 1])])
def test_transcoders_and_crosscoders_train_and_splice_on_the_same_machinery(stdlib_loaded, trained, tiny_model_artifact,
                                                                            kind, site, layers):
    """A transcoder reads resid_mid and writes mlp_out; a crosscoder reads and writes resid_post of two
    layers. Both learn (FVU falls) and their spliced loss is scored like an SAE's."""
    from mechstudy.engine import spec
    from mechstudy.stdlib.activations import shard_inputs

    corpus, _ = trained
    ctx = Context(device="cpu", max_rows=4)

    def shard(s, l):
        return spec.OPS["activations"].execute({"model": tiny_model_artifact, "corpus": corpus}, {"site": s, "layer": l}, ctx)

    cols = [[shard("resid_mid", 1)], [shard("mlp_out", 1)]] if kind == "transcoder" else [[shard(site, l)] for l in layers]
    art = spec.OPS["train_dictionary"].execute(
        {**shard_inputs(*cols), "model": tiny_model_artifact, "corpus": corpus},
        {"component": kind, "site": site, "layers": layers, "model": "m", "corpus": "c", "width": 128, "k": 8,
         "batch": 64, "steps": 80}, ctx)
    fvu = art.tables["history"]["fvu"].to_list()
    assert fvu[-1] < 0.6 * fvu[0]
    shape = art.data["shape"]
    assert (shape["d_in"], shape["d_out"], shape["groups"]) == ((64, 64, 1) if kind == "transcoder" else (128, 128, 2))
    assert shape["pre_bias"] == (kind != "transcoder")
    out = spec.OPS["score_dictionary"].execute({"dictionary": art, "model": tiny_model_artifact, "corpus": corpus},
                                               {"dictionary": "s", "corpus": "c", "tokens": 160}, ctx)
    assert out.data["tokens"] == 160 and out.data["fvu"] < 1 and out.data["l0"] <= 8
    assert out.data["ce_spliced"] != out.data["ce_clean"]
