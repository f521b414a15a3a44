"""The content-addressed store: one directory per node key, safe formats only.

Layout (under `cache/` by default, `--cache DIR` or `MECHSTUDY_CACHE` to move it)::

    objects/<key[:2]>/<key>/manifest.json     op, params, input keys, versions, timings, checksums
                            tensors.safetensors
                            table-<name>.parquet
                            data.json
    packs/<pack id>/record.json               an imported pack: where from, its study, bindings
                   /objects/<key[:2]>/<key>/  its entries, kept apart (see engine/pack.py)
    studies/<hash of the study path>.json     which study last ran here, its lock and its keys
    locks/<key>.lock                          per-key lock: two runs never compute one node
    tmp/                                      temp dirs of writes in progress (renamed into place)

`objects/` holds only what is trusted: entries computed here, recomputed by `study verify`, or
imported from a pack with `--trust`. Entries of other packs live under `packs/` and are read only
through a store whose `overlays` name them (a run of the pack's own study); they never answer
`has()` for anything else.

Writes go to a temporary directory inside the store and are renamed into place, so a crash or
SIGKILL leaves either a whole entry or none. Every read checks sizes and checksums of the payload
files against the manifest; a mismatch is reported and the entry is treated as missing (and
recomputed). Nothing is ever pickled.

The same interface has a second backend, object storage (`--cache s3://bucket/prefix`,
engine/objectstore.py): entries there, verified copies in a local mirror laid out as above, with
atomic commits (a conditional PUT of the manifest, last) and per-key leases instead of renames
and fcntl locks.

A store opened with `create=False` (the read-only verbs: explain, show, why, check) never creates
a directory or a file.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import xxhash

from mechstudy.engine.spec import Artifact

MANIFEST = "manifest.json"
STORE_FORMAT = 1
_SUBDIRS = ("objects", "locks", "tmp")


class CorruptEntry(Exception):
    """A payload file is missing, truncated or does not match its checksum."""


def default_root() -> Path | str:
    """$MECHSTUDY_CACHE (a directory or an object-storage URL, engine/objectstore.py), else ./cache."""
    root = os.environ.get("MECHSTUDY_CACHE") or "cache"
    return root if is_url(root) else Path(root)


def is_url(root: Any) -> bool:
    """Whether a --cache value names object storage (an fsspec URL such as s3://bucket/prefix)."""
    return isinstance(root, str) and "://" in root and not root.startswith("file://")


def checksum(path: Path) -> str:
    """xxh3-128 of a file's bytes, read in 4 MiB chunks."""
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json_atomic(path: Path, value: Any) -> None:
    """Write JSON to `path` by temp file + fsync + rename: readers see the old or the new file."""
    write_text_atomic(path, json.dumps(value, indent=1, sort_keys=True, default=str) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` by temp file + fsync + rename: readers see the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class Entry:
    key: str
    path: Path
    manifest: dict[str, Any]


@dataclass(frozen=True)
class Overlay:
    """A read-only directory of imported entries (`packs/<id>/objects`) a store may read from."""

    pack_id: str
    objects: str


@dataclass(frozen=True)
class StoreAddress:
    """What a task needs to reopen the same store view in another thread or process: a directory
    or an object-storage URL; for a URL, the opener's mirror (used in the same process tree; a
    dask.distributed worker keeps its own, see engine/objectstore.py)."""

    root: str
    overlays: tuple[Overlay, ...] = ()
    mirror: str | None = None

    def open(self) -> "Store":
        if is_url(self.root):
            from mechstudy.engine.objectstore import ObjectStore, on_dask_worker

            mirror = None if on_dask_worker() else self.mirror
            return ObjectStore(self.root, overlays=self.overlays, mirror=mirror)
        return Store(self.root, overlays=self.overlays)


class Store:
    """The store interface, with its local backend: a directory (this class). `Store(URL)` with
    an fsspec URL (`s3://bucket/prefix`) opens the object-storage backend instead
    (engine/objectstore.py's ObjectStore, a subclass: same methods, same guarantees)."""

    def __new__(cls, root: str | os.PathLike | None = None, *args: Any, **kw: Any) -> "Store":
        if cls is Store and is_url(root if root is not None else default_root()):
            from mechstudy.engine.objectstore import ObjectStore

            cls = ObjectStore
        return super().__new__(cls)

    def __init__(self, root: str | os.PathLike | None = None, *, create: bool = True,
                 overlays: tuple[Overlay, ...] | list[Overlay] = ()) -> None:
        if root is None:
            root = default_root()
        if is_url(root) and type(self) is Store:
            raise ValueError(f"{root}: open it as Store({root!r})")
        self.root = Path(root)
        self.writable = create
        self.overlays: list[Overlay] = list(overlays)
        if create:
            self.ensure()

    def ensure(self) -> list[Path]:
        """Create the store's directories; returns the ones that did not exist (outermost first)."""
        made = []
        for p in [self.root, *(self.root / d for d in _SUBDIRS)]:
            if not p.is_dir():
                made.append(p)
            p.mkdir(parents=True, exist_ok=True)
        return made

    def address(self) -> StoreAddress:
        return StoreAddress(str(self.root.resolve()), tuple(self.overlays))

    # ---- layout -------------------------------------------------------------------------
    def local_path(self, key: str) -> Path:
        return self.root / "objects" / key[:2] / key

    def _overlay_path(self, key: str) -> tuple[Overlay, Path] | None:
        for o in self.overlays:
            p = Path(o.objects) / key[:2] / key
            if (p / MANIFEST).is_file():
                return o, p
        return None

    def path(self, key: str) -> Path:
        """Where the entry is read from: the trusted objects first, then the overlays."""
        local = self.local_path(key)
        if (local / MANIFEST).is_file():
            return local
        got = self._overlay_path(key)
        return got[1] if got else local

    def origin(self, key: str) -> str | None:
        """None for a trusted entry (or none at all); the pack id when an overlay serves it."""
        if (self.local_path(key) / MANIFEST).is_file():
            return None
        got = self._overlay_path(key)
        return got[0].pack_id if got else None

    def has(self, key: str) -> bool:
        """Cheap check: a complete entry exists (manifest written last, inside the rename)."""
        return (self.path(key) / MANIFEST).is_file()

    def has_local(self, key: str) -> bool:
        return (self.local_path(key) / MANIFEST).is_file()

    def manifest(self, key: str) -> dict[str, Any] | None:
        p = self.path(key) / MANIFEST
        try:
            m = json.loads(p.read_text())
        except (OSError, ValueError):
            return None
        return m if isinstance(m, dict) else None

    # ---- locking ------------------------------------------------------------------------
    @contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """An exclusive per-key lock (fcntl; released by the OS if the holder dies)."""
        (self.root / "locks").mkdir(parents=True, exist_ok=True)
        with open(self.root / "locks" / f"{key}.lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def tmpdir(self, prefix: str) -> Path:
        """A fresh temp dir inside the store (same file system: renames out of it are atomic).
        Its name carries this process's id, so `clean_tmp` can tell a live writer's from a stale one."""
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{prefix}-{os.getpid()}-", dir=self.root / "tmp"))

    # ---- write --------------------------------------------------------------------------
    def put(self, key: str, artifact: Artifact, manifest: dict[str, Any]) -> Entry:
        """Write an artifact atomically: temp dir, fsync, rename."""
        tmp, manifest = self.stage(key, artifact, manifest)
        try:
            final = self.install(key, tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Entry(key, final, manifest)

    def stage(self, key: str, artifact: Artifact, manifest: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
        """Write an entry's payload and manifest (last) into a fresh temp dir, fsynced; returns it
        and the manifest. Nothing is visible to readers until `install` renames it into place."""
        tmp = self.tmpdir(key[:16])
        try:
            files = _write_payload(tmp, artifact)
            manifest = {
                **manifest,
                "key": key,
                "store_format": STORE_FORMAT,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "files": {name: _file_record(tmp / name) for name in files},
            }
            write_manifest(tmp, manifest)
            for name in files:
                with open(tmp / name, "rb") as f:
                    os.fsync(f.fileno())
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return tmp, manifest

    def install(self, key: str, tmp: Path) -> Path:
        """Rename a staged entry directory into objects/ (replacing a stale or corrupt one)."""
        final = self.local_path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():  # a stale or corrupt entry being replaced
            shutil.rmtree(final)
        os.rename(tmp, final)
        return final

    def adopt(self, key: str, directory: Path) -> bool:
        """Move a whole, verified entry directory (in this store's tmp/) into objects/.
        Returns False (and leaves `directory`) when a trusted entry is already there."""
        final = self.local_path(key)
        if (final / MANIFEST).is_file():
            return False
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            shutil.rmtree(final)
        os.rename(directory, final)
        return True

    def mark_used(self, key: str) -> None:
        """Record a use (the entry directory's mtime), for `study cache ls` and `gc --older-than`."""
        if not self.writable:
            return
        try:
            os.utime(self.path(key))
        except OSError:
            pass

    # ---- read ---------------------------------------------------------------------------
    def get(self, key: str, verify: bool = True) -> Artifact:
        """Load an entry; raises KeyError when absent and CorruptEntry when damaged."""
        d = self.path(key)
        m = self.manifest(key)
        if m is None:
            if (d / MANIFEST).is_file():
                raise CorruptEntry(f"{key[:16]}: manifest.json is not a JSON object")
            raise KeyError(key)
        if verify:
            self.verify(key, m, quick=True)
        try:
            return _read_payload(d, m)
        except CorruptEntry:
            raise
        except Exception as e:  # noqa: BLE001 - a payload that passed its checksum but does not load
            raise CorruptEntry(f"{key[:16]}: cannot be read ({type(e).__name__}: {str(e)[:200]})") from None

    def verify(self, key: str, manifest: dict[str, Any] | None = None, quick: bool = False) -> None:
        """Check an entry's payload files against its manifest: sizes and checksums; with `quick`,
        sizes and modification times when the entry was written here and both match what its
        manifest recorded at write time (the hot path of a warm run), checksums otherwise (an
        entry served from an imported pack is always checksummed). Raises CorruptEntry/KeyError."""
        d = self.path(key)
        m = manifest or self.manifest(key)
        if m is None:
            if (d / MANIFEST).is_file():
                raise CorruptEntry(f"{key[:16]}: manifest.json is not a JSON object")
            raise KeyError(key)
        if quick and self.origin(key) is None and unchanged_since_written(d, m):
            return
        verify_dir(key, d, m)

    def status(self, key: str) -> str:
        """"missing", "damaged: WHY", "cached" or "imported" (served by an overlay), checksums checked."""
        if not self.has(key):
            return "missing"
        try:
            self.verify(key)
        except (CorruptEntry, KeyError) as e:
            return f"damaged: {e}"
        return "cached" if self.origin(key) is None else "imported"

    def discard(self, key: str) -> None:
        if self.writable:
            shutil.rmtree(self.path(key), ignore_errors=True)

    def keys(self) -> Iterator[str]:
        """The keys of the trusted entries (objects/), sorted."""
        objects = self.root / "objects"
        if not objects.is_dir():
            return
        for sub in sorted(objects.glob("*/*")):
            if (sub / MANIFEST).is_file():
                yield sub.name

    def clean_tmp(self, older_than_s: float = 3600.0) -> int:
        """Remove temp dirs left by killed runs (entries are never half-written in place).

        A temp dir is stale when the process named in it is gone (and it is over a minute old,
        so a just-started writer is never raced), or when it is older than `older_than_s`."""
        tmp = self.root / "tmp"
        if not self.writable or not tmp.is_dir():
            return 0
        n = 0
        now = time.time()
        for t in tmp.iterdir():
            try:
                age = now - t.stat().st_mtime
            except OSError:
                continue
            if age > older_than_s or (age > 60 and not _alive(_pid_of(t.name))):
                if t.is_dir() and not t.is_symlink():
                    shutil.rmtree(t, ignore_errors=True)
                else:
                    t.unlink(missing_ok=True)
                n += 1
        return n


def _pid_of(name: str) -> int | None:
    parts = name.split("-")
    return int(parts[1]) if len(parts) >= 3 and parts[1].isdigit() else None


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _file_record(p: Path) -> dict[str, Any]:
    """A payload file's manifest record: bytes and checksum, and its mtime for quick checks."""
    st = p.stat()
    return {"bytes": st.st_size, "xxh3_128": checksum(p), "mtime_ns": st.st_mtime_ns}


def unchanged_since_written(d: Path, m: dict[str, Any]) -> bool:
    """Whether every payload file of an entry has the size and mtime its manifest recorded when
    it was written (False when the manifest has no mtimes: older entries, imported ones)."""
    files = m.get("files")
    if not isinstance(files, dict):
        return False
    for name, meta in files.items():
        if not isinstance(meta, dict) or not isinstance(meta.get("mtime_ns"), int):
            return False
        try:
            st = (d / name).stat()
        except OSError:
            return False
        if st.st_size != meta.get("bytes") or st.st_mtime_ns != meta["mtime_ns"]:
            return False
    return True


def verify_dir(key: str, d: Path, m: dict[str, Any]) -> None:
    """Check an entry directory's payload files against its manifest (sizes, then checksums)."""
    files = m.get("files", {})
    if not isinstance(files, dict):
        raise CorruptEntry(f"{key[:16]}: the manifest's file list is malformed")
    for name, meta in files.items():
        p = d / name
        if not isinstance(meta, dict) or not isinstance(meta.get("bytes"), int) or not isinstance(meta.get("xxh3_128"), str):
            raise CorruptEntry(f"{key[:16]}: the manifest's record of {name} is malformed")
        if not p.is_file():
            raise CorruptEntry(f"{key[:16]}: {name} is missing")
        if p.stat().st_size != meta["bytes"]:
            raise CorruptEntry(f"{key[:16]}: {name} has {p.stat().st_size} bytes, manifest says {meta['bytes']}")
        if checksum(p) != meta["xxh3_128"]:
            raise CorruptEntry(f"{key[:16]}: {name} does not match its checksum")


def write_manifest(d: Path, manifest: dict[str, Any]) -> None:
    """Write an entry directory's manifest.json (fsynced): the last file of an entry."""
    with open(d / MANIFEST, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())


def _write_payload(d: Path, a: Artifact) -> list[str]:
    files: list[str] = []
    if a.tensors:
        import torch
        from safetensors.torch import save_file

        tensors = {k: v.detach().to("cpu").contiguous() if isinstance(v, torch.Tensor) else torch.as_tensor(v) for k, v in a.tensors.items()}
        save_file(tensors, str(d / "tensors.safetensors"))
        files.append("tensors.safetensors")
    for name, df in a.tables.items():
        if not name.replace("_", "").isalnum():
            raise ValueError(f"table name {name!r} must be alphanumeric")
        fname = f"table-{name}.parquet"
        df.write_parquet(d / fname)
        files.append(fname)
    if a.data:
        with open(d / "data.json", "w") as f:
            json.dump(a.data, f, sort_keys=True, allow_nan=True)
        files.append("data.json")
    return files


def _read_payload(d: Path, m: dict[str, Any]) -> Artifact:
    files = m.get("files", {})
    tensors: dict[str, Any] = {}
    tables: dict[str, Any] = {}
    data: dict[str, Any] = {}
    if "tensors.safetensors" in files:
        from safetensors.torch import load_file

        tensors = load_file(str(d / "tensors.safetensors"))  # memory-mapped by safetensors
    for name in files:
        if name.startswith("table-") and name.endswith(".parquet"):
            import polars as pl

            tables[name[len("table-") : -len(".parquet")]] = pl.read_parquet(d / name)
    if "data.json" in files:
        data = json.loads((d / "data.json").read_text())
    return Artifact(tensors=tensors, tables=tables, data=data, path=str(d))


# ---- which studies use the store (for `study cache ls/gc`) -----------------------------------


@dataclass
class StudyRecord:
    """A study that ran against this store: its path, its lock file and the keys of its plan."""

    path: str
    lock: str
    keys: list[str] = field(default_factory=list)
    last_run: float = 0.0

    @property
    def alive(self) -> bool:
        return Path(self.path).is_file() and Path(self.lock).is_file()


def _study_record_path(root: Path, study: Path) -> Path:
    return root / "studies" / (xxhash.xxh3_64_hexdigest(str(study.resolve()).encode()) + ".json")


def record_study(store: Store, study: Path, lock: Path, keys: list[str]) -> None:
    """Remember that `study` (whose lock is `lock`) uses `keys` (written atomically)."""
    write_json_atomic(_study_record_path(store.root, study), {
        "path": str(study.resolve()), "lock": str(lock.resolve()), "keys": sorted(set(keys)), "last_run": time.time()})


def studies(store: Store) -> list[StudyRecord]:
    """Every study recorded in this store (the lock file is re-read when it still exists)."""
    out = []
    d = store.root / "studies"
    if not d.is_dir():
        return out
    for p in sorted(d.glob("*.json")):
        try:
            r = json.loads(p.read_text())
            rec = StudyRecord(str(r["path"]), str(r["lock"]), [str(k) for k in r.get("keys", [])], float(r.get("last_run", 0)))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        out.append(rec)
    return out
