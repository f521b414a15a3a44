"""`load sae` (op load_dictionary): published dictionaries from files a test writes in the SAELens
layout and the Gemma Scope layout, against the formulas applied by hand with numpy; pickled archives
refused; a loaded SAE scores like a trained one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mechstudy.engine.context import Context
from mechstudy.engine.spec import Artifact


def _weights(d=6, F=10, seed=0):
    g = np.random.default_rng(seed)
    return {"W_enc": g.normal(size=(d, F)).astype(np.float32), "W_dec": g.normal(size=(F, d)).astype(np.float32),
            "b_enc": g.normal(size=F).astype(np.float32), "b_dec": g.normal(size=d).astype(np.float32),
            "threshold": np.abs(g.normal(size=F)).astype(np.float32)}


def _load(tmp_path, path, **params):
    from mechstudy.engine import spec

    model = Artifact(data={"info": {"d_model": 6, "d_mlp": 24}})
    return spec.OPS["load_dictionary"].execute({"model": model}, {"model": "m", "path": str(path), **params},
                                               Context(device="cpu"))


def test_gemma_scope_params_npz_is_jumprelu_on_x_itself(stdlib_loaded, tmp_path):
    from mechstudy.stdlib.ops.train_dictionary import load

    w = _weights()
    np.savez(tmp_path / "params.npz", **w)
    art = _load(tmp_path, tmp_path, site="resid_post", layer=2)
    assert art.data["site"] == ["blocks.2.hook_resid_post"] and art.data["arch"] == "jumprelu"
    x = np.random.default_rng(1).normal(size=(5, 6)).astype(np.float32)
    pre = x @ w["W_enc"] + w["b_enc"]  # Gemma Scope: no decoder-bias subtraction
    f = pre * (pre > w["threshold"])
    sae = load(art)
    torch.testing.assert_close(sae.encode(torch.from_numpy(x)).detach(), torch.from_numpy(f), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae(torch.from_numpy(x)).detach(), torch.from_numpy(f @ w["W_dec"] + w["b_dec"]),
                               atol=1e-4, rtol=1e-5)


def test_a_pickled_archive_is_refused(stdlib_loaded, tmp_path):
    from mechstudy.lang import StudyErrors, check

    w = _weights()
    np.savez(tmp_path / "params.npz", **w, extra=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickled objects are never loaded"):
        _load(tmp_path, tmp_path, site="resid_post", layer=0)
    with pytest.raises(StudyErrors) as e:
        check(f'model m = zoo "mini"\ns = load sae of m path="{tmp_path}" site=resid_post layer=0\n', "t.study")
    assert "pickled objects are never loaded" in e.value.errors[0].message
    assert e.value.errors[0].span.line == 2


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_saelens_directories_load_each_architecture(stdlib_loaded, tmp_path, arch):
    from safetensors.torch import save_file

    from mechstudy.stdlib.ops.train_dictionary import load

    w = _weights(seed=2)
    tensors = {k: torch.from_numpy(v) for k, v in w.items() if k != "threshold" or arch == "jumprelu"}
    save_file(tensors, str(tmp_path / "sae_weights.safetensors"))
    cfg = {"architecture": arch, "d_in": 6, "d_sae": 10, "apply_b_dec_to_input": True, "normalize_activations": "none",
           "metadata": {"hook_name": "blocks.3.hook_mlp_out"}}
    if arch == "topk":
        cfg["k"] = 3
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    art = _load(tmp_path, tmp_path)
    assert art.data["site"] == ["blocks.3.hook_mlp_out"]
    x = np.random.default_rng(3).normal(size=(4, 6)).astype(np.float32)
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]  # SAELens: apply_b_dec_to_input
    if arch == "standard":
        f = np.maximum(pre, 0)
    elif arch == "jumprelu":
        f = pre * (pre > w["threshold"])
    else:
        f = np.zeros_like(pre)
        for i, row in enumerate(pre):
            top = np.argsort(-row)[:3]
            f[i, top] = np.maximum(row[top], 0)
    got = load(art).encode(torch.from_numpy(x)).detach()
    torch.testing.assert_close(got, torch.from_numpy(f), atol=1e-4, rtol=1e-5)


def test_unsupported_files_are_check_errors(stdlib_loaded, tmp_path):
    from mechstudy.lang import StudyErrors, check

    (tmp_path / "cfg.json").write_text(json.dumps({"architecture": "gated"}))
    (tmp_path / "sae_weights.safetensors").write_bytes(b"")
    np.savez(tmp_path / "g" if False else tmp_path / "other.npz", **_weights())
    for line, msg in [(f'path="{tmp_path}"', "'gated' is not supported"),
                      (f'path="{tmp_path / "nope"}"', "neither cfg.json"),
                      (f'path="{tmp_path / "other.npz"}"', "does not say which site it reads")]:
        with pytest.raises(StudyErrors) as e:
            check(f'model m = zoo "mini"\ns = load sae of m {line}\n', "t.study")
        assert msg in e.value.errors[0].message, e.value.render()


def test_the_shipped_mini_sae_loads_and_scores(stdlib_loaded, tmp_path, monkeypatch):
    from pathlib import Path

    from mechstudy.engine.run import run_study
    from mechstudy.engine.store import Store

    root = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(root)
    study = tmp_path / "l.study"
    study.write_text('model m = zoo "mini"\ncorpus held = text "studies/data/mini_held.txt" tokens=2048 context=64\n'
                     's = load sae of m path="studies/data/saes/mini-resid1-topk"\nfit = score sae s over held tokens=2048\n')
    res = run_study(study, cache=tmp_path / "cache", device="cpu", report=False)
    d = Store(tmp_path / "cache").get(res.plan.results["fit"].nodes[0].key).data
    assert d["l0"] <= 8 and d["ce_recovered"] > 0.6 and d["fvu"] < 0.4, d
