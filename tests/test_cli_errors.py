"""No verb prints a traceback: every bad input is one clear error and a documented exit code.
Read-only verbs create nothing; damaged cache entries are reported as damaged."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mechstudy.engine import cli
from mechstudy.engine.store import Store

STUDY = """\
study "small"
model m = hf "{model}"
dataset ioi = ioi(n=4, seed=0)
heads = patch heads in layer 1 of m on ioi with logit_diff
"""


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def ran(tmp_path_factory, tiny_gpt2_dir):
    d = tmp_path_factory.mktemp("ran")
    study = d / "small.study"
    study.write_text(STUDY.format(model=tiny_gpt2_dir))
    assert cli.main(["run", str(study), "--cache", str(d / "cache"), "--out", str(d / "out")]) == 0
    return study, d / "cache"


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    files = {"missing": tmp_path / "nope.study", "directory": tmp_path / "adir"}
    files["directory"].mkdir()
    files["binary"] = tmp_path / "bin.study"
    files["binary"].write_bytes(b"\x00\xff\xfe" * 100)
    files["not-a-zip"] = tmp_path / "p.zip"
    files["not-a-zip"].write_bytes(b"hello, not a zip")
    files["bad-pack-json"] = tmp_path / "q.zip"
    with zipfile.ZipFile(files["bad-pack-json"], "w") as z:
        z.writestr("pack.json", "{nope")
    return files


def test_every_verb_fails_cleanly_on_bad_input(tmp_path, capsys, ran):
    study, cache = ran
    f = _bad_files(tmp_path)
    c = str(tmp_path / "c")
    cases = [
        (cli.STUDY_ERRORS, ["run", f["missing"], "--cache", c], "no such file"),
        (cli.STUDY_ERRORS, ["run", f["directory"], "--cache", c], "cannot read"),
        (cli.STUDY_ERRORS, ["run", f["binary"], "--cache", c], "cannot read"),
        (cli.STUDY_ERRORS, ["check", f["binary"], f["missing"]], "no such file"),
        (cli.STUDY_ERRORS, ["explain", f["missing"], "--cache", c], "no such file"),
        (cli.REFUSED, ["run", study, "--from", f["not-a-zip"], "--cache", c], "not a zip file"),
        (cli.REFUSED, ["run", study, "--from", f["bad-pack-json"], "--cache", c], "pack.json is not valid JSON"),
        (cli.REFUSED, ["run", study, "--from", tmp_path / "absent.zip", "--cache", c], "cannot read it"),
        (cli.REFUSED, ["unpack", f["not-a-zip"], "--cache", c, "--dir", tmp_path / "x"], "not a zip file"),
        (cli.REFUSED, ["unpack", f["bad-pack-json"], "--cache", c, "--dir", tmp_path / "x"], "not valid JSON"),
        (cli.REFUSED, ["unpack", f["directory"], "--cache", c], "not a file"),
        (cli.REFUSED, ["verify", study, "--from", f["not-a-zip"], "--cache", c], "not a zip file"),
        (cli.REFUSED, ["verify", study, "--from", f["bad-pack-json"], "--cache", c], "not valid JSON"),
        (cli.REFUSED, ["pack", study, "--cache", c, "-o", tmp_path / "o.zip"], "not computed yet"),
        (cli.STUDY_ERRORS, ["show", study, "haeds", "--cache", cache], "did you mean 'heads'"),
        (cli.UNAVAILABLE, ["show", study, "heads", "--cache", c], "not computed yet"),
        (cli.REFUSED, ["cache", "ls", "--cache", tmp_path / "no-cache"], "no such cache directory"),
        (cli.REFUSED, ["cache", "gc", "--cache", cache, "--keep", f["missing"]], "no such study file"),
    ]
    for want, argv, text in cases:
        code, out, err = _cli(capsys, *argv)
        assert code == want, (argv, code, out, err)
        assert "Traceback" not in out + err, argv
        assert text in err, (argv, err)
    for argv, text in ((["frobnicate"], "invalid choice"), (["run"], "required")):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == cli.USAGE and text in capsys.readouterr().err
    assert not (tmp_path / "x").exists(), "a refused pack extracted something"
    assert list((tmp_path / "c" / "tmp").iterdir()) == [] if (tmp_path / "c" / "tmp").exists() else True
    assert not list(tmp_path.glob("verify-*")) and not list(Path("/tmp").glob("verify-pack-*"))


def test_help_lists_the_exit_codes(capsys):
    for argv in (["--help"], ["run", "--help"], ["cache", "gc", "--help"]):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        out = capsys.readouterr().out
        assert e.value.code == 0 and "exit codes:" in out
        for n in cli.EXIT_CODES:
            assert f"\n  {n:<4} " in out, (argv, n)
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for n in cli.EXIT_CODES:
        assert f"| {n} |" in readme, f"exit code {n} is not documented in the README"


def test_read_only_verbs_create_no_store_directory(tmp_path, capsys, ran):
    study, _ = ran
    fresh = tmp_path / "fresh-cache"
    for argv in (["explain", study], ["why", study, "heads"], ["show", study, "heads"], ["explain", study, "--no-keys"]):
        _cli(capsys, *argv, "--cache", fresh)
        assert not fresh.exists(), argv
    _cli(capsys, "check", study)
    assert not fresh.exists()


def test_damaged_entries_are_reported_as_damaged(tmp_path, capsys, ran, tiny_gpt2_dir):
    study = tmp_path / "small.study"
    study.write_text(STUDY.format(model=tiny_gpt2_dir))
    cache = tmp_path / "cache"
    assert _cli(capsys, "run", study, "--cache", cache, "--out", tmp_path / "o")[0] == 0
    from mechstudy.engine.run import check_and_plan

    key = check_and_plan(study).results["heads"].nodes[0].key
    table = Store(cache).path(key) / "table-result.parquet"
    raw = table.read_bytes()
    table.write_bytes(raw[:10] + bytes([raw[10] ^ 0xFF]) + raw[11:])
    code, out, err = _cli(capsys, "explain", study, "--cache", cache)
    line = next(ln for ln in out.splitlines() if key[:16] in ln)
    assert code == 0 and line.endswith("damaged"), line
    code, out, err = _cli(capsys, "show", study, "heads", "--cache", cache)
    assert code == cli.UNAVAILABLE and "damaged" in err and "checksum" in err
    code, out, _ = _cli(capsys, "why", study, "heads", "--cache", cache)
    assert "will recompute" in out and "damaged" in out
    code, out, _ = _cli(capsys, "cache", "verify", "--cache", cache)
    assert code == cli.DIFFERS and "damaged" in out and "1 damaged" in out
    assert table.read_bytes() != raw, "read-only verbs must not repair or remove anything"
    code, out, err = _cli(capsys, "run", study, "--cache", cache, "--out", tmp_path / "o")
    assert code == 0 and "damaged" in err and "1 computed" in out
    assert _cli(capsys, "cache", "verify", "--cache", cache)[0] == 0


def test_the_real_program_prints_no_traceback(tmp_path):
    """The installed entry point, in a subprocess: bad pack, bad study, internal-error path."""
    f = _bad_files(tmp_path)
    for argv, want in ((["unpack", str(f["bad-pack-json"]), "--cache", str(tmp_path / "c")], cli.REFUSED),
                       (["check", str(f["binary"])], cli.STUDY_ERRORS),
                       (["show", str(f["directory"]), "x"], cli.STUDY_ERRORS)):
        r = subprocess.run([sys.executable, "-m", "mechstudy.engine.cli", *argv], capture_output=True, text=True,
                           timeout=120, cwd=tmp_path)
        assert r.returncode == want, (argv, r.stderr)
        assert "Traceback" not in r.stderr + r.stdout and r.stderr.startswith(("error", str(f["binary"]), str(f["directory"]))), r.stderr


def test_internal_errors_are_one_line_unless_debug(tmp_path, capsys, monkeypatch):
    from mechstudy.engine import cachetools

    (tmp_path / "c").mkdir()

    def boom(*a, **k):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cachetools, "ls", boom)
    code, out, err = _cli(capsys, "cache", "ls", "--cache", tmp_path / "c")
    assert code == cli.INTERNAL and err.startswith("error: internal error: ZeroDivisionError: a bug")
    assert "Traceback" not in err and "--debug" in err
    code, out, err = _cli(capsys, "cache", "ls", "--cache", tmp_path / "c", "--debug")
    assert code == cli.INTERNAL and "Traceback" in err
