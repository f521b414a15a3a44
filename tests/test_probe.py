"""Probes (stdlib/representations/probes.py and the `probe` operator) against scikit-learn's
LogisticRegression on the same features, on every architecture; control tasks; MLP probes on a
problem a linear probe cannot solve; check-time refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

import mechstudy.stdlib.models.sources  # noqa: F401  (registers the hf and zoo model sources)
import mechstudy.stdlib.ops.probe  # noqa: F401  (registers the operator under test)
from conftest import CIRCUIT_ARCHS, ENCODER_ARCHS
from mechstudy.engine import spec
from mechstudy.engine.context import Context
from mechstudy.engine.spec import Artifact
from mechstudy.stdlib.representations import probes as P


def _labelled_ioi(tokenizer, token_level: bool) -> Artifact:
    """IOI prompts labelled two ways: sentence-level (is the template ABBA? read at the last token,
    word type = the IO name) or token-level (0 other, 1 name, 2 place; word type = the token)."""
    from mechstudy.stdlib.datasets import reference
    from mechstudy.stdlib.datasets.ioi import generate

    art = generate(tokenizer, n=48, seed=2)
    t = dict(art.tensors)
    ids, mask = t["clean_ids"], t["attention_mask"].bool()
    if token_level:
        ref = reference("ioi")
        names = {tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in ref["NAMES"]}
        places = {tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in ref["PLACES"]}
        row, pos = mask.nonzero(as_tuple=True)
        tok = ids[row, pos]
        label = torch.tensor([1 if int(x) in names else 2 if int(x) in places else 0 for x in tok])
        typ = torch.unique(tok, return_inverse=True)[1]
        classes = ["other", "name", "place"]
    else:
        row = torch.arange(ids.shape[0])
        pos = t["answer_pos"]
        label = torch.tensor([int(x) for x in art.tables["prompts"]["abba"].to_list()])
        typ = torch.unique(t["io_id"], return_inverse=True)[1]
        classes = ["BABA", "ABBA"]
    t.update(label=label, label_row=row, label_pos=pos, label_type=typ)
    return Artifact(tensors=t, tables=art.tables, data={**art.data, "label_classes": classes})


@pytest.fixture(scope="module", params=CIRCUIT_ARCHS + ENCODER_ARCHS)
def m(request, circuit_models):
    return circuit_models(request.param)


def _hidden(m, art) -> list[torch.Tensor]:
    """HF's own hidden states: resid_pre of every layer (the input of each block), [N, S, D]."""
    t = art.tensors
    with torch.no_grad():
        out = m.adapter.model(input_ids=t["clean_ids"], attention_mask=t["attention_mask"], output_hidden_states=True)
    return [h.double() for h in out.hidden_states[: m.adapter.n_layers]]


@pytest.mark.parametrize("token_level", [False, True], ids=["sentence", "token"])
def test_logistic_probe_equals_sklearn_on_every_layer(m, token_level):
    art = _labelled_ioi(m.adapter.tokenizer, token_level)
    out = spec.OPS["probe"].execute({"model": m.artifact, "dataset": art},
                                    {"component": "resid_pre", "layers": list(range(m.adapter.n_layers)), "seed": 3},
                                    Context(device="cpu", max_rows=16))
    lab = P.labelled(art)
    test = P.held_out_rows(int(lab.row.max()) + 1, 0.25, 3)[lab.row]
    ctrl = P.control_labels(lab.type, lab.label, lab.n_classes, 3)
    per = out.tables["per_layer"]
    for layer, h in enumerate(_hidden(m, art)):
        x = h[lab.row, lab.pos].numpy()
        mu, sd = x[~test.numpy()].mean(0), x[~test.numpy()].std(0).clip(1e-8)
        z = (x - mu) / sd
        for y, col in ((lab.label, "accuracy"), (ctrl, "control_accuracy")):
            y = y.numpy()
            if len(np.unique(y[~test.numpy()])) < 2:
                continue
            sk = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(z[~test.numpy()], y[~test.numpy()])
            want = (sk.predict(z[test.numpy()]) == y[test.numpy()]).mean()
            assert abs(per[col][layer] - want) <= 0.01, (layer, col, per[col][layer], want)
            if col == "accuracy":  # the same optimum, not only the same accuracy
                prob = sk.predict_proba(z[test.numpy()])
                fit = P.Fit(out.tensors["task_mean"][layer:layer + 1].double(), out.tensors["task_std"][layer:layer + 1].double(),
                            out.tensors["task_W"][layer:layer + 1].double(), out.tensors["task_b"][layer:layer + 1].double())
                ours = P.predict(fit, torch.as_tensor(x[test.numpy()])[None]).exp()[0].numpy()
                assert np.abs(ours - prob).max() < 2e-3
    assert per["selectivity"].to_list() == pytest.approx((per["accuracy"] - per["control_accuracy"]).to_list())


def test_control_task_gives_each_word_type_one_label_from_the_task_distribution():
    types = torch.arange(2000) % 400
    labels = torch.tensor([0] * 1500 + [1] * 500)
    c = P.control_labels(types, labels, 2, seed=0)
    per_type = {}
    for t, y in zip(types.tolist(), c.tolist()):
        assert per_type.setdefault(t, y) == y
    frac = sum(per_type.values()) / len(per_type)
    assert 0.15 < frac < 0.35  # the task's 25% positives, drawn per type
    assert not torch.equal(c, P.control_labels(types, labels, 2, seed=1))


def test_mlp_probe_solves_xor_where_a_linear_probe_cannot():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 800, 2, generator=g, dtype=torch.float64)
    y = ((x[0, :, 0] > 0) ^ (x[0, :, 1] > 0)).long()
    train, test = torch.arange(800) < 600, torch.arange(800) >= 600
    lin = P.fit_linear(x[:, train], y[train], 2, l2=1.0)
    mlp = P.fit_mlp(x[:, train], y[train], 2, hidden=32, steps=400, lr=0.02, seed=0)
    assert float(P.score(lin, x[:, test], y[test]).accuracy[0]) < 0.65
    assert float(P.score(mlp, x[:, test], y[test]).accuracy[0]) > 0.95


def test_batched_layers_equal_separate_fits():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 120, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (120,), generator=g)
    x[1] += y[:, None].double()  # layer 1 can read the label
    joint = P.fit_linear(x, y, 3, l2=0.5)
    for layer in range(3):
        alone = P.fit_linear(x[layer:layer + 1], y, 3, l2=0.5)
        torch.testing.assert_close(joint.W[layer], alone.W[0], atol=1e-6, rtol=1e-5)


def test_probe_checks_need_labels(stdlib_loaded):
    from mechstudy.lang import StudyErrors, check

    head = 'model m = zoo "mini"\ndataset ioi = ioi(n=4)\ndataset sent = sentiment()\n'
    check(head + "probe resid_post in all layers of m on sent using mlp hidden=16\n", "s.study")
    with pytest.raises(StudyErrors) as e:
        check(head + "probe resid_post in all layers of m on ioi\n", "s.study")
    text = e.value.render()
    assert "s.study:4:" in text and "needs labels" in text and "sent" in text
    with pytest.raises(StudyErrors) as e:
        check(head + "probe resid_post in all layers of m on sent using svm\n", "s.study")
    assert "logistic" in e.value.render()
