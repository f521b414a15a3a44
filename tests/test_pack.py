"""Packs are safe to open: every way a zip can be bad is refused with one line, all or nothing.

Each bad pack is a real zip file built here from real store entries (computed by the engine's
test operators), then damaged in one way. For every one: `unpack` raises PackError with a
one-line message, the store is byte-for-byte what it was, no temp dir is left and no study file
is extracted.
"""

from __future__ import annotations

import json
import struct
import time
import tracemalloc
import zipfile
from pathlib import Path

import pytest
import torch

import engine_testops  # noqa: F401  (registers the t_* operators)
from mechstudy.engine.graph import run_nodes
from mechstudy.engine.pack import Limits, PackError, compare_artifacts, records, serving, unpack
from mechstudy.engine.plan import make_node
from mechstudy.engine.spec import Artifact
from mechstudy.engine.store import Store, checksum

STUDY = 'study "s"\n'


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A store with three real entries: a source node and two scaled copies."""
    d = tmp_path_factory.mktemp("src")
    store = Store(d / "cache")
    src = make_node("t_source", {"n": 6, "seed": 0}, {})
    a = make_node("t_scale", {"factor": 2.0}, {"src": src})
    b = make_node("t_scale", {"factor": 3.0}, {"src": src})
    run_nodes([a, b], store, device="cpu")
    return store, [src.key, a.key, b.key]


def _members(store: Store, keys: list[str]) -> dict[str, bytes]:
    out = {"pack.json": json.dumps({"pack_format": 1, "study": "s.study", "entries": keys}).encode(),
           "study/s.study": STUDY.encode()}
    for k in keys:
        for f in sorted(store.path(k).iterdir()):
            out[f"objects/{k}/{f.name}"] = f.read_bytes()
    return out


def _zip(path: Path, members: dict[str, bytes], **infos) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            info = infos.get(name) or zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            z.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    return path


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under root with its bytes (None for directories)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.fixture()
def dst(tmp_path):
    """A store that already holds a trusted entry of its own, and an empty study directory."""
    store = Store(tmp_path / "dst")
    store.put("ab" * 16, Artifact(tensors={"y": torch.ones(3)}), {"op": "mine"})
    (tmp_path / "w").mkdir()
    return store


def _refused(pack: Path, store: Store, workdir: Path, match: str, limits: Limits | None = None) -> str:
    before = _snapshot(store.root)
    t0 = time.perf_counter()
    with pytest.raises(PackError, match=match) as e:
        unpack(pack, store, workdir, limits=limits)
    assert time.perf_counter() - t0 < 20
    msg = str(e.value)
    assert "\n" not in msg and 0 < len(msg) < 400, msg
    assert _snapshot(store.root) == before, "the store changed"
    assert list((store.root / "tmp").iterdir()) == []
    assert list(workdir.iterdir()) == [], "a study file was extracted"
    return msg


def test_good_pack_is_kept_apart_and_serves_only_its_study(tmp_path, source, dst):
    src, keys = source
    pack = _zip(tmp_path / "p.zip", _members(src, keys))
    u = unpack(pack, dst, tmp_path / "w")
    assert (u.imported, u.already, u.trusted) == (3, 0, False) and u.study.read_text() == STUDY
    # Not in the trusted store: a study that is not the pack's never sees these entries.
    assert not any(dst.has(k) for k in keys) and set(dst.keys()) == {"ab" * 16}
    assert serving(dst, tmp_path / "elsewhere.study") == []
    other = tmp_path / "w2" / "s.study"  # the same text at another path is another study
    other.parent.mkdir()
    other.write_text(STUDY)
    assert serving(dst, other) == []
    # The extracted study is the pack's own: a view for it reads the entries, marked as imported.
    recs = serving(dst, u.study)
    assert [r.pack_id for r in recs] == [u.pack_id]
    view = Store(dst.root, overlays=[r.overlay() for r in recs])
    for k in keys:
        assert view.has(k) and view.origin(k) == u.pack_id
        assert torch.equal(view.get(k).tensors["x"], src.get(k).tensors["x"])
    # Editing the study makes it another study.
    u.study.write_text(STUDY + "# edited\n")
    assert serving(dst, u.study) == []
    # Importing again is idempotent.
    u.study.write_text(STUDY)
    again = unpack(pack, dst, tmp_path / "w")
    assert (again.imported, again.already) == (0, 3) and len(records(dst)) == 1


def test_trust_flag_puts_entries_in_the_trusted_store(tmp_path, source, dst):
    src, keys = source
    u = unpack(_zip(tmp_path / "p.zip", _members(src, keys)), dst, tmp_path / "w", trust=True)
    assert u.trusted and u.imported == 3
    assert all(Store(dst.root).has(k) and Store(dst.root).origin(k) is None for k in keys)


def _damaged(src: Store, keys: list[str], how: str, tmp_path: Path) -> tuple[Path, str, Limits | None]:
    """A pack damaged in one way, the message it must be refused with, and the limits to use."""
    m = _members(src, keys)
    k0, k2 = keys[0], keys[2]
    manifest = json.loads(m[f"objects/{k2}/manifest.json"])
    limits = None
    if how == "not-a-zip":
        p = tmp_path / "p.zip"
        p.write_bytes(b"PK\x03\x04 this is not really a zip" * 10)
        return p, "not a zip file", None
    if how == "empty-file":
        p = tmp_path / "p.zip"
        p.write_bytes(b"")
        return p, "not a zip file", None
    if how == "truncated":
        p = _zip(tmp_path / "full.zip", m)
        raw = p.read_bytes()
        (tmp_path / "p.zip").write_bytes(raw[: len(raw) // 2])
        return tmp_path / "p.zip", "not a zip file", None
    if how == "pack-json-not-json":
        m["pack.json"] = b"{not json"
        want = "pack.json is not valid JSON"
    elif how == "pack-json-not-object":
        m["pack.json"] = b"[1, 2]"
        want = "not a JSON object"
    elif how == "pack-json-missing":
        del m["pack.json"]
        want = "no pack.json"
    elif how == "pack-format":
        m["pack.json"] = json.dumps({"pack_format": 99, "study": "s.study", "entries": keys}).encode()
        want = "pack format 99 is not supported"
    elif how == "entries-mismatch":
        m["pack.json"] = json.dumps({"pack_format": 1, "study": "s.study", "entries": keys[:2]}).encode()
        want = "do not match the pack's objects"
    elif how == "no-study":
        del m["study/s.study"]
        want = "no study/s.study"
    elif how == "study-not-utf8":
        m["study/s.study"] = b"study \xff\xfe\n"
        want = "not UTF-8"
    elif how == "checksum":  # the last entry's payload flipped: the first two must not be imported either
        name = f"objects/{k2}/tensors.safetensors"
        m[name] = m[name][:-1] + bytes([m[name][-1] ^ 1])
        want = "does not match its checksum"
    elif how == "manifest-not-json":
        m[f"objects/{k2}/manifest.json"] = b"\x00\x01garbage"
        want = "manifest.json is not valid JSON"
    elif how == "manifest-wrong-key":
        manifest["key"] = k0
        m[f"objects/{k2}/manifest.json"] = json.dumps(manifest).encode()
        want = "manifest names key"
    elif how == "manifest-not-its-key":  # params edited: checksums fine, but the key is not the hash
        manifest["params"] = {"factor": 30.0}
        m[f"objects/{k2}/manifest.json"] = json.dumps(manifest).encode()
        want = "do not hash to its key"
    elif how == "unlisted-payload":
        m[f"objects/{k2}/data.json"] = b"{}"
        manifest["files"].pop("data.json", None)
        m[f"objects/{k2}/manifest.json"] = json.dumps(manifest).encode()
        want = "do not match the manifest"
    elif how == "bad-safetensors":  # consistent checksums, but not a safetensors file
        bad = b"\xff" * 64
        m[f"objects/{k2}/tensors.safetensors"] = bad
        manifest["files"]["tensors.safetensors"] = {"bytes": 64, "xxh3_128": _xxh(bad)}
        m[f"objects/{k2}/manifest.json"] = json.dumps(manifest).encode()
        want = "not a safetensors file"
    elif how == "bad-parquet":
        bad = b"PAR1" + b"\x00" * 40
        m[f"objects/{k2}/table-result.parquet"] = bad
        manifest["files"]["table-result.parquet"] = {"bytes": len(bad), "xxh3_128": _xxh(bad)}
        m[f"objects/{k2}/manifest.json"] = json.dumps(manifest).encode()
        want = "not a parquet file"
    elif how == "too-many-members":
        limits = Limits(max_members=5)
        want = "more than the limit of 5"
    elif how == "too-big":
        limits = Limits(max_bytes=2_000, max_member=2_000)
        want = "over the limit|more than"
    elif how.startswith("member:"):
        m[how[len("member:"):]] = b"x"
        want = "refusing unexpected member"
    else:
        raise AssertionError(how)
    return _zip(tmp_path / "p.zip", m), want, limits


def _xxh(data: bytes) -> str:
    import xxhash

    return xxhash.xxh3_128_hexdigest(data)


BAD = [
    "not-a-zip", "empty-file", "truncated", "pack-json-not-json", "pack-json-not-object", "pack-json-missing",
    "pack-format", "entries-mismatch", "no-study", "study-not-utf8", "checksum", "manifest-not-json",
    "manifest-wrong-key", "manifest-not-its-key", "unlisted-payload", "bad-safetensors", "bad-parquet",
    "too-many-members", "too-big",
    # escaping and foreign members
    "member:../evil.py", "member:/etc/cron.d/x.json", "member:objects/0123/../../x.json",
    "member:objects/" + "0" * 32 + "/payload.pkl", "member:objects/notakey/manifest.json", "member:run.sh",
    "member:study/../../outside.study", "member:study/a/../../b.study", "member:study/.hidden/x.study",
    "member:study/evil.py", "member:study/x.study/../y.csv", "member:study\\..\\x.study",
]


@pytest.mark.parametrize("how", BAD)
def test_bad_pack_is_refused_and_changes_nothing(tmp_path, source, dst, how):
    src, keys = source
    pack, want, limits = _damaged(src, keys, how, tmp_path)
    _refused(pack, dst, tmp_path / "w", want, limits)


def test_symlink_directory_duplicate_and_encrypted_members_are_refused(tmp_path, source, dst):
    src, keys = source
    m = _members(src, keys)
    link = zipfile.ZipInfo("study/link.csv", date_time=(2020, 1, 1, 0, 0, 0))
    link.external_attr = (0o120777 << 16)  # a symlink to /etc/passwd
    _refused(_zip(tmp_path / "a.zip", {**m, "study/link.csv": b"/etc/passwd"}, **{"study/link.csv": link}),
             dst, tmp_path / "w", "not a plain file")
    _refused(_zip(tmp_path / "b.zip", {**m, "study/data/": b""}), dst, tmp_path / "w", "directory entry|unexpected")
    p = tmp_path / "c.zip"
    with zipfile.ZipFile(p, "w") as z:
        for name, data in m.items():
            z.writestr(name, data)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            z.writestr("study/s.study", b"study \"other\"\n")  # a second member of the same name
    _refused(p, dst, tmp_path / "w", "appears twice")
    raw = bytearray(_zip(tmp_path / "d.zip", m).read_bytes())
    i = raw.find(b"PK\x01\x02")  # set the "encrypted" flag of the first member in the central directory
    raw[i + 8] |= 1
    (tmp_path / "d.zip").write_bytes(bytes(raw))
    _refused(tmp_path / "d.zip", dst, tmp_path / "w", "encrypted|not a zip")


def _bomb(path: Path, mib: int, name: str = "objects/" + "1" * 32 + "/tensors.safetensors") -> Path:
    """A zip whose one payload is `mib` MiB of zeros (about 1000:1 deflated), written streaming."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("pack.json", json.dumps({"pack_format": 1, "study": "s.study", "entries": ["1" * 32]}))
        z.writestr("study/s.study", STUDY)
        info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        with z.open(info, "w", force_zip64=True) as f:
            zeros = bytes(1 << 20)
            for _ in range(mib):
                f.write(zeros)
    return path


def test_zip_bomb_is_refused_from_its_header_without_inflating(tmp_path, dst):
    pack = _bomb(tmp_path / "bomb.zip", 1536)  # 1.5 GiB of zeros in about 1.5 MB
    assert pack.stat().st_size < 3_000_000
    tracemalloc.start()
    msg = _refused(pack, dst, tmp_path / "w", "compression ratio")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20_000_000, f"{peak:,} bytes of Python memory used to refuse it"
    assert "zip bomb" in msg


def test_zip_bomb_with_a_lying_header_is_stopped_while_inflating(tmp_path, dst):
    """The headers claim 1000 bytes; the member inflates to 64 MiB: refused as soon as it passes
    1000 bytes, without writing or holding the rest."""
    pack = _bomb(tmp_path / "liar.zip", 64)
    raw = bytearray(pack.read_bytes())
    with zipfile.ZipFile(pack) as z:
        info = z.getinfo("objects/" + "1" * 32 + "/tensors.safetensors")
    # Rewrite the uncompressed size in the member's central directory record (what readers trust).
    assert info.file_size == 64 << 20
    name = info.filename.encode()
    i = raw.find(b"PK\x01\x02")
    while raw[i + 46 : i + 46 + len(name)] != name:
        i = raw.find(b"PK\x01\x02", i + 1)
    raw[i + 24 : i + 28] = struct.pack("<I", 1000)
    (tmp_path / "liar.zip").write_bytes(bytes(raw))
    with zipfile.ZipFile(tmp_path / "liar.zip") as z:
        assert z.getinfo("objects/" + "1" * 32 + "/tensors.safetensors").file_size == 1000
    tracemalloc.start()
    _refused(tmp_path / "liar.zip", dst, tmp_path / "w", "past its declared size|cannot be read|Bad CRC|header says")
    assert tracemalloc.get_traced_memory()[1] < 20_000_000
    tracemalloc.stop()


def test_existing_different_study_file_is_not_overwritten(tmp_path, source, dst):
    src, keys = source
    (tmp_path / "w" / "s.study").write_text('study "mine"\n')
    before = _snapshot(dst.root)
    with pytest.raises(PackError, match="exists and differs"):
        unpack(_zip(tmp_path / "p.zip", _members(src, keys)), dst, tmp_path / "w")
    assert _snapshot(dst.root) == before and list((dst.root / "tmp").iterdir()) == []
    assert (tmp_path / "w" / "s.study").read_text() == 'study "mine"\n'


def test_refusal_of_a_fresh_cache_leaves_no_directory(tmp_path, source):
    src, keys = source
    pack, _, _ = _damaged(src, keys, "checksum", tmp_path)
    with pytest.raises(PackError):
        unpack(pack, Store(tmp_path / "fresh", create=False), tmp_path)
    assert not (tmp_path / "fresh").exists()


def test_compare_artifacts_tolerance():
    import polars as pl

    a = Artifact(tensors={"x": torch.tensor([1.0, 2.0])}, tables={"r": pl.DataFrame({"v": [0.5], "k": ["a"]})})
    b = Artifact(tensors={"x": torch.tensor([1.0, 2.0 + 1e-7])}, tables={"r": pl.DataFrame({"v": [0.5 + 1e-8], "k": ["a"]})})
    assert compare_artifacts(a, b) == []
    c = Artifact(tensors={"x": torch.tensor([1.0, 2.1])}, tables={"r": pl.DataFrame({"v": [0.5], "k": ["b"]})})
    diffs = compare_artifacts(a, c)
    assert any("tensor x" in d for d in diffs) and any("r.k" in d for d in diffs)


def test_checksum_helper_matches_manifest(source):
    src, keys = source
    m = src.manifest(keys[1])
    for name, meta in m["files"].items():
        assert checksum(src.path(keys[1]) / name) == meta["xxh3_128"]
