"""The content-addressed store: one directory per node key, safe formats only.

Layout (under `cache/` by default, `--cache DIR` or `MECHSTUDY_CACHE` to move it)::

    objects/<key[:2]>/<key>/manifest.json     op, params, input keys, versions, timings, checksums
                            tensors.safetensors
                            table-<name>.parquet
                            data.json
    locks/<key>.lock                          per-key lock: two runs never compute one node

Writes go to a temporary directory inside the store and are renamed into place, so a crash or
SIGKILL leaves either a whole entry or none. Every read checks sizes and checksums of the payload
files against the manifest; a mismatch is reported and the entry is treated as missing (and
recomputed). Nothing is ever pickled.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import xxhash

from mechstudy.engine.spec import Artifact

MANIFEST = "manifest.json"
STORE_FORMAT = 1


class CorruptEntry(Exception):
    """A payload file is missing, truncated or does not match its checksum."""


def default_root() -> Path:
    return Path(os.environ.get("MECHSTUDY_CACHE") or "cache")


def _checksum(path: Path) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Entry:
    key: str
    path: Path
    manifest: dict[str, Any]


class Store:
    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()
        (self.root / "objects").mkdir(parents=True, exist_ok=True)
        (self.root / "locks").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)

    # ---- layout -------------------------------------------------------------------------
    def path(self, key: str) -> Path:
        return self.root / "objects" / key[:2] / key

    def has(self, key: str) -> bool:
        """Cheap check: a complete entry exists (manifest written last, inside the rename)."""
        return (self.path(key) / MANIFEST).is_file()

    def manifest(self, key: str) -> dict[str, Any] | None:
        p = self.path(key) / MANIFEST
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError):
            return None

    # ---- locking ------------------------------------------------------------------------
    @contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """An exclusive per-key lock (fcntl; released by the OS if the holder dies)."""
        with open(self.root / "locks" / f"{key}.lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # ---- write --------------------------------------------------------------------------
    def put(self, key: str, artifact: Artifact, manifest: dict[str, Any]) -> Entry:
        """Write an artifact atomically: temp dir, fsync, rename."""
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{key[:16]}-", dir=self.root / "tmp"))
        try:
            files = _write_payload(tmp, artifact)
            manifest = {
                **manifest,
                "key": key,
                "store_format": STORE_FORMAT,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "files": {name: {"bytes": (tmp / name).stat().st_size, "xxh3_128": _checksum(tmp / name)} for name in files},
            }
            with open(tmp / MANIFEST, "w") as f:
                json.dump(manifest, f, indent=1, sort_keys=True, default=str)
                f.flush()
                os.fsync(f.fileno())
            for name in files:
                with open(tmp / name, "rb") as f:
                    os.fsync(f.fileno())
            if final.exists():  # a stale or corrupt entry being replaced
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Entry(key, final, manifest)

    # ---- read ---------------------------------------------------------------------------
    def get(self, key: str, verify: bool = True) -> Artifact:
        """Load an entry; raises KeyError when absent and CorruptEntry when damaged."""
        d = self.path(key)
        m = self.manifest(key)
        if m is None:
            raise KeyError(key)
        if verify:
            self.verify(key, m)
        return _read_payload(d, m)

    def verify(self, key: str, manifest: dict[str, Any] | None = None) -> None:
        m = manifest or self.manifest(key)
        if m is None:
            raise KeyError(key)
        verify_dir(key, self.path(key), m)

    def discard(self, key: str) -> None:
        shutil.rmtree(self.path(key), ignore_errors=True)

    def keys(self) -> Iterator[str]:
        for sub in sorted((self.root / "objects").glob("*/*")):
            if (sub / MANIFEST).is_file():
                yield sub.name

    def clean_tmp(self, older_than_s: float = 3600.0) -> int:
        """Remove temp dirs left by killed runs (entries are never half-written in place)."""
        n = 0
        now = time.time()
        for t in (self.root / "tmp").iterdir():
            if now - t.stat().st_mtime > older_than_s:
                shutil.rmtree(t, ignore_errors=True)
                n += 1
        return n


def verify_dir(key: str, d: Path, m: dict[str, Any]) -> None:
    """Check an entry directory's payload files against its manifest (sizes, then checksums)."""
    for name, meta in m.get("files", {}).items():
        p = d / name
        if not p.is_file():
            raise CorruptEntry(f"{key[:16]}: {name} is missing")
        if p.stat().st_size != meta["bytes"]:
            raise CorruptEntry(f"{key[:16]}: {name} has {p.stat().st_size} bytes, manifest says {meta['bytes']}")
        if _checksum(p) != meta["xxh3_128"]:
            raise CorruptEntry(f"{key[:16]}: {name} does not match its checksum")


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
