"""The trust model end to end on a tiny GPT-2, through the `study` command.

A forged pack (self-consistent checksums around made-up numbers, the attack the checksums cannot
see) is imported; it may show its own study's claimed numbers, labelled as imported, but it never
changes what another study shows, `study verify` catches it, and only `--trust` lets it serve
other studies. A study opened from a pack cannot read files outside the pack.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import polars as pl
import pytest
import xxhash

from mechstudy.engine import cli
from mechstudy.engine.store import Store

AUTHOR = """\
study "Forger's study"
model m = hf "{model}"
dataset ioi = ioi(n=8, seed=3)
heads = patch heads in layer 1 of m on ioi with logit_diff
"""
# Another study that needs the same patch node (same op, params and inputs: same key).
VICTIM = """\
study "Victim's own study"
model m = hf "{model}"
dataset ioi = ioi(n=8, seed=3)
base = evaluate m on ioi with logit_diff
h = patch heads in layer 1 of m on ioi with logit_diff
"""
FORGED = 42.0


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _effects(capsys, study, name, cache) -> list[float]:
    code, out, err = _cli(capsys, "show", study, name, "--cache", cache, "--format", "csv")
    assert code == 0, err
    return [float(r["effect"]) for r in csv.DictReader(io.StringIO(out))]


@pytest.fixture(scope="module")
def packs(tmp_path_factory, tiny_gpt2_dir):
    """The author's real pack and a forged copy whose `heads` numbers are all 42 (checksums redone)."""
    d = tmp_path_factory.mktemp("author")
    study = d / "forger.study"
    study.write_text(AUTHOR.format(model=tiny_gpt2_dir))
    cache = d / "cache"
    assert cli.main(["run", str(study), "--cache", str(cache), "--out", str(d / "out")]) == 0
    real = d / "real.zip"
    assert cli.main(["pack", str(study), "--cache", str(cache), "-o", str(real)]) == 0
    from mechstudy.engine.run import check_and_plan

    heads_key = check_and_plan(study).results["heads"].nodes[0].key
    forged = d / "forged.zip"
    with zipfile.ZipFile(real) as zin, zipfile.ZipFile(forged, "w", zipfile.ZIP_DEFLATED) as zout:
        members = {n: zin.read(n) for n in zin.namelist()}
        table = f"objects/{heads_key}/table-result.parquet"
        df = pl.read_parquet(io.BytesIO(members[table])).with_columns(pl.lit(FORGED).alias("effect"))
        buf = io.BytesIO()
        df.write_parquet(buf)
        members[table] = buf.getvalue()
        man = json.loads(members[f"objects/{heads_key}/manifest.json"])
        man["files"]["table-result.parquet"] = {"bytes": len(buf.getvalue()), "xxh3_128": xxhash.xxh3_128_hexdigest(buf.getvalue())}
        members[f"objects/{heads_key}/manifest.json"] = json.dumps(man).encode()
        for n, data in members.items():
            zout.writestr(n, data)
    real_effects = pl.read_parquet(Store(cache).path(heads_key) / "table-result.parquet")["effect"].to_list()
    assert all(abs(e - FORGED) > 1 for e in real_effects)
    return {"real": real, "forged": forged, "key": heads_key, "effects": real_effects, "model": tiny_gpt2_dir}


def _victim(tmp_path, packs) -> Path:
    p = tmp_path / "victim" / "mine.study"
    p.parent.mkdir(exist_ok=True)
    p.write_text(VICTIM.format(model=packs["model"]))
    return p


def test_forged_pack_never_changes_what_another_study_shows(tmp_path, packs, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "cache"
    victim = _victim(tmp_path, packs)
    from mechstudy.engine.run import check_and_plan

    assert check_and_plan(victim).results["h"].nodes[0].key == packs["key"], "the studies must share the node"
    # 1. The victim ran first: importing the forged pack changes nothing they see.
    assert _cli(capsys, "run", victim, "--cache", cache, "--out", tmp_path / "o")[0] == 0
    mine = _effects(capsys, victim, "h", cache)
    assert mine == pytest.approx(packs["effects"], abs=1e-6)
    objects_before = {p: p.read_bytes() for p in (cache / "objects").rglob("*") if p.is_file()}
    code, out, err = _cli(capsys, "unpack", packs["forged"], "--cache", cache, "--dir", tmp_path / "theirs")
    assert code == 0, err
    assert "kept apart" in out
    assert {p: p.read_bytes() for p in (cache / "objects").rglob("*") if p.is_file()} == objects_before
    assert _effects(capsys, victim, "h", cache) == mine
    code, out, _ = _cli(capsys, "run", victim, "--cache", cache, "--out", tmp_path / "o")
    assert code == 0 and "0 computed" in out and _effects(capsys, victim, "h", cache) == mine


def test_forged_pack_imported_first_still_serves_only_its_own_study(tmp_path, packs, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "cache"
    assert _cli(capsys, "unpack", packs["forged"], "--cache", cache, "--dir", tmp_path / "theirs")[0] == 0
    victim = _victim(tmp_path, packs)
    code, out, err = _cli(capsys, "show", victim, "h", "--cache", cache)
    assert code == cli.UNAVAILABLE and "not computed yet" in err
    code, out, err = _cli(capsys, "run", victim, "--cache", cache, "--out", tmp_path / "o")
    assert code == 0 and "0 computed" not in out and "from pack" not in err
    assert _effects(capsys, victim, "h", cache) == pytest.approx(packs["effects"], abs=1e-6)


def test_pack_shows_its_own_report_labelled_and_verify_catches_the_forgery(tmp_path, packs, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "cache"
    theirs = tmp_path / "theirs" / "forger.study"
    code, out, err = _cli(capsys, "run", theirs, "--from", packs["forged"], "--cache", cache, "--out", tmp_path / "o")
    assert code == 0, err
    assert "0 computed" in out and "come from pack forged.zip" in err and "not computed here" in err
    assert _effects(capsys, theirs, "heads", cache) == [FORGED] * 4  # what the pack claims, for its own study
    report = (tmp_path / "o" / "report.html").read_text()
    assert ">imported<" in report
    code, out, _ = _cli(capsys, "explain", theirs, "--cache", cache)
    assert "imported" in out
    code, out, err = _cli(capsys, "verify", theirs, "--cache", cache)
    assert code == cli.DIFFERS, out + err
    assert "DIFF heads" in out and "effect" in out
    # What verify recomputed is trusted now, and the trusted entry wins over the pack's.
    assert _effects(capsys, theirs, "heads", cache) == pytest.approx(packs["effects"], abs=1e-6)
    assert Store(cache).has_local(packs["key"])


def test_good_pack_verify_promotes_and_trust_flag_serves_everyone(tmp_path, packs, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "cache"
    theirs = tmp_path / "theirs" / "forger.study"
    assert _cli(capsys, "run", theirs, "--from", packs["real"], "--cache", cache, "--out", tmp_path / "o")[0] == 0
    assert not Store(cache).has_local(packs["key"])
    code, out, err = _cli(capsys, "verify", theirs, "--cache", cache)
    assert code == 0, out + err
    assert "ok heads (from pack" in out and "now trusted" in out
    assert Store(cache).has_local(packs["key"])
    # --trust: the forged pack's entries serve every study (that is what the flag is for).
    other = tmp_path / "other"
    code, out, err = _cli(capsys, "unpack", packs["forged"], "--cache", other, "--dir", tmp_path / "t2", "--trust")
    assert code == 0 and "trusted" in out, err
    victim = _victim(tmp_path, packs)
    assert _cli(capsys, "run", victim, "--cache", other, "--out", tmp_path / "o2")[0] == 0
    assert _effects(capsys, victim, "h", other) == [FORGED] * 4


SECRET = "TOP-SECRET-7f3a9c"


def _escaping_pack(tmp_path: Path, study_text: str) -> Path:
    """A hand-made pack whose study tries to read outside the pack (no entries needed)."""
    p = tmp_path / "escape.zip"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("pack.json", json.dumps({"pack_format": 1, "study": "x.study", "entries": []}))
        z.writestr("study/x.study", study_text)
    return p


@pytest.mark.parametrize("line", [
    'use "{secret}"',
    'use "../outside/secret.study"',
    'dataset d = file "{secret}" prompt=text',
    'dataset d = file "../outside/secret.csv" prompt=text',
    'dataset d = file "~/secret.csv" prompt=text',
])
def test_study_from_a_pack_reads_only_inside_the_pack(tmp_path, line, tiny_gpt2_dir):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.csv"
    secret.write_text(f"text\n{SECRET} line one\n")
    (outside / "secret.study").write_text(f'model {SECRET} = zoo "nope"\n')
    text = f'study "x"\nmodel m = hf "{tiny_gpt2_dir}"\n' + line.format(secret=secret) + "\n"
    pack = _escaping_pack(tmp_path, text)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "HOME": str(outside)}
    r = subprocess.run([sys.executable, "-m", "mechstudy.engine.cli", "run", str(work / "x.study"), "--from", str(pack),
                        "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=300, cwd=work, env=env)
    assert r.returncode == cli.STUDY_ERRORS, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "comes from a pack" in r.stderr
    assert SECRET not in r.stdout + r.stderr
    # The same study outside a pack may read the file (it is the user's own).
    own = tmp_path / "own" / "x.study"
    own.parent.mkdir()
    own.write_text(text)
    r = subprocess.run([sys.executable, "-m", "mechstudy.engine.cli", "check", str(own)],
                       capture_output=True, text=True, timeout=300, cwd=own.parent, env=env)
    assert "comes from a pack" not in r.stderr and "Traceback" not in r.stderr


def test_pack_carries_the_files_its_study_reads(tmp_path, tiny_gpt2_dir, capsys, monkeypatch):
    """A study with a `file` dataset and a `use`d study: packed, then run elsewhere from the pack
    with no recompute; the data file is read from inside the pack (confined)."""
    root = Path(__file__).resolve().parent.parent
    author = tmp_path / "author"
    (author / "studies" / "data").mkdir(parents=True)
    (author / "studies" / "data" / "prompts.csv").write_bytes((root / "studies" / "data" / "prompts.csv").read_bytes())
    (author / "studies" / "common.study").write_text(f'model m = hf "{tiny_gpt2_dir}"\n')
    study = author / "studies" / "mine.study"
    study.write_text('study "mine"\nuse "common.study"\n'
                     'dataset d = file "studies/data/prompts.csv" prompt=text answer=answer wrong=wrong corrupted=corrupted\n'
                     "base = evaluate m on d with logit_diff\n")
    monkeypatch.chdir(author)
    code, out, err = _cli(capsys, "run", study, "--cache", tmp_path / "c1", "--out", tmp_path / "o1")
    assert code == 0, err
    want = _cli(capsys, "show", study, "base", "--cache", tmp_path / "c1", "--format", "csv")[1]
    code, out, err = _cli(capsys, "pack", study, "--cache", tmp_path / "c1", "-o", tmp_path / "mine.zip")
    assert code == 0, err
    with zipfile.ZipFile(tmp_path / "mine.zip") as z:
        names = set(z.namelist())
    assert {"study/mine.study", "study/common.study", "study/studies/data/prompts.csv"} <= names
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the current directory has no data file: it is read from the pack
    got = elsewhere / "unpacked" / "mine.study"
    code, out, err = _cli(capsys, "run", got, "--from", tmp_path / "mine.zip", "--cache", tmp_path / "c2", "--out", tmp_path / "o2")
    assert code == 0, err
    assert "0 computed" in out
    assert _cli(capsys, "show", got, "base", "--cache", tmp_path / "c2", "--format", "csv")[1] == want
