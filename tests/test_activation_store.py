"""The activation store: shards are the model's own activations at every real token (against a plain
per-row capture), plans share shards, the shuffled stream is exact and resumable, and streaming keeps
peak memory flat as the number of shards grows."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from mechstudy.engine.context import Context
from mechstudy.engine.spec import Artifact


@pytest.fixture(scope="module")
def corpus(tiny_adapter):
    from mechstudy.stdlib.datasets.corpus import pack

    docs = ["John went to the store and Mary gave a drink to John"] * 3 + ["Then Mary went to the office"] * 4
    return Artifact(tensors=pack(docs, tiny_adapter.tokenizer, context=7, tokens=56))


def test_a_shard_holds_each_real_tokens_activation(stdlib_loaded, tiny_model_artifact, tiny_adapter, corpus):
    from mechstudy.engine import spec
    from mechstudy.stdlib.models.sites import Site

    t = corpus.tensors
    t["attention_mask"][-1, 4:] = 0  # a padded row: its pads are left out
    shard = spec.OPS["activations"].execute({"model": tiny_model_artifact, "corpus": corpus},
                                            {"site": "resid_post", "layer": 1, "start": 2, "rows": 6},
                                            Context(device="cpu", max_rows=2))
    want, toks, pos = [], [], []
    for r in range(2, 8):  # one row at a time, no batching: the reference
        n = int(t["attention_mask"][r].sum())
        a = tiny_adapter.capture(t["input_ids"][r:r + 1, :n], None, [Site(1, "resid_post")])[Site(1, "resid_post")][0]
        want.append(a)
        toks += t["input_ids"][r, :n].tolist()
        pos += list(range(n))
    torch.testing.assert_close(shard.tensors["acts"], torch.cat(want), atol=1e-5, rtol=1e-5)
    assert shard.tensors["token"].tolist() == toks and shard.tensors["pos"].tolist() == pos
    assert shard.tensors["row"].tolist() == [r for r in range(2, 8) for _ in range(int(t["attention_mask"][r].sum()))]
    assert shard.data["tokens"] == 7 * 5 + 4
    t["attention_mask"][-1, 4:] = 1


def test_statements_on_one_site_share_their_shards(stdlib_loaded, tiny_gpt2_dir, tmp_path, monkeypatch):
    from mechstudy.engine.run import check_and_plan

    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.txt").write_text("John went to the store. " * 200)
    (tmp_path / "s.study").write_text(
        f'model m = hf "{tiny_gpt2_dir}"\ncorpus web = text "t.txt" tokens=1000 context=10\n'
        "a = train sae resid_post in layer 1 of m over web steps=20 checkpoint=10 shard_tokens=300\n"
        "b = train sae using relu in layer 1 of m over web steps=20 checkpoint=10 shard_tokens=300\n"
        "c = train sae resid_post in layer 0 of m over web steps=20 checkpoint=10 shard_tokens=300\n")
    plan = check_and_plan(tmp_path / "s.study")
    shards = {r: {k for k, n in plan.results[r].nodes[0].inputs if k.startswith("shard")} for r in "abc"}
    keys = {r: {n.key for k, n in plan.results[r].nodes[0].inputs if k.startswith("shard")} for r in "abc"}
    assert len(shards["a"]) == 4  # 100 rows of 10 tokens, 30 rows per shard
    assert keys["a"] == keys["b"] and not keys["a"] & keys["c"]
    starts = sorted(n.param("start") for n in plan.nodes() if n.op == "activations" and n.param("layer") == 1)
    assert starts == [0, 30, 60, 90]


def _store(sizes, width=3, seed=0):
    from mechstudy.stdlib.activations import ActivationStore

    g = torch.Generator().manual_seed(seed)
    arts, start = [], 0
    for n in sizes:  # token ids number every token, so a batch says which tokens it holds
        ids = torch.arange(start, start + n)
        acts = ids[:, None].float().repeat(1, width) + torch.randn(n, width, generator=g) * 0
        arts.append(Artifact(tensors={"acts": acts, "token": ids.int(), "row": ids.int(), "pos": ids.int() * 0}))
        start += n
    return ActivationStore([arts])


def test_one_epoch_visits_every_token_once_and_resumes_exactly():
    store = _store([50, 50, 50, 50, 20, 0, 30])
    it = store.batches(16, seed=3, window=2)
    per_epoch = sum(store._count(w, 16) for w in store.windows(0, 3, 2))
    seen = torch.cat([next(it)[0][:, 0] for _ in range(per_epoch)]).long()
    assert len(set(seen.tolist())) == len(seen)  # no token twice in an epoch
    assert store.n - len(seen) < 16 * 4  # only each window's remainder is dropped
    assert seen.tolist() != sorted(seen.tolist())  # shuffled
    fresh = store.batches(16, seed=3, window=2)
    ref = [next(fresh)[0] for _ in range(per_epoch + 7)]
    resumed = store.batches(16, seed=3, start=per_epoch + 2, window=2)
    for j in range(per_epoch + 2, per_epoch + 7):  # batch j of a resumed stream is batch j of a fresh one
        assert torch.equal(next(resumed)[0], ref[j])
    again = store.batches(16, seed=4, window=2)
    assert not torch.equal(next(again)[0], ref[0])  # another seed, another order


def test_scan_is_corpus_order_and_columns_stay_aligned():
    from mechstudy.stdlib.activations import ActivationStore

    a, b = _store([5, 7]), _store([5, 7], width=2)
    two = ActivationStore([a.columns[0], b.columns[0]])
    got = list(two.scan(4))
    assert torch.cat([m["token"] for _, m in got]).tolist() == list(range(12))
    x0 = torch.cat([xs[0] for xs, _ in got])
    x1 = torch.cat([xs[1] for xs, _ in got])
    assert torch.equal(x0[:, 0], x1[:, 0]) and two.widths == [3, 2]
    for xs in [next(two.batches(5, seed=1))]:
        assert torch.equal(xs[0][:, 0], xs[1][:, 0])  # shuffled together
    with pytest.raises(ValueError, match="not aligned"):
        ActivationStore([a.columns[0], _store([6, 6]).columns[0]])


_PEAK = textwrap.dedent("""
    import json, sys, torch
    from pathlib import Path
    from safetensors.torch import save_file
    from mechstudy.engine.spec import Artifact
    from mechstudy.stdlib.activations import ActivationStore
    root, shards = Path(sys.argv[1]), int(sys.argv[2])
    arts = []
    for i in range(shards):
        d = root / f"s{i}"
        if not d.exists():
            d.mkdir(parents=True)
            save_file({"acts": torch.randn(8192, 64), "token": torch.zeros(8192, dtype=torch.int32)}, str(d / "tensors.safetensors"))
        from safetensors.torch import load_file
        arts.append(Artifact(tensors=load_file(str(d / "tensors.safetensors")), path=str(d)))  # as the store loads it
    def hwm():
        return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
    base = hwm()
    store = ActivationStore([arts])
    it = store.batches(1024, seed=0, window=2)
    total = 0
    for _ in range(sum(store._count(w, 1024) for w in store.windows(0, 0, 2))):
        total += next(it)[0].shape[0]
    print(json.dumps({"peak_kib": hwm(), "base_kib": base, "tokens": total}))
""")


def test_streaming_memory_is_flat_in_the_corpus_size(tmp_path):
    """2 MiB shards, a window of 2: streaming one epoch of 4 shards and of 32 shards (8x the data)
    raises the peak resident memory above what it was before streaming by the same amount.
    glibc's malloc is told to return large blocks to the system at once (MALLOC_MMAP_THRESHOLD_),
    so that the allocator's own retention (a plateau near 30 MiB here) does not blur the measure."""
    out = {}
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "MALLOC_MMAP_THRESHOLD_": "65536"}
    for shards in (4, 32):
        r = subprocess.run([sys.executable, "-c", _PEAK, str(tmp_path), str(shards)], capture_output=True, text=True,
                           check=True, env=env)
        out[shards] = json.loads(r.stdout)
    assert out[32]["tokens"] == 8 * out[4]["tokens"]
    rise = {n: (o["peak_kib"] - o["base_kib"]) / 1024 for n, o in out.items()}
    assert rise[4] > 4  # the window really is read (2 shards of 2 MiB, and their shuffled copy)
    assert abs(rise[32] - rise[4]) < 3, f"streaming 64 MiB rose by {rise[32]:.1f} MiB, 8 MiB by {rise[4]:.1f} MiB"
