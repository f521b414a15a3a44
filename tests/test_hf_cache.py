"""`hf "org/name"` resolves from the local Hugging Face cache layout, offline, and runs."""

import shutil

from mechstudy.engine.run import check_and_plan, run_study


def test_hub_id_resolves_from_local_cache_and_runs(tmp_path, tiny_gpt2_dir, monkeypatch):
    hub = tmp_path / "hub"
    snap = hub / "models--acme--tiny-ioi" / "snapshots" / "0123abc"
    shutil.copytree(tiny_gpt2_dir, snap)
    (hub / "models--acme--tiny-ioi" / "refs").mkdir(parents=True)
    (hub / "models--acme--tiny-ioi" / "refs" / "main").write_text("0123abc")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    study = tmp_path / "s.study"
    study.write_text('model m = hf "acme/tiny-ioi"\ndataset ioi = ioi(n=6)\nb = evaluate m on ioi with logit_diff\n')
    plan = check_and_plan(study)
    assert plan.models["m"].param("ref") == "acme/tiny-ioi"
    res = run_study(study, cache=tmp_path / "cache", report=False)
    assert res.computed == 4  # model, dataset, baseline, evaluate
    # the same weights under a directory path give the same model fingerprint (content, not path)
    study2 = tmp_path / "s2.study"
    study2.write_text(f'model m = hf "{tiny_gpt2_dir}"\ndataset ioi = ioi(n=6)\nb = evaluate m on ioi with logit_diff\n')
    assert check_and_plan(study2).models["m"].param("fingerprint") == plan.models["m"].param("fingerprint")
