"""The ground-truth models (stdlib/groundtruth, shipped in stdlib/zoo/models/): exact, and their
true circuits right.

- The shipped GPT-2 checkpoints, run through the stdlib's own adapter (hooks on native HF modules,
  layer norms included), agree with an independent norm-free float64 forward of the construction
  (`craft.forward64` over `crafted.safetensors`): the layer-norm identity trick is exact.
- They compute their programs on inputs drawn here, with seeds the build never used, checked
  against plain-Python semantics (`programs.frac_prevs`, `programs.reverse_causal`, the
  induction rule written out below).
- truth.json is what `truth.derive` gets from the weights, equals the circuit each construction
  was designed to have, and agrees with patching: removing any single edge (its sender's
  corrupted output into that receiver only) changes the output iff the edge is in the circuit.
- The hand-wired model rebuilds bit for bit; the tracr ones too when tracr is installed (the
  `groundtruth` extra; skipped otherwise, with that reason).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from mechstudy.stdlib.models.sources import ZOO_DIR

NAMES = ("induction-handwired", "tracr-xproportion", "tracr-reverse")
DESIGNED = {  # the circuits the constructions were written to have (module docstrings)
    "induction-handwired": ({"input->a0.h0", "a0.h0->a1.h0", "input->a1.h0", "a1.h0->logits"},
                            {"input->a0.h1", "a0.h1->logits"}),
    "tracr-xproportion": ({"input->m0", "m0->a1.h0", "a1.h0->logits"}, {"input->a1.h0"}),
    "tracr-reverse": ({"input->a0.h0", "a0.h0->m0", "m0->a1.h0", "input->a1.h0", "a1.h0->logits"}, {"input->m0"}),
}
SEED = 777  # not the build's HELD_OUT_SEED, not a dataset default


@pytest.fixture(scope="module")
def loaded():
    from mechstudy.stdlib.groundtruth import craft
    from mechstudy.stdlib.models.base import load_adapter

    return {n: (load_adapter(ZOO_DIR / n), craft.load_crafted(ZOO_DIR / n)) for n in NAMES}


def logits(adapter, seqs: list[list[int]]) -> torch.Tensor:
    with torch.no_grad():
        return adapter.forward(torch.tensor(seqs), None).logits.double()


def draws(name: str, c, n: int, rng: random.Random) -> list[list[int]]:
    from mechstudy.stdlib.groundtruth import induction, programs

    bos = c.token_id(c.bos)
    out = []
    for _ in range(n):
        if name == "induction-handwired":
            L = rng.randint(3, 30)
            r = rng.sample([c.token_id(w) for w in induction.words()], L)
            out.append([bos] + r + r[: rng.randint(1, L)])
        elif name == "tracr-xproportion":
            out.append([bos] + [c.token_id(rng.choice(programs.XPROP_VOCAB)) for _ in range(10)])
        else:
            m = rng.randint(2, 6)
            k = rng.randint(0, min(m - 1, programs.REVERSE_MAX_LEN - 1 - m))
            x = [rng.choice(programs.REVERSE_VOCAB) for _ in range(m)]
            out.append([bos] + [c.token_id(t) for t in x + [programs.SEP] + x[::-1][:k]])
    return out


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_equals_the_norm_free_float64_construction(name, loaded):
    from mechstudy.stdlib.groundtruth import craft, truth

    adapter, c = loaded[name]
    truth.check_norms(truth.load_weights(ZOO_DIR / name))
    cfg = json.loads((ZOO_DIR / name / "config.json").read_text())
    assert cfg["model_type"] == "gpt2" and cfg["layer_norm_epsilon"] == 2.0 ** 40
    rng = random.Random(SEED)
    worst = 0.0
    for seq in draws(name, c, 24, rng):
        got = logits(adapter, [seq])[0]
        want = craft.forward64(c, torch.tensor([seq]))[0]
        worst = max(worst, float((got - want).abs().max()))
    assert worst < 2e-5, worst  # float32 rounding of logits up to 10; LN contributes no error of its own


def test_induction_model_copies_exactly(loaded):
    adapter, c = loaded["induction-handwired"]
    seqs = draws("induction-handwired", c, 40, random.Random(SEED))
    hits = total = 0
    for seq in seqs:
        lg = logits(adapter, [seq])[0]
        L = next(i for i in range(2, len(seq)) if seq[i] == seq[1]) - 1  # length of the first copy
        for p in range(L + 1, len(seq)):  # second copy: the token after seq[p]'s first occurrence
            want = seq[seq.index(seq[p]) + 1]
            if seq.index(seq[p]) + 1 <= L:
                hits += int(lg[p].argmax()) == want
                total += 1
        # before any repeat nothing can be copied: end-of-text (the BOS head's constant) wins
        assert int(lg[L].argmax()) == c.token_id(c.bos)
    assert total > 200 and hits == total


def test_xproportion_model_computes_the_fraction_of_x_everywhere(loaded):
    from mechstudy.stdlib.groundtruth import programs

    adapter, c = loaded["tracr-xproportion"]
    seqs = draws("tracr-xproportion", c, 64, random.Random(SEED))
    lg = logits(adapter, seqs)
    got = lg[:, 1:, c.token_id("x")] / 10.0
    want = torch.tensor([programs.frac_prevs([c.tokens[i] for i in s[1:]]) for s in seqs], dtype=torch.float64)
    assert (got - want).abs().max() < 2e-6
    others = [i for i in range(len(c.tokens)) if i != c.token_id("x")]
    assert lg[:, 1:, others].abs().max() < 1e-5  # every other logit is 0
    assert programs.frac_prevs(list("axbx")) == [0.0, 0.5, 1 / 3, 0.5]  # the ACDC paper's example


def test_reverse_model_reverses_from_the_separator_on(loaded):
    from mechstudy.stdlib.groundtruth import programs

    adapter, c = loaded["tracr-reverse"]
    seqs = draws("tracr-reverse", c, 64, random.Random(SEED))
    total = 0
    for seq in seqs:
        lg = logits(adapter, [seq])[0]
        words = [c.tokens[i] for i in seq[1:]]
        for i, want in enumerate(programs.reverse_causal(words)):
            if want is not None:
                assert c.tokens[int(lg[i + 1].argmax())] == want, (words, i)
                assert lg[i + 1].max() > 9.99 and lg[i + 1].sort().values[-2] < 1e-5
                total += 1
    assert total >= 64
    assert programs.reverse_causal(list("abc|")) == [None, None, None, "c"]


@pytest.mark.parametrize("name", NAMES)
def test_truth_is_derived_from_the_weights_and_is_the_designed_circuit(name):
    from mechstudy.stdlib.groundtruth import truth

    shipped = truth.load_truth(ZOO_DIR / name)
    assert truth.derive(ZOO_DIR / name) == shipped
    circuit, positional = DESIGNED[name]
    assert set(shipped["circuit"]) == circuit
    assert set(shipped["positional"]) == positional
    if name == "induction-handwired":  # the distractors are connected, but never reach the logits
        assert {"input->m0", "a0.h0->m0", "m0->a1.h1", "a1.h1->m1"} <= set(shipped["dead_ends"])


def test_truth_derivation_sees_a_broken_connection(tmp_path):
    """Cut the induction head's key read of prev:* in the weights: the derived circuit loses
    a0.h0 -> a1.h0, and with it input -> a0.h0 (the previous-token head no longer reaches the logits)."""
    from mechstudy.stdlib.groundtruth import craft, induction, truth

    c = induction.build()
    c.layers[1].heads[0].wk[:] = 0
    d = craft.save(c, tmp_path / "cut")
    t = truth.derive(d)
    assert set(t["circuit"]) == {"input->a1.h0", "a1.h0->logits"}
    assert "input->a0.h0" in t["dead_ends"]


PAIRS = {"induction-handwired": ("induction", {"n": 12, "length": 12, "seed": 5}),
         "tracr-xproportion": ("xproportion", {"n": 24, "length": 6, "seed": 5}),
         "tracr-reverse": ("reverse", {"n": 24, "length": 10, "seed": 5})}


@pytest.mark.parametrize("name", NAMES)
def test_truth_agrees_with_removing_each_edge_alone(name, loaded, stdlib_loaded):
    """KL(full || full minus one edge) at the answer: > 1e-2 for every circuit edge, < 1e-6 for
    every other edge of the graph."""
    from mechstudy.engine import spec
    from mechstudy.stdlib import metrics
    from mechstudy.stdlib.circuits.graph import ComponentGraph
    from mechstudy.stdlib.circuits.patching import run_patched, sender_outputs
    from mechstudy.stdlib.datasets import Pairs
    from mechstudy.stdlib.groundtruth import truth

    adapter, _ = loaded[name]
    gen, params = PAIRS[name]
    art = spec.DATASETS[gen].run({"model": _artifact(name)}, params, None)
    pairs = Pairs.of(art)
    g = ComponentGraph.of_model(adapter)
    corr = sender_outputs(adapter, pairs.corrupted_ids, pairs.attention_mask, 32)
    clean = run_patched(adapter, g, pairs.clean_ids, pairs.attention_mask, pairs.answer_pos, {}, corr)
    circuit = set(truth.load_truth(ZOO_DIR / name)["circuit"])
    for u, v in g.edges:
        out = run_patched(adapter, g, pairs.clean_ids, pairs.attention_mask, pairs.answer_pos, {v: [u]}, corr)
        kl = metrics.compute("kl", out, pairs.data, None, clean).mean().item()
        if g.edge_name(u, v) in circuit:
            assert kl > 1e-2, (g.edge_name(u, v), kl)
        else:
            assert kl < 1e-6, (g.edge_name(u, v), kl)


def _artifact(name: str):
    from mechstudy.engine.spec import Artifact
    from mechstudy.stdlib.models.sources import describe_dir

    path = str(ZOO_DIR / name)
    return Artifact(data={"path": path, "info": describe_dir(path).as_dict()})


def test_datasets_ask_what_the_programs_answer(loaded, stdlib_loaded):
    from mechstudy.engine import spec
    from mechstudy.stdlib.groundtruth import programs

    _, c = loaded["tracr-reverse"]
    t = spec.DATASETS["reverse"].run({"model": _artifact("tracr-reverse")}, {"n": 40, "length": 10, "seed": 3}, None).tensors
    for clean, corr, io, s in zip(t["clean_ids"], t["corrupted_ids"], t["io_id"], t["s_id"]):
        words = [c.tokens[i] for i in clean[1:]]
        assert programs.reverse_causal(words)[-1] == c.tokens[int(io)]
        cw = [c.tokens[i] for i in corr[1:]]
        assert programs.reverse_causal(cw)[-1] == c.tokens[int(s)] != c.tokens[int(io)]
        assert words.index("|") != cw.index("|")  # the separator moves
    _, c = loaded["tracr-xproportion"]
    t = spec.DATASETS["xproportion"].run({"model": _artifact("tracr-xproportion")},
                                         {"n": 40, "length": 7, "seed": 3}, None).tensors
    for clean, corr, f in zip(t["clean_ids"], t["corrupted_ids"], t["frac"]):
        assert programs.frac_prevs([c.tokens[i] for i in clean[1:]])[-1] == pytest.approx(float(f))
        assert programs.frac_prevs([c.tokens[i] for i in corr[1:]])[-1] != pytest.approx(float(f))
    with pytest.raises(ValueError, match="lacks"):
        spec.DATASETS["reverse"].run({"model": _artifact("tracr-xproportion")}, {"n": 2}, None)


def test_handwired_rebuild_is_bit_identical(tmp_path):
    from mechstudy.stdlib.groundtruth import craft, induction

    d = craft.save(induction.build(), tmp_path / "again")
    for f in ("model.safetensors", "crafted.safetensors", "tokenizer.json"):
        assert (d / f).read_bytes() == (ZOO_DIR / "induction-handwired" / f).read_bytes(), f


def test_tracr_rebuild_is_bit_identical(tmp_path):
    pytest.importorskip("tracr", reason="tracr (the `groundtruth` extra) is only needed to recompile")
    from mechstudy.stdlib.groundtruth import craft, programs

    for name, make in (("tracr-xproportion", programs.build_xproportion), ("tracr-reverse", programs.build_reverse)):
        c, _ = make()
        d = craft.save(c, tmp_path / name)
        for f in ("model.safetensors", "crafted.safetensors", "crafted.json"):
            assert (d / f).read_bytes() == (ZOO_DIR / name / f).read_bytes(), (name, f)


def test_shipped_files_are_small_and_safe():
    for name in NAMES:
        files = sorted(p.name for p in (ZOO_DIR / name).iterdir())
        assert {"config.json", "model.safetensors", "truth.json", "crafted.json", "README.md"} <= set(files)
        assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl"))]
        assert all((ZOO_DIR / name / f).stat().st_size < 8 * 2 ** 20 for f in files)
        assert Path(ZOO_DIR / name / "README.md").read_text().count("True circuit") == 1
