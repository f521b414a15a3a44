"""Attribution graphs over transcoder features (`attribute features ...`, op attribute_features): every
edge equals the change of its target when its source is removed from a hand-written, linearised GPT-2
(frozen patterns and norm scales, MLPs replaced by transcoders + errors), float64; each target is the
sum of its edges plus a constant; pruning keeps what explains the logits; the mini study's numbers."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _transcoders(d: int, layers: int, seed: int = 0):
    from mechstudy.stdlib.dictionary.attribution import Transcoder
    from mechstudy.stdlib.dictionary.model import Dictionary, Shape

    out = []
    for l in range(layers):
        g = torch.Generator().manual_seed(seed + l)
        arch = "topk" if l % 2 == 0 else "relu"
        tc = Dictionary(Shape(arch, d, d, 24, k=4, pre_bias=False), g)
        with torch.no_grad():
            tc.W_enc.normal_(generator=g).mul_(0.3)
            tc.W_dec.normal_(generator=g).mul_(0.2)
            tc.b_enc.normal_(generator=g).mul_(0.3)
            tc.b_dec.normal_(generator=g).mul_(0.1)
        out.append(Transcoder(l, tc))
    return out


class LinearGPT2:
    """GPT-2 by hand in float64: a clean pass (checked against HF's logits) records each layer's
    attention pattern and norm scales; `run` is then the linearised model with chosen sources."""

    def __init__(self, model, ids, tcs):
        self.m, self.ids, self.tcs = model, torch.tensor(ids), {t.layer: copy.deepcopy(t.dictionary).double() for t in tcs}
        tr = model.transformer
        self.S = len(ids)
        self.H = model.config.n_head
        self.emb = (tr.wte.weight[self.ids] + tr.wpe.weight[: self.S]).detach()
        self.frozen = {}
        self.clean_logits = self._clean()

    def _ln(self, mod, x, key, clean):
        if clean:
            self.frozen[key] = (x.var(-1, unbiased=False, keepdim=True) + mod.eps).sqrt()
        return (x - x.mean(-1, keepdim=True)) / self.frozen[key] * mod.weight + mod.bias

    def _attn(self, blk, x, l, clean, bias=True):
        S, H = self.S, self.H
        qkv = x @ blk.attn.c_attn.weight + (blk.attn.c_attn.bias if bias else 0)
        q, k, v = qkv.split(qkv.shape[-1] // 3, -1)
        heads = lambda t: t.view(S, H, -1).transpose(0, 1)  # noqa: E731
        if clean:
            sc = heads(q) @ heads(k).transpose(-1, -2) / (q.shape[-1] // H) ** 0.5
            sc = sc.masked_fill(torch.triu(torch.ones(S, S, dtype=torch.bool), 1), -torch.inf)
            self.frozen[("pattern", l)] = torch.softmax(sc, -1)
        z = (self.frozen[("pattern", l)] @ heads(v)).transpose(0, 1).reshape(S, -1)
        return z @ blk.attn.c_proj.weight + (blk.attn.c_proj.bias if bias else 0)

    def _clean(self):
        tr = self.m.transformer
        h = self.emb
        self.mids, self.errs, self.acts = {}, {}, {}
        for l, blk in enumerate(tr.h):
            h = h + self._attn(blk, self._ln(blk.ln_1, h, ("ln1", l), True), l, True)
            mlp = blk.mlp(self._ln(blk.ln_2, h, ("ln2", l), True))
            tc = self.tcs[l]
            self.acts[l] = tc.encode(h)
            self.errs[l] = mlp - tc.decode(self.acts[l])
            self.mids[l] = h
            h = h + mlp
        return self._ln(tr.ln_f, h, "lnf", True) @ self.m.lm_head.weight.T

    def run(self, emb=None, feats=None, errs=None, bias=True):
        """Targets of the linear model: {(l, p, f): pre-activation} and the logits at the last
        position; sources given as masks (None: all present). With bias=False every constant term
        (biases, the transcoders' b_dec) is left out too."""
        tr = self.m.transformer
        b = 1.0 if bias else 0.0
        h = self.emb * (emb[:, None] if emb is not None else 1)
        pres = {}
        for l, blk in enumerate(tr.h):
            x = self._ln_lin(blk.ln_1, h, ("ln1", l), bias)
            h = h + self._attn(blk, x, l, False, bias)
            tc = self.tcs[l]
            pres[l] = h @ tc.W_enc + b * tc.b_enc
            a = self.acts[l] * (feats[l] if feats is not None else 1)
            e = self.errs[l] * (errs[l][:, None] if errs is not None else 1)
            h = h + a @ tc.W_dec + b * tc.b_dec + e
        logits = self._ln_lin(tr.ln_f, h, "lnf", bias) @ self.m.lm_head.weight.T
        return pres, logits[-1]

    def _ln_lin(self, mod, x, key, bias):
        return (x - x.mean(-1, keepdim=True)) / self.frozen[key] * mod.weight + (mod.bias if bias else 0)


def _target(pres, logits, node):
    if node["kind"] == "feature":
        return pres[node["layer"]][node["position"], node["feature"]]
    return logits[node["feature"]] - logits.mean()


@torch.no_grad()
def test_every_edge_equals_removing_its_source_from_a_hand_written_linear_gpt2(stdlib_loaded, circuit_models):
    from mechstudy.stdlib.dictionary import attribution as at

    cm = circuit_models("gpt2")
    ids = cm.adapter.tokenizer("Then , John and Mary went to the store", add_special_tokens=False)["input_ids"]
    tcs = _transcoders(cm.adapter.d_model, cm.adapter.n_layers)
    with torch.enable_grad():
        g = at.attribute(cm.adapter64, ids, tcs, max_logits=3, logit_mass=1.0, rows=7)
    ref = LinearGPT2(cm.adapter64.model, ids, tcs)
    hf = cm.adapter64.model(input_ids=torch.tensor([ids])).logits[0]
    torch.testing.assert_close(ref.clean_logits, hf, atol=1e-9, rtol=0)  # the hand-written model is GPT-2
    S, L = len(ids), cm.adapter.n_layers
    full = ref.run()
    none = ref.run(emb=torch.zeros(S), feats={l: torch.zeros_like(ref.acts[l]) for l in range(L)},
                   errs={l: torch.zeros(S) for l in range(L)})
    targets = [i for i, n in enumerate(g.nodes) if n["kind"] in ("feature", "logit")]
    assert sum(n["kind"] == "feature" for n in g.nodes) == sum(int((ref.acts[l] > 0).sum()) for l in range(L))
    assert len(targets) > 40
    # each target's value, and its constant part (no source at all)
    for t in targets:
        assert float(g.value[t]) == pytest.approx(float(_target(*full, g.nodes[t])), abs=1e-9)
        assert float(g.bias[t]) == pytest.approx(float(_target(*none, g.nodes[t])), abs=1e-9)
    # each edge: the targets' change when that one source is removed
    checked = 0
    for s, n in enumerate(g.nodes):
        if n["kind"] == "embedding":
            m = torch.ones(S)
            m[n["position"]] = 0
            without = ref.run(emb=m)
        elif n["kind"] == "feature":
            fm = {l: torch.ones_like(ref.acts[l]) for l in range(L)}
            fm[n["layer"]][n["position"], n["feature"]] = 0
            without = ref.run(feats=fm)
        elif n["kind"] == "error":
            em = {l: torch.ones(S) for l in range(L)}
            em[n["layer"]][n["position"]] = 0
            without = ref.run(errs=em)
        else:
            continue
        want = torch.tensor([float(_target(*full, g.nodes[t]) - _target(*without, g.nodes[t])) for t in targets], dtype=torch.float64)
        torch.testing.assert_close(g.adjacency[targets, s], want, atol=1e-9, rtol=1e-9)
        checked += 1
    assert checked == S + sum(int((ref.acts[l] > 0).sum()) for l in range(L)) + L * S
    # features read only what lies before them: no edge from a later position or a later layer
    for t in targets:
        nt = g.nodes[t]
        for s in g.adjacency[t].nonzero().flatten().tolist():
            ns = g.nodes[s]
            assert ns["position"] <= nt["position"] and ns["layer"] < nt["layer"]


def test_float32_graph_matches_float64(stdlib_loaded, circuit_models):
    from mechstudy.stdlib.dictionary import attribution as at

    cm = circuit_models("gpt2")
    ids = cm.adapter.tokenizer("Then , John and Mary went to the store", add_special_tokens=False)["input_ids"]
    tcs = _transcoders(cm.adapter.d_model, cm.adapter.n_layers)
    g32 = at.attribute(cm.adapter, ids, tcs, max_logits=3, rows=16)
    g64 = at.attribute(cm.adapter64, ids, tcs, max_logits=3, rows=5)
    assert [n["feature"] for n in g32.nodes] == [n["feature"] for n in g64.nodes]
    torch.testing.assert_close(g32.adjacency, g64.adjacency, atol=2e-4, rtol=1e-3)


def test_influence_and_pruning_by_hand():
    """A 5-node chain: embedding e -> feature f1 -> feature f2 -> logit, and an error node x -> logit."""
    from mechstudy.stdlib.dictionary import attribution as at

    nodes = [{"kind": k} for k in ("embedding", "feature", "feature", "error", "logit")]
    A = torch.zeros(5, 5, dtype=torch.float64)
    A[1, 0] = 2.0            # e -> f1
    A[2, 1] = -1.0           # f1 -> f2
    A[2, 0] = 1.0            # e -> f2
    A[4, 2] = 3.0            # f2 -> logit
    A[4, 3] = 1.0            # x -> logit
    g = at.Graph(nodes, A, torch.zeros(5), torch.zeros(5), torch.tensor([1.0], dtype=torch.float64))
    N = at.normalized(A)
    assert N[2, 1] == pytest.approx(0.5) and N[4, 2] == pytest.approx(0.75)
    inf = at.influence(N, at.logit_weights(g))
    # by hand: f2 0.75; f1 0.75 * 0.5; e directly via f2 0.75*0.5 plus via f1 0.375*1; x 0.25
    assert inf.tolist() == pytest.approx([0.75, 0.375, 0.75, 0.25, 0.0])
    sc = at.scores(A, g)
    assert sc["replacement"] == pytest.approx(0.75 / (0.75 + 0.25))
    # completeness: non-error share is 1 for every node but the logit (0.75); weights inf + w
    want = (0.75 + 0.375 + 0.75 + 0.25 + 0.75 * 1.0) / (0.75 + 0.375 + 0.75 + 0.25 + 1.0)
    assert sc["completeness"] == pytest.approx(want)
    keep, edges = at.prune(g, node_threshold=0.6, edge_threshold=1.0)
    assert keep.tolist() == [True, False, True, True, True]  # f2 alone covers 0.75 / 1.125 >= 0.6
    assert edges.nonzero().tolist() == [[2, 0], [4, 2], [4, 3]]


@pytest.fixture(scope="module")
def tiny_transcoders(stdlib_loaded, tiny_model_artifact, tiny_adapter):
    """Transcoders of both layers of the tiny GPT-2, trained briefly (artifacts as `train` makes them)."""
    from mechstudy.engine import spec
    from mechstudy.engine.context import Context
    from mechstudy.stdlib.activations import shard_inputs
    from mechstudy.stdlib.datasets.corpus import pack

    docs = ["When John and Mary went to the store , John gave a drink to Mary", "Then Mary went to the office"] * 20
    corpus = spec.Artifact(tensors=pack(docs, tiny_adapter.tokenizer, context=8, tokens=320))
    ctx = Context(device="cpu", max_rows=8)
    out = []
    for l in range(2):
        cols = [[spec.OPS["activations"].execute({"model": tiny_model_artifact, "corpus": corpus},
                                                 {"site": s, "layer": l}, ctx)] for s in ("resid_mid", "mlp_out")]
        out.append(spec.OPS["train_dictionary"].execute(
            {**shard_inputs(*cols), "model": tiny_model_artifact, "corpus": corpus},
            {"component": "transcoder", "layers": [l], "model": "m", "corpus": "c", "width": 64, "k": 6, "batch": 64,
             "steps": 30}, ctx))
    return out


def test_the_operator_reports_the_graph_it_computed(tiny_transcoders, tiny_model_artifact, tiny_adapter):
    from mechstudy.engine import spec
    from mechstudy.engine.context import Context
    from mechstudy.stdlib.dictionary import attribution as at
    from mechstudy.stdlib.ops.attribute_features import transcoders

    text = "When John and Mary went to the store , John gave a drink to"
    inputs = {"model": tiny_model_artifact, **{f"transcoder_{i:03d}": a for i, a in enumerate(tiny_transcoders)}}
    art = spec.OPS["attribute_features"].execute(inputs, {"dictionary": "t", "model": "m", "text": text, "rows": 9},
                                                 Context(device="cpu"))
    ids = tiny_adapter.tokenizer(text)["input_ids"]
    g = at.attribute(tiny_adapter, ids, transcoders(inputs, tiny_model_artifact), rows=64)
    assert [t.layer for t in transcoders(inputs, tiny_model_artifact)] == [0, 1]
    torch.testing.assert_close(torch.as_tensor(art.tensors["adjacency"]), g.adjacency, atol=1e-5, rtol=1e-4)
    nodes, edges, allnodes = art.tables["nodes"], art.tables["edges"], art.tables["all_nodes"]
    assert allnodes.height == len(g.nodes) and nodes.height == int(allnodes["kept"].sum())
    index = {n: i for i, n in enumerate(allnodes["node"].to_list())}
    for src, dst, w in edges.iter_rows():
        assert w == pytest.approx(float(g.adjacency[index[dst], index[src]]), rel=1e-4, abs=1e-6)
        assert src in set(nodes["node"]) and dst in set(nodes["node"])
    logit = tiny_adapter.model(input_ids=torch.tensor([ids])).logits[0, -1]
    first = allnodes.filter(allnodes["kind"] == "logit")["feature"].to_list()[0]
    assert first == int(logit.argmax())
    res = art.tables["result"]
    assert res["influence"].to_list() == sorted(res["influence"].to_list(), reverse=True)
    s = art.data["scores"]
    assert 0 < s["full"]["replacement"] <= 1 and 0 < s["pruned"]["completeness"] <= 1
    assert art.data["nodes"]["kept_features"] < art.data["nodes"]["features"]


@pytest.mark.parametrize("line, message", [
    ("attribute features t of m", "needs one prompt"),
    ('attribute features t of m on facts text "x"', "needs one prompt"),
    ("attribute features t of m on facts node_threshold=0", "'node_threshold' must be greater than 0"),
    ("attribute features t of m on facts mass=1.5", "'mass' must be at most 1"),
])
def test_mistakes_are_check_errors(stdlib_loaded, line, message):
    from mechstudy.lang import StudyErrors, check

    head = ('model m = zoo "mini"\ncorpus web = text "README.md" tokens=256 context=16\ndataset facts = facts(n=4, split=train)\n'
            "t = train transcoder in all layers of m over web\n")
    with pytest.raises(StudyErrors) as e:
        check(head + line + "\n", "t.study")
    assert message in e.value.errors[0].message, e.value.render()


def test_a_graph_on_mini_explains_a_fact(stdlib_loaded, tmp_path, monkeypatch):
    """Transcoders on every layer of zoo mini (briefly trained), the graph of 'The capital of ... is':
    its logit node is the model's answer, the features carry a good part of the influence."""
    from mechstudy.engine.run import run_study
    from mechstudy.engine.store import Store

    monkeypatch.chdir(ROOT)
    study = tmp_path / "g.study"
    study.write_text('model m = zoo "mini"\n'
                     'corpus train = text "studies/data/mini_train.txt" tokens=16384 context=64\n'
                     "dataset facts = facts(n=4, split=train)\n"
                     "tcs = train transcoder in all layers of m over train width=256 k=8 batch=1024 steps=80 "
                     "checkpoint=40\n"
                     "g = attribute features tcs of m on facts prompt 0\n")
    res = run_study(study, cache=tmp_path / "cache", device="cpu", report=False)
    art = Store(tmp_path / "cache").get(res.plan.results["g"].nodes[0].key)
    d = art.data
    assert d["prompt"].startswith("The capital of")
    logits = art.tables["all_nodes"].filter(art.tables["all_nodes"]["kind"] == "logit")
    assert logits["activation"][0] > 0.5  # the model is sure of its answer
    # 80 steps of training: the errors still carry much (the study's 300-step transcoders: 0.69 / 0.90)
    assert d["scores"]["full"]["replacement"] > 0.25 and d["scores"]["full"]["completeness"] > 0.6, d["scores"]
    assert d["nodes"]["kept_features"] < d["nodes"]["features"] / 2
