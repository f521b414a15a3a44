"""`train sae|transcoder` (op train_dictionary): ground truth on planted features, the
architectures against plain references, exact resumption from checkpoints (a run twice as long
takes only the extra steps; a crashed run restarts from its last checkpoint), and check-time errors."""

from __future__ import annotations

import pytest
import torch

from mechstudy.engine.context import Context


@pytest.fixture(scope="module")
def planted(stdlib_loaded):
    from mechstudy.engine import spec

    return spec.DATASETS["planted"].run({}, {"features": 32, "d": 16, "sparsity": 0.9, "rows": 8192, "seed": 0}, None)


def _train(acts, **params):
    from mechstudy.engine import spec

    base = {"dataset": "planted", "width": 64, "steps": 600, "batch": 512, "lr": 1e-2}
    return spec.OPS["train_dictionary"].execute({"dataset": acts}, {**base, **params}, Context(device="cpu"))


@pytest.mark.parametrize("arch, extra", [("relu", {"l1": 3.0}), ("topk", {"k": 4}), ("jumprelu", {"l0": 1.0}),
                                         ("batchtopk", {"k": 4})])
def test_each_architecture_recovers_the_planted_directions(planted, arch, extra):
    """32 features in 16 dimensions (superposition), 3.2 active per row on average."""
    from mechstudy.stdlib.ops.train_dictionary import load, recovery

    out = _train(planted, method=arch, **extra)
    sae = load(out)
    dirs = planted.tensors["directions"]
    cos = (dirs @ sae.directions().detach().T).max(-1).values  # per true direction, its best feature
    assert out.data["recovery"] == pytest.approx(float(cos.mean()), abs=1e-6) == recovery(sae, dirs)
    assert out.data["recovery"] >= 0.9
    x = planted.tensors["activations"]
    f = sae.encode(x)
    l0 = float((f > 0).float().sum(-1).mean())
    assert 1.5 < l0 < 8  # sparse, near the true 3.2 active features per row
    fvu = float((sae(x).detach() - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert fvu < 0.4  # the raw-space dictionary reconstructs (ReLU + L1 shrinks, hence the bound)
    if arch == "topk":
        assert (f > 0).sum(-1).max() <= 4


def test_the_initial_dictionary_does_not_recover_them(planted):
    """What training starts from scores far below the bar (so the bar measures training)."""
    from mechstudy.stdlib.activations import ActivationStore
    from mechstudy.stdlib.dictionary.train import Hyper, Layout, init_state
    from mechstudy.stdlib.ops.train_dictionary import recovery

    for arch in ("relu", "topk", "jumprelu"):
        state = init_state(ActivationStore([[planted]]), Layout("sae"), Hyper(arch=arch, width=64, k=4))
        assert recovery(state.raw(), planted.tensors["directions"]) < 0.75


def test_activations_match_plain_references():
    from mechstudy.stdlib.dictionary.model import Dictionary, Shape

    g = torch.Generator().manual_seed(1)
    z = torch.randn(6, 10, generator=g)
    topk = Dictionary(Shape("topk", 4, 4, 10, k=3))
    ref = torch.zeros_like(z)
    for i in range(6):  # keep each row's 3 largest, then ReLU
        for j in sorted(range(10), key=lambda j: -z[i, j])[:3]:
            ref[i, j] = max(0.0, float(z[i, j]))
    assert torch.equal(topk.activate(z), ref)
    btk = Dictionary(Shape("batchtopk", 4, 4, 10, k=3))
    flat = sorted(((float(z[i, j]), i, j) for i in range(6) for j in range(10)), reverse=True)[:18]
    ref = torch.zeros_like(z)
    for v, i, j in flat:
        ref[i, j] = max(0.0, v)
    assert torch.equal(btk.activate(z, train=True), ref)
    jr = Dictionary(Shape("jumprelu", 4, 4, 10, bandwidth=0.5))
    with torch.no_grad():
        jr.log_threshold.copy_(torch.log(torch.full((10,), 0.3)))
    zz = z.clone().requires_grad_()
    out = jr.activate(zz, train=True)
    assert torch.equal(out.detach(), z * (z > 0.3))
    out.sum().backward()
    theta = 0.3  # d/dtheta sum(z H(z - theta)) by the rectangle kernel: -theta/eps per z within eps/2
    want = -(theta / 0.5) * ((z - theta).abs() < 0.25).float().sum(0) * theta  # chain rule through log
    torch.testing.assert_close(jr.log_threshold.grad, want)
    assert torch.equal(zz.grad, (z > 0.3).float())


def test_a_dictionary_on_normalised_inputs_is_the_same_on_raw_ones():
    from mechstudy.stdlib.dictionary.model import Dictionary, Shape

    sae = Dictionary(Shape("relu", 5, 5, 12), torch.Generator().manual_seed(2))
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_()
    c = torch.rand(5) + 0.5
    x = torch.randn(7, 5)
    raw = sae.scaled(c, c)
    torch.testing.assert_close(raw.encode(x), sae.encode(x * c))
    torch.testing.assert_close(raw(x), sae(x * c) / c)


def _engine_run(tmp_path, study_text):
    from mechstudy.engine.run import run_study

    (tmp_path / "s.study").write_text(study_text)
    return run_study(tmp_path / "s.study", cache=tmp_path / "cache", device="cpu", report=False)


STUDY = ("dataset acts = planted(features=32, d=16, sparsity=0.9, rows=4096)\n"
         "sae = train sae using topk on acts width=64 k=4 batch=256 steps={steps} checkpoint=20\n")


def test_a_run_twice_as_long_computes_only_the_extra_steps(stdlib_loaded, tmp_path):
    from mechstudy.engine.store import Store
    from mechstudy.stdlib.dictionary import train
    from mechstudy.stdlib.ops.train_dictionary import load

    before = train.STEPS_RUN[0]
    short = _engine_run(tmp_path, STUDY.format(steps=60))
    assert train.STEPS_RUN[0] - before == 60
    mid = train.STEPS_RUN[0]
    long = _engine_run(tmp_path, STUDY.format(steps=120))
    assert train.STEPS_RUN[0] - mid == 60  # only steps 60..120
    computed = [o for o in long.outcomes.values() if o.status == "computed" and o.op == "train_dictionary"]
    assert len(computed) == 3
    store = Store(tmp_path / "cache")
    art = store.get(long.plan.results["sae"].nodes[0].key)
    assert art.data["steps"] == 120 and art.tables["history"]["step"].to_list() == list(range(10, 121, 10))
    assert short.plan.results["sae"].nodes[0].key in {n.key for n in long.plan.nodes()}
    # ... and equals one uninterrupted 120-step run, bit for bit
    acts = store.get(next(n for n in long.plan.nodes() if n.op == "dataset").key)
    one = _train(acts, method="topk", k=4, batch=256, steps=120, lr=1e-3)
    assert train.STEPS_RUN[0] - mid == 180
    for name, v in load(one).tensors().items():
        assert torch.equal(v, load(art).tensors()[name]), name
    assert one.tables["history"].equals(art.tables["history"])


def test_a_crashed_run_resumes_from_its_last_checkpoint(stdlib_loaded, tmp_path, monkeypatch):
    from mechstudy.engine.graph import OpFailed
    from mechstudy.stdlib.activations.stream import ActivationStore
    from mechstudy.stdlib.dictionary import train

    real = ActivationStore.batches

    def crash_at_step_50(self, batch, seed, start=0, window=4):
        for i, b in enumerate(real(self, batch, seed, start, window)):
            if start + i == 50:
                raise RuntimeError("power cut")
            yield b

    monkeypatch.setattr(ActivationStore, "batches", crash_at_step_50)
    with pytest.raises(OpFailed, match="power cut"):
        _engine_run(tmp_path, STUDY.format(steps=80))
    monkeypatch.setattr(ActivationStore, "batches", real)
    before = train.STEPS_RUN[0]
    _engine_run(tmp_path, STUDY.format(steps=80))
    assert train.STEPS_RUN[0] - before == 40  # checkpoints 20 and 40 were kept: steps 40..80 only


@pytest.mark.parametrize("line, message, col", [
    ("train sae in layers 0..5 of m over web", "layer 5 is out of range", 24),
    ("train sae in layer 1 of m over web k=300 width=256", "k (300) is larger than the width (256)", 36),
    ("train sae in layer 1 of m over web checkpoint=15", "checkpoint (15) must be a multiple of log_every (10)", 36),
    ("train sae of m over web", "train sae needs `in layer L`", 1),
    ("train transcoder on acts", "a transcoder reads a model's activations", 18),
    ("train sae using gelu in layer 1 of m over web", "'method' must be one of", 17),
])
def test_mistakes_are_check_errors(stdlib_loaded, line, message, col):
    from mechstudy.lang import StudyErrors, check

    head = ('model m = zoo "mini"\ncorpus web = text "README.md" tokens=256 context=16\n'
            "dataset acts = planted()\n")
    with pytest.raises(StudyErrors) as e:
        check(head + line + "\n", "t.study")
    err = e.value.errors[0]
    assert message in err.message and (err.span.line, err.span.column) == (4, col), e.value.render()


def test_several_layers_make_one_dictionary_per_layer(stdlib_loaded):
    """`train transcoder in all layers` is a sweep: one checkpoint chain per layer, on its own shards."""
    import mechstudy.engine.builtins  # noqa: F401  (the model and dataset nodes)
    from mechstudy.engine.build import build_plan
    from mechstudy.lang import check

    plan = build_plan(check('model m = zoo "mini"\ncorpus web = text "README.md" tokens=256 context=16\n'
                            "t = train transcoder in all layers of m over web steps=20 checkpoint=10\n", "t.study"))
    nodes = plan.results["t"].nodes
    assert [n.param("layers") for n in nodes] == [[0], [1], [2]]
    assert all(n.op == "train_dictionary" and n.param("start") == 10 for n in nodes)
    shards = [{(c.param("site"), c.param("layer")) for _, c in n.inputs if c.op == "activations"} for n in nodes]
    assert shards == [{("resid_mid", l), ("mlp_out", l)} for l in range(3)]
