"""`study cache ls | du | gc | verify`: what is in a store, who uses it, and cleaning it up.

Which studies use an entry is known from the store's `studies/` records (written by every
`study run`: the study's path, its lock file and its plan's keys) and from those studies' lock
files when they still exist. An entry's last use is its directory's mtime (`Store.mark_used`).

`gc` removes an entry when no kept study references it and it was last used more than
`older_than` days ago (default 0: any unreferenced entry). Kept studies are those named with
`--keep`, or, without `--keep`, every recorded study whose file and lock file still exist. An
imported pack goes as a whole, when none of the studies it serves is kept (without `--keep`: when
its study is no longer where it was extracted). Stale temp dirs
(left by killed runs) and the lock files of removed entries go too.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from mechstudy.engine.store import MANIFEST, CorruptEntry, Store, StudyRecord, studies, verify_dir


@dataclass
class EntryInfo:
    key: str
    op: str
    bytes: int
    last_use: float
    where: str  # "trusted" or "pack <id12>"
    path: Path
    studies: list[str] = field(default_factory=list)


def _size(d: Path) -> int:
    total = 0
    for p in d.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
        except OSError:
            pass
    return total


def _manifest(d: Path) -> dict:
    try:
        m = json.loads((d / MANIFEST).read_text())
        return m if isinstance(m, dict) else {}
    except (OSError, ValueError):
        return {}


def _entry_dirs(objects: Path) -> Iterable[Path]:
    if objects.is_dir():
        for d in sorted(objects.glob("*/*")):
            if d.is_dir():
                yield d


def references(store: Store) -> dict[str, list[str]]:
    """key -> the studies (paths) that reference it, from the records and living lock files."""
    out: dict[str, list[str]] = {}
    for rec in studies(store):
        keys = set(rec.keys)
        if rec.alive:
            try:
                keys |= set(json.loads(Path(rec.lock).read_text()).get("nodes", {}))
            except (OSError, ValueError, AttributeError):
                pass
        for k in keys:
            out.setdefault(k, []).append(rec.path)
    return out


def entries(store: Store) -> list[EntryInfo]:
    """Every entry: the trusted ones, then those of imported packs."""
    refs = references(store)
    out = []
    areas = [("trusted", store.root / "objects")]
    packs = store.root / "packs"
    if packs.is_dir():
        areas += [(f"pack {a.name[:12]}", a / "objects") for a in sorted(packs.iterdir()) if a.is_dir()]
    for where, objects in areas:
        for d in _entry_dirs(objects):
            m = _manifest(d)
            try:
                used = d.stat().st_mtime
            except OSError:
                used = 0.0
            out.append(EntryInfo(d.name, str(m.get("op", "?")), _size(d), used, where, d, sorted(refs.get(d.name, []))))
    return out


def _age(t: float) -> str:
    s = max(0.0, time.time() - t)
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s / n:.0f}{unit} ago"
    return "just now"


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def ls(store: Store) -> str:
    rows = entries(store)
    if not rows:
        return f"{store.root}: empty\n"
    lines = [f"{'key':16}  {'op':18} {'size':>9}  {'last use':>10}  {'where':18} studies"]
    for e in sorted(rows, key=lambda e: (e.where != "trusted", e.op, -e.bytes)):
        names = ", ".join(Path(s).name for s in e.studies) or "-"
        lines.append(f"{e.key[:16]}  {e.op[:18]:18} {human(e.bytes):>9}  {_age(e.last_use):>10}  {e.where:18} {names}")
    lines.append(f"{len(rows)} entries, {human(sum(e.bytes for e in rows))}")
    return "\n".join(lines) + "\n"


def du(store: Store) -> str:
    rows = entries(store)
    by: dict[tuple[str, str], list[int]] = {}
    for e in rows:
        t = by.setdefault((e.where, e.op), [0, 0])
        t[0] += 1
        t[1] += e.bytes
    lines = [f"{'where':18} {'op':20} {'entries':>8} {'size':>10}"]
    for (where, op), (n, b) in sorted(by.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"{where:18} {op[:20]:20} {n:>8} {human(b):>10}")
    tmp = store.root / "tmp"
    tmp_bytes = _size(tmp) if tmp.is_dir() else 0
    lines.append(f"{'temp dirs':18} {'':20} {len(list(tmp.iterdir())) if tmp.is_dir() else 0:>8} {human(tmp_bytes):>10}")
    total = sum(e.bytes for e in rows) + tmp_bytes
    lines.append(f"total {human(total)} in {store.root}")
    return "\n".join(lines) + "\n"


@dataclass
class GcResult:
    removed: list[EntryInfo]
    packs: list[str]
    freed: int
    tmp: int


def gc(store: Store, keep: list[str] | None = None, older_than_days: float = 0.0, dry_run: bool = False) -> GcResult:
    """Remove what no kept study references and nobody used for `older_than_days` (module doc)."""
    recs = studies(store)
    if keep is not None:
        wanted = {str(Path(k).resolve()) for k in keep}
        kept = [r for r in recs if r.path in wanted]
        kept_keys = set()
        for r in kept:
            kept_keys |= set(r.keys)
        for k in keep:  # a kept study's lock file counts even if it never ran against this store
            lock = Path(str(k) + ".lock")
            try:
                kept_keys |= set(json.loads(lock.read_text()).get("nodes", {}))
            except (OSError, ValueError, AttributeError):
                pass
        kept_roots = {str(Path(k).resolve().parent) for k in keep}
    else:
        kept = [r for r in recs if r.alive]
        kept_keys = set(references_of(kept))
        kept_roots = {str(Path(r.path).parent) for r in kept}
    cutoff = time.time() - older_than_days * 86400
    removed, freed, packs_removed = [], 0, []
    for e in entries(store):
        if e.where != "trusted" or e.key in kept_keys or e.last_use > cutoff:
            continue
        removed.append(e)
        freed += e.bytes
        if not dry_run:
            shutil.rmtree(e.path, ignore_errors=True)
            _drop_lock(store, e.key)
    packs = store.root / "packs"
    if packs.is_dir():
        for area in sorted(packs.iterdir()):
            try:
                rec = json.loads((area / "record.json").read_text())
                roots = set(rec.get("roots", []))
                used = (area / "record.json").stat().st_mtime
                alive = any((Path(r) / str(rec.get("study"))).is_file() for r in roots)
            except (OSError, ValueError, AttributeError, TypeError):
                roots, used, alive = set(), 0.0, False
            # Without --keep, a pack whose study is still where it was extracted is kept.
            if roots & kept_roots or (keep is None and alive) or used > cutoff:
                continue
            packs_removed.append(area.name)
            freed += _size(area)
            if not dry_run:
                shutil.rmtree(area, ignore_errors=True)
    tmp = 0 if dry_run else store.clean_tmp()
    if not dry_run:
        for r in recs:  # forget studies that are gone
            if not Path(r.path).is_file():
                from mechstudy.engine.store import _study_record_path

                _study_record_path(store.root, Path(r.path)).unlink(missing_ok=True)
    return GcResult(removed, packs_removed, freed, tmp)


def references_of(recs: list[StudyRecord]) -> set[str]:
    keys: set[str] = set()
    for r in recs:
        keys |= set(r.keys)
        try:
            keys |= set(json.loads(Path(r.lock).read_text()).get("nodes", {}))
        except (OSError, ValueError, AttributeError):
            pass
    return keys


def _drop_lock(store: Store, key: str) -> None:
    """Remove a key's lock file unless someone holds it."""
    p = store.root / "locks" / f"{key}.lock"
    try:
        with open(p, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            p.unlink(missing_ok=True)
            fcntl.flock(f, fcntl.LOCK_UN)
    except OSError:
        pass


def verify_all(store: Store, remove: bool = False) -> tuple[int, list[str]]:
    """Recheck every entry (sizes and checksums); returns (entries checked, problems)."""
    problems = []
    rows = entries(store)
    for e in rows:
        m = _manifest(e.path)
        try:
            if not m:
                raise CorruptEntry(f"{e.key[:16]}: manifest.json is missing or not JSON")
            if m.get("key") not in (None, e.key):
                raise CorruptEntry(f"{e.key[:16]}: its manifest names another key")
            verify_dir(e.key, e.path, m)
        except CorruptEntry as err:
            problems.append(f"damaged ({e.where}) {e.op}: {err}")
            if remove:
                shutil.rmtree(e.path, ignore_errors=True)
    return len(rows), problems


def verify_remote(store: Store, remove: bool = False) -> tuple[int, list[str]]:
    """Recheck every committed entry of an object store (engine/objectstore.py): each is copied
    into this machine's mirror with its sizes and checksums checked; returns (checked, problems)."""
    problems = []
    keys = list(store.keys())
    for k in keys:
        try:
            store.verify(k)
        except (CorruptEntry, KeyError) as err:
            problems.append(f"damaged (object store) {k[:16]}: {err}")
            if remove:
                store.discard(k)
    return len(keys), problems
