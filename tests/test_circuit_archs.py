"""Circuit methods beyond GPT-2, end to end through studies: on the zoo's Llama-architecture attn2
(rotary positions, MLPs exactly zero) and refused at check time on a post-LN encoder.

The per-architecture equality with slow references (GPT-2, NeoX parallel and sequential, Llama
with grouped-query attention) is in test_eap.py, test_acdc.py and test_dla.py; this file checks
what the methods find on a real trained model whose circuit is known: attn2's four layer-1 heads
are induction heads, composing with layer-0 heads, and its MLPs write nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def attn2(tmp_path_factory):
    from mechstudy.engine.run import run_study
    from mechstudy.engine.store import Store

    tmp = tmp_path_factory.mktemp("attn2")
    res = run_study(ROOT / "studies" / "circuits" / "induction_attn2.study", cache=tmp / "cache", device="cpu",
                    report=False)
    store = Store(tmp / "cache")
    return {name: store.get(r.nodes[0].key) for name, r in res.plan.results.items()}


def test_acdc_on_attn2_keeps_the_induction_circuit_and_prunes_the_zero_mlps(attn2):
    c = attn2["acdc"]
    kept = c.tables["result"].filter("kept")
    edges = set(zip(kept["src"].to_list(), kept["dst"].to_list()))
    assert {(f"a1.h{h}", "logits") for h in range(4)} <= edges  # every induction head writes the answer
    assert any(s.startswith("a0.") and d.startswith("a1.") for s, d in edges)  # composition across layers
    assert not any(n.startswith("m") for e in edges for n in e)  # attn2's MLPs are exactly zero
    assert c.data["faithfulness"] > 0.95 and c.data["fraction_kept"] < 0.6, c.data


def test_eap_and_dla_on_attn2_rank_the_induction_heads_first(attn2):
    top = attn2["eap"].tables["result"].head(4)
    assert set(zip(top["src"], top["dst"])) == {(f"a1.h{h}", "logits") for h in range(4)}
    dla = attn2["dla"]
    heads = dla.tables["result"].sort("effect", descending=True)
    assert set(heads.head(4)["layer"]) == {1}
    assert dla.data["max_abs_gap"] < 1e-3  # the terms add up to the logit difference (float32 model)
    assert heads.head(4)["effect"].sum() > 0.8 * dla.data["logit_diff_mean"]


@pytest.mark.parametrize("statement", ["attribute edges of enc on ioi with logit_diff",
                                       "discover circuit of enc on ioi with kl",
                                       "attribute logits of enc on ioi"])
def test_circuit_methods_are_refused_at_check_time_on_an_encoder(statement, stdlib_loaded):
    from mechstudy.lang import StudyErrors, check

    text = ('model enc = hf "sentence-transformers/all-MiniLM-L6-v2"\n'
            'model gpt = zoo "mini"\ndataset ioi = ioi(n=4, model=gpt)\n' + statement + "\n")
    with pytest.raises(StudyErrors) as e:
        check(text, "enc.study")
    rendered = e.value.render()
    assert "enc.study:4:" in rendered and "model enc (bert) has none" in rendered and "^" in rendered
    assert "Traceback" not in rendered
