"""`study cache ls | du | gc | verify` on real stores filled by real runs of two studies."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from mechstudy.engine import cli
from mechstudy.engine.store import Store, write_text_atomic

A = """\
study "A"
model m = hf "{model}"
dataset ioi = ioi(n=4, seed=0)
base = evaluate m on ioi with logit_diff
"""
B = """\
study "B"
model m = hf "{model}"
dataset ioi = ioi(n=4, seed=0)
heads = patch heads in layer 0 of m on ioi with logit_diff
"""


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture()
def two(tmp_path, tiny_gpt2_dir, capsys):
    cache = tmp_path / "cache"
    paths = {}
    for name, text in (("a", A), ("b", B)):
        p = tmp_path / f"{name}.study"
        p.write_text(text.format(model=tiny_gpt2_dir))
        assert _cli(capsys, "run", p, "--cache", cache, "--out", tmp_path / f"o{name}")[0] == 0
        paths[name] = p
    from mechstudy.engine.run import check_and_plan

    keys = {n: {x.key for x in check_and_plan(p).nodes()} for n, p in paths.items()}
    return cache, paths, keys


def _on_disk(cache: Path) -> set[str]:
    return {p.parent.name for p in (cache / "objects").glob("*/*/manifest.json")}


def test_ls_and_du_report_entries_sizes_and_studies(two, capsys):
    cache, paths, keys = two
    assert _on_disk(cache) == keys["a"] | keys["b"]
    code, out, _ = _cli(capsys, "cache", "ls", "--cache", cache)
    assert code == 0
    rows = {ln.split()[0]: ln for ln in out.splitlines()[1:-1]}
    assert len(rows) == len(keys["a"] | keys["b"])
    for k in keys["a"] & keys["b"]:  # shared: the model and the dataset
        assert "a.study, b.study" in rows[k[:16]]
    only_b = next(iter(keys["b"] - keys["a"]))
    assert rows[only_b[:16]].rstrip().endswith("b.study") and "trusted" in rows[only_b[:16]]
    total = sum(p.stat().st_size for p in (cache / "objects").rglob("*") if p.is_file())
    assert out.splitlines()[-1].startswith(f"{len(rows)} entries")
    code, out, _ = _cli(capsys, "cache", "du", "--cache", cache)
    assert code == 0 and "patch" in out and "evaluate" in out and "model" in out
    from mechstudy.engine.cachetools import entries, human

    assert sum(e.bytes for e in entries(Store(cache, create=False))) == total
    assert f"total {human(total)}" in out


def test_gc_keeps_what_kept_studies_use(two, capsys, tmp_path):
    cache, paths, keys = two
    code, out, _ = _cli(capsys, "cache", "gc", "--cache", cache, "--keep", paths["a"], "--dry-run")
    assert code == 0 and f"would remove {len(keys['b'] - keys['a'])} entries" in out
    assert _on_disk(cache) == keys["a"] | keys["b"]
    code, out, _ = _cli(capsys, "cache", "gc", "--cache", cache, "--keep", paths["a"])
    assert code == 0 and _on_disk(cache) == keys["a"]
    code, out, _ = _cli(capsys, "run", paths["a"], "--cache", cache, "--out", tmp_path / "oa")
    assert "0 computed" in out
    code, out, _ = _cli(capsys, "run", paths["b"], "--cache", cache, "--out", tmp_path / "ob")
    assert f"{len(keys['b'] - keys['a'])} computed" in out


def test_gc_default_and_older_than(two, capsys, tmp_path):
    cache, paths, keys = two
    # Both studies exist: nothing is unreferenced.
    assert "removed 0 entries" in _cli(capsys, "cache", "gc", "--cache", cache)[1]
    # b.study is deleted: its own entries are unreferenced; --older-than spares the recent ones.
    paths["b"].unlink()
    only_b = keys["b"] - keys["a"]
    old = next(iter(only_b))
    past = time.time() - 10 * 86400
    os.utime(Store(cache).path(old), (past, past))
    code, out, _ = _cli(capsys, "cache", "gc", "--cache", cache, "--older-than", "5")
    assert code == 0 and "removed 1 entries" in out and _on_disk(cache) == (keys["a"] | keys["b"]) - {old}
    code, out, _ = _cli(capsys, "cache", "gc", "--cache", cache)
    assert _on_disk(cache) == keys["a"]


def test_a_run_marks_its_entries_used(two, capsys, tmp_path):
    cache, paths, keys = two
    store = Store(cache)
    past = time.time() - 10 * 86400
    for k in keys["a"]:
        os.utime(store.path(k), (past, past))
    _cli(capsys, "run", paths["a"], "--cache", cache, "--out", tmp_path / "oa")
    roots = {n.key for n in __import__("mechstudy.engine.run", fromlist=["x"]).check_and_plan(paths["a"]).roots()}
    for k in roots:
        assert store.path(k).stat().st_mtime > time.time() - 600


def test_stale_temp_dirs_are_cleaned_and_live_ones_kept(tmp_path):
    store = Store(tmp_path / "cache")
    dead = store.root / "tmp" / "0123456789abcdef-999999-x1"  # no such process
    live = store.tmpdir("0123456789abcdef")  # this process, just made
    older = store.root / "tmp" / "unpack-1-zz"  # pid 1 is alive (init) but the dir is a day old
    for d in (dead, older):
        d.mkdir()
        (d / "junk").write_bytes(b"x" * 10)
    past = time.time() - 120
    os.utime(dead, (past, past))
    os.utime(older, (time.time() - 2 * 86400,) * 2)
    assert store.clean_tmp() == 2
    assert not dead.exists() and not older.exists() and live.exists()


def test_lock_and_record_files_are_written_atomically(tmp_path, monkeypatch):
    target = tmp_path / "x.study.lock"
    write_text_atomic(target, '{"old": true}\n')

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        write_text_atomic(target, '{"new": true}\n')
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["x.study.lock"]


def test_imported_packs_are_listed_and_collected_with_their_study(two, capsys, tmp_path):
    cache, paths, keys = two
    assert _cli(capsys, "pack", paths["b"], "--cache", cache, "-o", tmp_path / "b.zip")[0] == 0
    other = tmp_path / "other"
    assert _cli(capsys, "unpack", tmp_path / "b.zip", "--cache", other, "--dir", tmp_path / "theirs")[0] == 0
    code, out, _ = _cli(capsys, "cache", "ls", "--cache", other)
    assert "pack " in out
    assert "removed 0 entries and 0 imported packs" in _cli(capsys, "cache", "gc", "--cache", other)[1]
    (tmp_path / "theirs" / "b.study").unlink()
    code, out, _ = _cli(capsys, "cache", "gc", "--cache", other)
    assert "1 imported packs" in out and not list((other / "packs").iterdir())
