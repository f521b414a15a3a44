"""Packs: a study, its lock and its cached results in one zip that is safe to open.

    study pack STUDY [-o FILE] [--all]      results + charts (or every node with --all)
    study unpack PACK [--dir D] [--trust]   import the entries (checked) and extract the study
    study run STUDY --from PACK             unpack, then run: the report appears with no recompute
    study verify STUDY [--from PACK]        recompute here; equal results become trusted

What a pack proves, and what it does not
----------------------------------------
Every payload's checksum, every manifest's key (the hash of its op, version, params and input
keys) and every file's format are checked, so a pack proves that its bytes are intact and that
each entry *claims* to be the result of the computation its key names. It does not prove the
claim: anyone can write a pack whose entries carry made-up numbers under the right keys. So
imported entries are not trusted as if they had been computed here:

- they are kept apart, under `packs/<pack id>/` in the store, never in `objects/`;
- they serve only the pack's own study: the study file extracted from the pack (or named with
  `study run STUDY --from PACK`), at that path and with the pack's text. Another study that shares
  a node key with the pack recomputes that node; editing the pack's study makes it another study;
- a run they serve says so ("N results come from pack ..., not computed here"), and the report
  marks them "imported";
- `study verify STUDY` recomputes the study here and moves what it computed into the trusted
  store; each result is reported "ok" (the pack's numbers agree within tolerance) or "DIFF";
- `study unpack --trust` / `study run --from PACK --trust` trust a pack wholesale: its entries go
  into `objects/` and serve every study, as if computed here. Use it for packs you made yourself.

Import is all or nothing. Before anything enters the store, the whole zip is checked while it is
streamed into a temp dir: member names against a whitelist (no paths outside the pack, no symlinks,
no other file kinds, no duplicates), declared and actual sizes against limits, compression ratios
(a zip bomb is refused from its header, or as soon as it inflates past its declared size, never read
whole into memory), JSON, manifests, keys, checksums and payload formats. On any failure the temp
dir is removed and the store is byte-for-byte as before. A study opened from a pack reads files only
inside the pack (engine/confine.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from mechstudy.engine.store import (
    MANIFEST, CorruptEntry, Overlay, Store, checksum, verify_dir, write_json_atomic,
)

PACK_FORMAT = 1
RECORD = "record.json"
_KEY = re.compile(r"^[0-9a-f]{32}$")
_PAYLOAD = re.compile(r"^(manifest\.json|tensors\.safetensors|data\.json|table-[A-Za-z0-9_]+\.parquet)$")
_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
_STUDY_SUFFIXES = (".study", ".study.lock", ".csv", ".tsv", ".parquet", ".pq", ".jsonl", ".ndjson", ".json")
_CHUNK = 1 << 20


class PackError(Exception):
    """A pack that cannot be made or opened; the message is one line."""


@dataclass(frozen=True)
class Limits:
    """What an imported pack may hold. Raise them with `--max-bytes` (or MECHSTUDY_PACK_MAX_BYTES)
    for packs you expect to be big; the ratio limit only applies to members over 1 MiB."""

    max_bytes: int = 8 << 30  # all members together, uncompressed
    max_member: int = 4 << 30  # one member, uncompressed
    max_members: int = 100_000
    max_ratio: float = 200.0  # uncompressed / compressed, for members over 1 MiB
    max_json: int = 16 << 20  # pack.json, a manifest, data.json

    @classmethod
    def from_env(cls, max_bytes: int | None = None) -> "Limits":
        env = os.environ.get("MECHSTUDY_PACK_MAX_BYTES")
        total = max_bytes if max_bytes is not None else (int(env) if env and env.isdigit() else None)
        if total is None:
            return cls()
        return cls(max_bytes=total, max_member=min(total, cls.max_member))


# ---- writing ---------------------------------------------------------------------------------


def pack(study_path: str | Path, store: Store, out: str | Path, everything: bool = False) -> tuple[Path, int]:
    """Write a pack; returns its path and the number of entries in it."""
    from mechstudy.engine import confine
    from mechstudy.engine.run import check_and_plan, write_lock

    study_path = Path(study_path)
    with confine.for_study(study_path):
        plan = check_and_plan(study_path)
        data_base = confine.root() or Path.cwd()  # where `file` datasets' relative paths start
    lock = write_lock(plan, Path(str(study_path) + ".lock"))
    nodes = plan.nodes() if everything else plan.roots()
    missing = [n.dask_key for n in nodes if not store.has_local(n.key)]
    if missing:
        imported = [n for n in nodes if not store.has_local(n.key) and store.has(n.key)]
        if imported:
            raise PackError(f"{len(imported)} result(s) come from pack {store.origin(imported[0].key)[:12]} and were "
                            f"not computed here; run `study verify {study_path}` first")
        raise PackError(f"{len(missing)} result(s) are not computed yet (e.g. {missing[0]}); run the study first")
    # The files the study reads, stored under study/ with the paths it names them by.
    base = study_path.parent
    extra: dict[str, Path] = {}
    for where, stmt in confine.used_files(study_path):
        target = where.parent / stmt.path.value
        rel = _relative(target, base)
        if rel is None:
            raise PackError(f"{where}: `use \"{stmt.path.value}\"` names a file outside {base or '.'}; "
                            "a pack can carry only files beside the study")
        extra[rel] = target
    for name, n in plan.datasets.items():
        if n.param("generator") == "file":
            path = str(n.param("params", {}).get("path", ""))
            full = data_base / path
            rel = _relative(full, data_base) if not Path(path).is_absolute() else None
            if rel is None or rel != Path(path).as_posix():
                raise PackError(f"dataset {name.split('@')[0]} reads {path!r}: a pack can carry only files named by "
                                "relative paths inside the current directory")
            extra[rel] = full
    for rel in extra:
        try:
            _check_member_name(f"study/{rel}")
        except PackError:
            raise PackError(f"cannot pack {rel!r}: the files a pack carries need names of letters, digits and "
                            "_ . - (and a known suffix)") from None
    out = Path(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.writestr("pack.json", json.dumps({"pack_format": PACK_FORMAT, "study": study_path.name,
                                                "entries": [n.key for n in nodes]}, indent=1))
            _add(z, f"study/{study_path.name}", study_path.read_bytes())
            _add(z, f"study/{lock.name}", lock.read_bytes())
            for rel, p in sorted(extra.items()):
                _add(z, f"study/{rel}", p.read_bytes())
            for n in nodes:
                store.verify(n.key)
                for f in sorted(store.local_path(n.key).iterdir()):
                    _add(z, f"objects/{n.key}/{f.name}", f.read_bytes())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out, len(nodes)


def _add(z: zipfile.ZipFile, name: str, data: bytes) -> None:
    """Deflate, unless that would look like a zip bomb to `unpack` (long runs of zeros do)."""
    import zlib

    method = zipfile.ZIP_DEFLATED
    if len(data) > (1 << 20) and len(data) / max(1, len(zlib.compress(data, 6))) > Limits.max_ratio / 2:
        method = zipfile.ZIP_STORED
    z.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data, compress_type=method)


def _relative(target: Path, base: Path) -> str | None:
    try:
        return target.resolve().relative_to(base.resolve()).as_posix()
    except (ValueError, OSError):
        return None


# ---- reading ---------------------------------------------------------------------------------


@dataclass
class Unpacked:
    study: Path
    imported: int
    already: int
    pack_id: str = ""
    trusted: bool = False


def _short(s: Any, n: int = 60) -> str:
    r = repr(s)
    return r if len(r) <= n else r[: n - 4] + "...'"


def _check_member_name(name: str) -> str:
    """"meta" | "study" | "object"; else PackError."""
    if name == "pack.json":
        return "meta"
    parts = name.split("/")
    if len(parts) == 3 and parts[0] == "objects" and _KEY.match(parts[1]) and _PAYLOAD.match(parts[2]):
        return "object"
    if (parts[0] == "study" and 2 <= len(parts) <= 9 and all(_PART.match(p) and p not in (".", "..") for p in parts[1:])
            and parts[-1].endswith(_STUDY_SUFFIXES)):
        return "study"
    raise PackError(f"refusing unexpected member {_short(name)}")


@dataclass
class _Scan:
    meta: dict[str, Any]
    study: str
    entries: dict[str, list[zipfile.ZipInfo]] = field(default_factory=dict)
    study_files: list[zipfile.ZipInfo] = field(default_factory=list)


def _scan(z: zipfile.ZipFile, limits: Limits) -> _Scan:
    """Check the central directory (names, kinds, sizes, ratios) before reading any member."""
    infos = z.infolist()
    if len(infos) > limits.max_members:
        raise PackError(f"{len(infos)} members, more than the limit of {limits.max_members}")
    seen: set[str] = set()
    total = 0
    kinds: dict[str, str] = {}
    for i in infos:
        name = i.filename
        if name in seen:
            raise PackError(f"member {_short(name)} appears twice")
        seen.add(name)
        if i.is_dir():
            raise PackError(f"refusing unexpected member {_short(name)} (a directory entry)")
        kinds[name] = _check_member_name(name)
        mode = (i.external_attr >> 16) & 0o170000
        if mode and mode != 0o100000:
            raise PackError(f"member {_short(name)} is not a plain file (a link or device)")
        if i.flag_bits & 0x1:
            raise PackError(f"member {_short(name)} is encrypted")
        if i.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise PackError(f"member {_short(name)} uses compression method {i.compress_type}; only stored and deflate are read")
        if i.file_size > limits.max_member:
            raise PackError(f"member {_short(name)} would inflate to {i.file_size:,} bytes, over the limit of "
                            f"{limits.max_member:,} (raise it with --max-bytes if you expect that)")
        if i.file_size > (1 << 20) and i.file_size / max(1, i.compress_size) > limits.max_ratio:
            raise PackError(f"member {_short(name)} has a compression ratio of {i.file_size / max(1, i.compress_size):.0f}:1, "
                            f"over the limit of {limits.max_ratio:.0f}:1 (a zip bomb?)")
        total += i.file_size
        if total > limits.max_bytes:
            raise PackError(f"the pack would inflate to more than {limits.max_bytes:,} bytes "
                            "(raise the limit with --max-bytes if you expect that)")
    if "pack.json" not in kinds:
        raise PackError("not a mechstudy pack (no pack.json)")
    meta = _json(_read_member(z, z.getinfo("pack.json"), limits.max_json), "pack.json")
    if not isinstance(meta, dict):
        raise PackError("pack.json is not a JSON object")
    if meta.get("pack_format") != PACK_FORMAT:
        raise PackError(f"pack format {_short(meta.get('pack_format'), 20)} is not supported (this mechstudy reads {PACK_FORMAT})")
    study = meta.get("study")
    if not isinstance(study, str) or not _PART.match(study) or not study.endswith(".study"):
        raise PackError(f"pack.json names no valid study file ({_short(study)})")
    listed = meta.get("entries")
    if not isinstance(listed, list) or not all(isinstance(k, str) and _KEY.match(k) for k in listed):
        raise PackError("pack.json's entries must be a list of 32-hex-digit keys")
    scan = _Scan(meta, study)
    for i in infos:
        if kinds[i.filename] == "object":
            scan.entries.setdefault(i.filename.split("/")[1], []).append(i)
        elif kinds[i.filename] == "study":
            scan.study_files.append(i)
    if set(listed) != set(scan.entries):
        extra = sorted(set(scan.entries) - set(listed))
        lack = sorted(set(listed) - set(scan.entries))
        raise PackError("pack.json's entries do not match the pack's objects ("
                        + (f"{len(lack)} listed but absent, e.g. {lack[0][:16]}" if lack else f"{len(extra)} unlisted, e.g. {extra[0][:16]}") + ")")
    if f"study/{study}" not in {i.filename for i in scan.study_files}:
        raise PackError(f"the pack has no study/{study}")
    return scan


def _read_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """A small member, read whole but never past `limit` or its declared size."""
    if info.file_size > limit:
        raise PackError(f"member {_short(info.filename)} is {info.file_size:,} bytes, over the limit of {limit:,} for its kind")
    buf = bytearray()
    for chunk in _stream(z, info, min(limit, info.file_size)):
        buf += chunk
    return bytes(buf)


def _stream(z: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> Iterable[bytes]:
    """A member's bytes in chunks, stopped as soon as they pass its declared size or `limit`
    (a header that lies about the size is caught while inflating, not after)."""
    n = 0
    try:
        with z.open(info) as f:
            while True:
                chunk = f.read(_CHUNK)
                if not chunk:
                    break
                n += len(chunk)
                if n > info.file_size or n > limit:
                    raise PackError(f"member {_short(info.filename)} inflates past its declared size of {info.file_size:,} bytes")
                yield chunk
    except (zipfile.BadZipFile, zlib_error(), EOFError, OSError, ValueError, NotImplementedError, RuntimeError) as e:
        raise PackError(f"member {_short(info.filename)} cannot be read: {_short(str(e) or type(e).__name__, 120)}") from None
    if n != info.file_size:
        raise PackError(f"member {_short(info.filename)} has {n:,} bytes, its header says {info.file_size:,}")


def zlib_error() -> type:
    import zlib

    return zlib.error


def _json(raw: bytes, what: str) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise PackError(f"{what} is not valid JSON") from None


def pack_id_of(path: Path) -> str:
    """The pack's identity: the sha256 of its bytes (first 32 hex digits)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:32]


def unpack(pack_path: str | Path, store: Store, study_dir: str | Path | None = None, *, trust: bool = False,
           limits: Limits | None = None) -> Unpacked:
    """Import a pack's entries into `store` (all checked first; nothing on failure) and extract its
    study files into `study_dir` (default: the current directory). Untrusted entries go to
    `packs/<id>/` and serve only the extracted study; `trust=True` puts them in `objects/`.
    Raises `PackError` with a one-line message."""
    limits = limits or Limits.from_env()
    pack_path = Path(pack_path)
    target = Path(study_dir) if study_dir is not None else Path(".")
    try:
        size = pack_path.stat().st_size
    except OSError as e:
        raise PackError(f"{pack_path}: cannot read it ({e.strerror or type(e).__name__})") from None
    if not pack_path.is_file():
        raise PackError(f"{pack_path}: not a file")
    if size > limits.max_bytes:
        raise PackError(f"{pack_path}: {size:,} bytes, over the limit of {limits.max_bytes:,} (raise it with --max-bytes)")
    try:
        z = zipfile.ZipFile(pack_path)
    except (zipfile.BadZipFile, zlib_error(), OSError, ValueError, EOFError, struct.error, NotImplementedError) as e:
        raise PackError(f"{pack_path}: not a zip file ({_short(str(e) or type(e).__name__, 80)})") from None
    made: list[Path] = []  # store directories this call created (removed again on failure)
    undo: list[Any] = []  # how to take back what was committed, should a later step fail
    stage: Path | None = None
    try:
        with z:
            scan = _scan(z, limits)
            pack_id = pack_id_of(pack_path)
            area = store.root / "packs" / pack_id
            made = store.ensure()
            stage = store.tmpdir("unpack")
            written = 0
            for key, infos in scan.entries.items():
                d = stage / "objects" / key[:2] / key
                d.mkdir(parents=True)
                for info in infos:
                    written += _extract(z, info, d / info.filename.split("/")[2], limits)
                    if written > limits.max_bytes:
                        raise PackError(f"the pack inflates to more than {limits.max_bytes:,} bytes")
                _check_entry(key, d, limits)
            files = stage / "study"
            rels = [info.filename[len("study/"):] for info in scan.study_files]
            for info, rel in zip(scan.study_files, rels):
                (files / rel).parent.mkdir(parents=True, exist_ok=True)
                _extract(z, info, files / rel, limits)
        try:
            (files / scan.study).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise PackError(f"study/{scan.study} is not UTF-8 text") from None
        # Refuse to overwrite a file that differs (a lock is rewritten by every run: keep the user's).
        for rel in rels:
            dest = target / rel
            if rel.endswith(".lock"):
                continue
            if dest.is_symlink() or (dest.exists() and (not dest.is_file() or dest.read_bytes() != (files / rel).read_bytes())):
                raise PackError(f"{dest} exists and differs from the pack's copy; unpack into another directory (--dir)")
        keys = sorted(scan.entries)
        record = {
            "pack_id": pack_id, "source": str(pack_path.resolve()), "study": scan.study,
            "imported": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "trusted": trust, "entries": keys,
            "files": {rel: _sha256(files / rel) for rel in rels if not rel.endswith(".lock")}, "roots": [],
        }
        # Everything is checked: commit. Study files first (outside the store), then the entries.
        for rel in rels:
            dest = target / rel
            if dest.exists():
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
            shutil.copyfile(files / rel, tmp)
            os.replace(tmp, dest)
            undo.append(dest.unlink)
        imported = already = 0
        if trust:
            for key in keys:
                if store.adopt(key, stage / "objects" / key[:2] / key):
                    imported += 1
                    undo.append(lambda k=key: shutil.rmtree(store.local_path(k), ignore_errors=True))
                else:
                    already += 1
            if not (area / RECORD).is_file():
                write_json_atomic(area / RECORD, record)
        elif (area / RECORD).is_file():
            already = len(keys)  # imported before
        else:
            already = sum(store.has_local(k) for k in keys)
            imported = len(keys) - already
            shutil.rmtree(files)
            write_json_atomic(stage / RECORD, record)
            area.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(stage, area)
                stage = None
                undo.append(lambda: shutil.rmtree(area, ignore_errors=True))
            except OSError:  # another process imported the same pack meanwhile
                if not (area / RECORD).is_file():
                    raise
        from mechstudy.engine.confine import mark

        mark(target, scan.study, pack_id)
        undo.clear()
        made = []
        study = target / scan.study
        bind(store, pack_id, study)
        return Unpacked(study, imported, already, pack_id, trust)
    except BaseException:
        for action in reversed(undo):
            try:
                action()
            except OSError:
                pass
        for p in reversed(made):
            shutil.rmtree(p, ignore_errors=True)
        raise
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)


def _extract(z: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, limits: Limits) -> int:
    n = 0
    with open(dest, "xb") as f:
        for chunk in _stream(z, info, limits.max_member):
            f.write(chunk)
            n += len(chunk)
    return n


def _sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _check_entry(key: str, d: Path, limits: Limits) -> None:
    """An entry directory, before it may enter the store: a JSON manifest whose op, version,
    params and inputs hash to `key`, its files exactly as listed, checksums, and loadable formats."""
    from mechstudy.engine.plan import canonical_json, hash_text

    mp = d / MANIFEST
    if not mp.is_file():
        raise PackError(f"entry {key[:16]}: no manifest.json")
    if mp.stat().st_size > limits.max_json:
        raise PackError(f"entry {key[:16]}: manifest.json is over {limits.max_json:,} bytes")
    m = _json(mp.read_bytes(), f"entry {key[:16]}'s manifest.json")
    if not isinstance(m, dict):
        raise PackError(f"entry {key[:16]}: manifest.json is not a JSON object")
    if m.get("key") != key:
        raise PackError(f"entry {key[:16]}: manifest names key {_short(m.get('key'), 24)}")
    try:
        claimed = hash_text(canonical_json({"op": m["op"], "version": m["op_version"], "params": m["params"],
                                            "inputs": m["inputs"]}))
    except (KeyError, TypeError):
        raise PackError(f"entry {key[:16]}: manifest lacks op, op_version, params or inputs") from None
    if claimed != key:
        raise PackError(f"entry {key[:16]}: its manifest's op, params and inputs do not hash to its key")
    files = m.get("files")
    if not isinstance(files, dict) or not all(isinstance(f, str) and _PAYLOAD.match(f) and f != MANIFEST for f in files):
        raise PackError(f"entry {key[:16]}: the manifest's file list is malformed")
    present = {p.name for p in d.iterdir()} - {MANIFEST}
    if set(files) != present:
        raise PackError(f"entry {key[:16]}: files {sorted(present)} do not match the manifest {sorted(files)}")
    try:
        verify_dir(key, d, m)
    except CorruptEntry as e:
        raise PackError(f"entry {e}") from None
    for name in files:
        try:
            _check_format(d / name, limits)
        except PackError as e:
            raise PackError(f"entry {key[:16]}: {name}: {e}") from None


_ST_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
              "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


def _check_format(p: Path, limits: Limits) -> None:
    """The payload loads as what its name says, without reading more than headers."""
    if p.name == "data.json":
        if p.stat().st_size > limits.max_json:
            raise PackError(f"over {limits.max_json:,} bytes")
        _json(p.read_bytes(), "data.json")
    elif p.name.endswith(".safetensors"):
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise PackError("not a safetensors file")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 100 << 20):
                raise PackError("not a safetensors file (header length)")
            header = _json(f.read(n), "the safetensors header")
        if not isinstance(header, dict):
            raise PackError("not a safetensors file (header)")
        body = size - 8 - n
        for name, t in header.items():
            if name == "__metadata__":
                continue
            try:
                dtype, shape, (a, b) = t["dtype"], t["shape"], t["data_offsets"]
                count = 1
                for s in shape:
                    if not isinstance(s, int) or s < 0:
                        raise ValueError
                    count *= s
                ok = dtype in _ST_DTYPES and 0 <= a <= b <= body and b - a == count * _ST_DTYPES[dtype]
            except (KeyError, TypeError, ValueError):
                ok = False
            if not ok:
                raise PackError(f"tensor {_short(name, 40)} has a malformed header record")
    elif p.name.endswith(".parquet"):
        import polars as pl

        try:
            pl.read_parquet_schema(p)
        except Exception:  # noqa: BLE001 - any failure to read the footer means "not parquet"
            raise PackError("not a parquet file") from None


# ---- which packs serve which study ------------------------------------------------------------


@dataclass
class PackRecord:
    pack_id: str
    area: Path
    data: dict[str, Any]

    @property
    def name(self) -> str:
        return Path(self.data.get("source", self.pack_id)).name

    def overlay(self) -> Overlay:
        return Overlay(self.pack_id, str(self.area / "objects"))


def records(store: Store) -> list[PackRecord]:
    out = []
    d = store.root / "packs"
    if not d.is_dir():
        return out
    for area in sorted(d.iterdir()):
        try:
            data = json.loads((area / RECORD).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            out.append(PackRecord(area.name, area, data))
    return out


def _matches(rec: PackRecord, study: Path, root: Path) -> bool:
    files = rec.data.get("files") or {}
    main = rec.data.get("study")
    if not isinstance(files, dict) or main not in files:
        return False
    for rel, digest in files.items():
        p = root / rel
        try:
            if not p.is_file() or _sha256(p) != digest:
                return False
        except OSError:
            return False
    return study.resolve() == (root / main).resolve()


def bind(store: Store, pack_id: str, study: Path) -> bool:
    """Record that the study at `study` is this pack's own (when its files equal the pack's)."""
    area = store.root / "packs" / pack_id
    try:
        data = json.loads((area / RECORD).read_text())
    except (OSError, ValueError):
        return False
    rec = PackRecord(pack_id, area, data)
    root = study.resolve().parent
    if not _matches(rec, study, root):
        return False
    roots = [r for r in data.get("roots", []) if isinstance(r, str)]
    if str(root) not in roots:
        write_json_atomic(area / RECORD, {**data, "roots": roots + [str(root)]})
    return True


def serving(store: Store, study: str | Path) -> list[PackRecord]:
    """The imported (untrusted) packs whose own study is `study`: same path, same files."""
    study = Path(study)
    try:
        root = study.resolve().parent
    except OSError:
        return []
    out = []
    for rec in records(store):
        if rec.data.get("trusted") or str(root) not in rec.data.get("roots", []):
            continue
        if _matches(rec, study, root):
            out.append(rec)
    return out


# ---- comparing and verifying ----------------------------------------------------------------


def compare_artifacts(a: Any, b: Any, rtol: float = 1e-4, atol: float = 1e-5) -> list[str]:
    """Differences between two artifacts beyond tolerance (empty when they agree)."""
    import numpy as np
    import torch

    diffs = []
    for k in sorted(set(a.tensors) | set(b.tensors)):
        if k not in a.tensors or k not in b.tensors:
            diffs.append(f"tensor {k} present in only one")
            continue
        x, y = a.tensors[k], b.tensors[k]
        if x.shape != y.shape:
            diffs.append(f"tensor {k}: shape {tuple(x.shape)} vs {tuple(y.shape)}")
        elif x.is_floating_point():
            if not torch.allclose(x.float(), y.float(), rtol=rtol, atol=atol, equal_nan=True):
                diffs.append(f"tensor {k}: max abs diff {(x.float() - y.float()).abs().max().item():.3g}")
        elif not torch.equal(x, y):
            diffs.append(f"tensor {k}: integer values differ")
    for k in sorted(set(a.tables) | set(b.tables)):
        if k not in a.tables or k not in b.tables:
            diffs.append(f"table {k} present in only one")
            continue
        x, y = a.tables[k], b.tables[k]
        if x.columns != y.columns or x.height != y.height:
            diffs.append(f"table {k}: shape/columns differ")
            continue
        for c in x.columns:
            if x[c].dtype.is_float():
                xa, ya = x[c].to_numpy(), y[c].to_numpy()
                if not np.allclose(xa, ya, rtol=rtol, atol=atol, equal_nan=True):
                    diffs.append(f"table {k}.{c}: max abs diff {np.nanmax(np.abs(xa - ya)):.3g}")
            elif not x[c].equals(y[c]):
                diffs.append(f"table {k}.{c}: values differ")
    return diffs


def verify(study_path: str | Path, store: Store, rtol: float = 1e-4, atol: float = 1e-5, device: str = "cpu",
           log: Any = None) -> list[str]:
    """Recompute every result of a study from scratch (in a scratch store) and compare it with the
    stored one: the trusted entry, else the entry of a pack that serves this study, else any
    imported pack's. Returns one line per result: "ok NAME", "DIFF NAME: ..." or "missing NAME".

    Everything recomputed was computed here, so it then moves into the trusted store: results an
    imported pack had (and agreed on) become trusted, and a pack that disagreed no longer serves
    anything its study shares with the recomputed ones."""
    from mechstudy.engine.graph import run_nodes
    from mechstudy.engine.run import check_and_plan

    plan = check_and_plan(study_path)
    lines = []
    overlays = [r.overlay() for r in serving(store, study_path)]
    overlays += [r.overlay() for r in records(store) if r.overlay() not in overlays and not r.data.get("trusted")]
    view = Store(store.root, create=False, overlays=overlays)
    scratch = store.tmpdir("verify")
    try:
        fresh = Store(scratch)
        roots = [n for r in plan.results.values() for n in r.nodes]
        run_nodes(roots, fresh, device=device, warn=log or (lambda s: None))
        for name, res in plan.results.items():
            for n in res.nodes:
                if not view.has(n.key):
                    lines.append(f"missing {name} ({n.dask_key}): not in the store being verified")
                    continue
                origin = view.origin(n.key)
                try:
                    stored = view.get(n.key)
                except (CorruptEntry, KeyError) as e:
                    lines.append(f"DIFF {name}: the stored entry is damaged ({e})")
                    continue
                diffs = compare_artifacts(stored, fresh.get(n.key), rtol, atol)
                where = f" (from pack {origin[:12]}; now trusted)" if origin else ""
                lines.append(f"ok {name}{where}" if not diffs else f"DIFF {name}: " + "; ".join(diffs))
        for key in list(fresh.keys()):  # computed here: trusted
            store.adopt(key, fresh.local_path(key))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return lines
