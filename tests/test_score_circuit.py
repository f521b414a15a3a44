"""`score circuit`: edge precision and recall of ACDC, EAP and path patching against the true circuits
of the ground-truth models (tests/test_groundtruth_models.py checks the models and truths).

The studies in studies/groundtruth/ are run through the engine and their numbers asserted:
ACDC recovers every circuit exactly (precision and recall 1.0) over a wide threshold range,
including 1.0 / 1.0 on the hand-wired induction circuit at KL threshold 0.01; EAP ranks the
true edges first everywhere except the separator-finding key edge of tracr-reverse, whose
gradient through a saturated softmax is below float resolution; path patching ranks its
measurable true edges first.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_precision_recall_and_curves_by_hand():
    from mechstudy.stdlib.groundtruth.truth import average_precision, precision_recall, ranked_curve

    pr = precision_recall(["a->b", "c->d", "e->f"], ["a->b", "c->d", "x->y", "y->z"])
    assert (pr["precision"], pr["recall"], pr["tp"], pr["fp"], pr["fn"]) == (2 / 3, 0.5, 2, 1, 2)
    assert pr["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert precision_recall([], ["a->b"])["precision"] == 1.0 and precision_recall([], ["a->b"])["recall"] == 0.0
    scores = {"t1": 5.0, "f1": -4.0, "t2": 3.0, "t3": 3.0, "f2": 1.0, "z": 0.0}
    curve = ranked_curve(scores, ["t1", "t2", "t3"])
    assert [(c["k"], c["tp"]) for c in curve] == [(1, 1), (2, 1), (4, 3), (5, 3)]  # t2, t3 tie: enter together
    # AP: 1 * 1/3 (t1) + 0 (f1) + 3/4 * 2/3 (t2, t3) + 0
    assert average_precision(curve, 3) == pytest.approx(1 / 3 + 0.75 * 2 / 3)


def test_path_results_map_onto_edges():
    from mechstudy.engine.spec import Artifact
    from mechstudy.stdlib.ops.score_circuit import path_scores

    table = pl.DataFrame({"layer": [0, 0], "head": [0, 1], "effect": [0.1, 1.0], "patched": [3.0, 0.5]})
    art = Artifact(tables={"result": table}, data={
        "sender": {"component": "heads"}, "receiver": {"component": "heads", "layers": [1], "index": None},
        "direction": "noising", "clean_mean": 0.5, "corrupted_mean": 4.0})
    got = path_scores(art, n_heads=2)
    assert got == {"a0.h0->a1.h0": 2.5, "a0.h0->a1.h1": 2.5, "a0.h1->a1.h0": 0.0, "a0.h1->a1.h1": 0.0}
    den = Artifact(tables={"result": table}, data={**art.data, "direction": "denoising",
                                                   "receiver": {"component": "logits"}})
    assert path_scores(den, n_heads=2) == {"a0.h0->logits": 1.0, "a0.h1->logits": 3.5}


def test_score_needs_a_ground_truth_model():
    from mechstudy.engine.spec import Artifact
    from mechstudy.stdlib.models.sources import ZOO_DIR
    from mechstudy.stdlib.ops.score_circuit import run

    with pytest.raises(LookupError, match="no truth.json"):
        run({"model": Artifact(data={"path": str(ZOO_DIR / "mini")}), "r00": Artifact(data={"method": "ACDC"})},
            {}, None)


@pytest.fixture(scope="module")
def studies(tmp_path_factory, stdlib_loaded):
    import mechstudy as ms

    cache = tmp_path_factory.mktemp("gtcache")
    return {name: ms.run(str(ROOT / "studies" / "groundtruth" / f"{name}.study"), cache=str(cache))
            for name in ("induction", "xproportion", "reverse")}


def rows(res, method: str) -> list[dict]:
    return res.table.filter(pl.col("method") == method).to_dicts()


def test_acdc_recovers_every_ground_truth_circuit(studies):
    ind = {r["value"]: r for r in rows(studies["induction"]["scores"], "ACDC")}
    for thr in (0.001, 0.01, 0.1, 1.0):  # the target: 1.0 / 1.0 on the hand-wired circuit
        assert (ind[thr]["precision"], ind[thr]["recall"], ind[thr]["predicted"]) == (1.0, 1.0, 4), thr
    assert (ind[10.0]["predicted"], ind[10.0]["recall"]) == (0, 0.0)  # above every true edge's KL
    for name, n_true in (("xproportion", 3), ("reverse", 5)):
        acdc = rows(studies[name]["scores"], "ACDC")
        assert len(acdc) == 4
        assert all((r["precision"], r["recall"], r["tp"]) == (1.0, 1.0, n_true) for r in acdc), name


def test_eap_ranks_true_edges_first_except_through_saturated_attention(studies):
    summ = {r["method"]: r for r in studies["induction"]["scores"].points[0].artifact.tables["summary"].to_dicts()}
    assert summ["EAP"]["average_precision"] == 1.0 and (summ["EAP"]["precision"], summ["EAP"]["recall"]) == (1.0, 1.0)
    x = {r["method"]: r for r in studies["xproportion"]["scores"].points[0].artifact.tables["summary"].to_dicts()}
    assert x["EAP"]["average_precision"] == 1.0
    rev = rows(studies["reverse"]["scores"], "EAP")
    assert all(r["precision"] == 1.0 for r in rev) and max(r["recall"] for r in rev) == pytest.approx(0.8)
    eap = studies["reverse"]["eap"].table
    missed = eap.filter((pl.col("src") == "input") & (pl.col("dst") == "a0.h0"))["score"][0]
    assert abs(missed) < 1e-6 * eap["score"].abs().max()  # the saturated separator head's keys


def test_path_patching_ranks_its_measurable_true_edges_first(studies):
    for name, stmt in (("induction", "paths"), ("xproportion", "scores"), ("reverse", "paths")):
        summ = {r["method"]: r for r in studies[name][stmt].points[0].artifact.tables["summary"].to_dicts()}
        pp = summ["path patching"]
        assert pp["average_precision"] == 1.0 and pp["recall"] == 1.0, name
    ind = {r["method"]: r for r in studies["induction"]["paths"].points[0].artifact.tables["summary"].to_dicts()}["path patching"]
    assert (ind["true_in_scope"], ind["scope"]) == (2, 8)  # a0.h0->a1.h0, a1.h0->logits of 4 + 2 + 2 pairs
