"""The store on object storage: `--cache s3://bucket/prefix` (an fsspec URL).

The same interface as the local store (engine/store.py: has, get, put, lock, verify, keys,
discard, ...), so the engine, the CLI and packs do not know which one they hold. The entries live
on object storage; each process reads them through a *mirror*, a local store directory that holds
verified copies of the entries it has read or written (safetensors are memory-mapped from it and
`Artifact.path` points into it, exactly as with a local store; the warm path checks it).

Layout under the URL (S3 has no directories: these are key prefixes)::

    objects/<key[:2]>/<key>/manifest.json        the commit marker, written last
                            <upload id>/tensors.safetensors, table-*.parquet, data.json
    locks/<key>.lease                            per-key lease: two runs never compute one node

Atomicity (what a reader can see). S3 has no rename, so an entry is committed by one PUT:

1. the payload files are uploaded under a fresh, random upload id (a prefix nobody else writes);
2. the manifest (sizes and xxh3-128 checksums of every payload file, and the upload id) is PUT
   last, *conditionally*: `If-None-Match: *` makes the PUT fail when a manifest already exists,
   so the first writer of a key wins and a second one deletes its own upload and reads the
   winner's entry. A single PUT is atomic on S3 (readers see the whole object or none), and S3
   has been strongly read-after-write consistent (reads and lists) since December 2020, so
   a reader that sees a manifest sees every payload object uploaded before it.
3. Readers trust only entries whose manifest exists, and verify every payload file's size and
   checksum when they copy it into their mirror; a mismatch is a damaged entry (reported,
   discarded, recomputed), as on a local disk. A writer that dies between 1 and 2 leaves an
   upload prefix that no manifest names: never read, removed by `collect_uploads`.

Locking (who computes a node). A lease object per key, created with `If-None-Match: *` (at
most one creator succeeds), holding its owner and an expiry time (`LEASE_S` ahead); its holder
renews it with `If-Match: <its ETag>` (compare-and-swap) every third of that, and deletes it
when done. A waiter polls; it takes over a lease whose expiry has passed (plus `SKEW_S` for
clock differences) by a PUT with `If-Match` on the stale lease's ETag, so two waiters cannot
both take it over. Honest limits: a lease is time-based, so a holder paused longer than the
lease (a stopped VM, clocks skewed beyond `SKEW_S`) can lose it while still computing, and two
processes may then compute the same node. That costs time, never correctness: the commit in
step 2 is conditional, so exactly one version of an entry is ever committed, and every version
is content-addressed by the same key. Release deletes the lease only when it is still ours
(read, compare the owner, delete: S3's unconditional DELETE leaves a window of a few
milliseconds in which a just-taken-over lease could be deleted; the worst outcome is again
duplicate work).

Conditional writes (`If-None-Match` since August 2024, `If-Match` since November 2024) are
supported by AWS S3 and by S3-compatible servers that implement them (moto's server does; MinIO
does); a server that ignores them would silently lose the guarantees above. Other fsspec
protocols are refused until they get the same two primitives.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import xxhash

from mechstudy.engine.spec import Artifact
from mechstudy.engine.store import (
    MANIFEST, CorruptEntry, Entry, Overlay, Store, StoreAddress, default_root, is_url, verify_dir, write_manifest,
)

LEASE_S = 60.0  # how long a lease lasts without renewal
SKEW_S = 5.0  # clock difference tolerated before a lease counts as expired
PROTOCOLS = ("s3", "s3a")


class StoreURLError(ValueError):
    """A --cache URL this store cannot use (an unsupported protocol, a malformed URL)."""


def default_mirror(url: str) -> Path:
    """Where this process keeps verified copies of the entries of `url`.

    On a dask.distributed worker: $MECHSTUDY_WORKER_MIRROR if set, else a temporary directory
    of the worker process (removed when it exits), so that workers share files with each other
    and with the client only through the object store. Elsewhere: $MECHSTUDY_MIRROR if set, else
    ~/.cache/mechstudy/mirror ($XDG_CACHE_HOME respected). One subdirectory per URL."""
    name = xxhash.xxh3_64_hexdigest(url.encode())
    if on_dask_worker():
        env = os.environ.get("MECHSTUDY_WORKER_MIRROR")
        return (Path(env) if env else _process_scratch()) / name
    env = os.environ.get("MECHSTUDY_MIRROR")
    if env:
        return Path(env) / name
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mechstudy" / "mirror" / name


_SCRATCH: list[Path] = []


def _process_scratch() -> Path:
    if not _SCRATCH:
        d = Path(tempfile.mkdtemp(prefix=f"mechstudy-mirror-{os.getpid()}-"))
        atexit.register(shutil.rmtree, d, True)
        _SCRATCH.append(d)
    return _SCRATCH[0]


def on_dask_worker() -> bool:
    if "distributed" not in sys.modules:
        return False
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        return False
    return True


def _precondition_failed(e: BaseException) -> bool:
    """Whether an S3 error is a failed condition (412) or a conflicting conditional write (409)."""
    if isinstance(e, FileExistsError):
        return True
    for err in (e, e.__cause__):
        resp = getattr(err, "response", None)
        if isinstance(resp, dict):
            code = str(resp.get("Error", {}).get("Code", ""))
            status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict") or status in (409, 412):
                return True
    return False


def _missing(e: BaseException) -> bool:
    if isinstance(e, FileNotFoundError):
        return True
    resp = getattr(e.__cause__, "response", None)
    return isinstance(resp, dict) and str(resp.get("Error", {}).get("Code", "")) in ("NoSuchKey", "404")


class Remote:
    """The object-storage primitives the store needs: plain and conditional PUTs, reads with
    their ETag, deletes, file transfers and listings (S3 through s3fs)."""

    def __init__(self, url: str) -> None:
        try:
            import fsspec
        except ImportError as e:  # pragma: no cover - fsspec is a dask dependency
            raise StoreURLError(f"{url}: object storage needs fsspec") from e
        protocol = url.split("://", 1)[0]
        if protocol not in PROTOCOLS:
            raise StoreURLError(f"{url}: protocol {protocol!r} is not supported for the store (it needs "
                                f"conditional writes for atomic commits and locks); use s3://bucket/prefix")
        try:
            self.fs, base = fsspec.core.url_to_fs(url, use_listings_cache=False)
        except ImportError as e:
            raise StoreURLError(f"{url}: install s3fs (pip install 'mechstudy[s3]') to use an s3:// store") from e
        self.base = base.rstrip("/")
        if not self.base:
            raise StoreURLError(f"{url}: name a bucket, e.g. s3://bucket/prefix")

    def full(self, rel: str) -> str:
        return f"{self.base}/{rel}"

    def _split(self, rel: str) -> tuple[str, str]:
        bucket, key, _ = self.fs.split_path(self.full(rel))
        return bucket, key

    def put_if_absent(self, rel: str, data: bytes) -> str | None:
        """PUT with If-None-Match: *; the new ETag, or None when the object already exists."""
        bucket, key = self._split(rel)
        try:
            out = self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except Exception as e:  # noqa: BLE001 - translated below
            if _precondition_failed(e):
                return None
            raise
        return out["ETag"]

    def put_if_match(self, rel: str, data: bytes, etag: str) -> str | None:
        """PUT with If-Match: ETAG (compare-and-swap); the new ETag, or None when it changed."""
        bucket, key = self._split(rel)
        try:
            out = self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfMatch=etag)
        except Exception as e:  # noqa: BLE001
            if _precondition_failed(e) or _missing(e):
                return None
            raise
        return out["ETag"]

    def get(self, rel: str) -> tuple[bytes, str] | None:
        """An object's bytes and ETag (one GET: both of the same version), None when absent."""
        from fsspec.asyn import sync

        bucket, key = self._split(rel)

        async def get() -> tuple[bytes, str]:
            out = await self.fs._call_s3("get_object", Bucket=bucket, Key=key)
            async with out["Body"] as body:
                return await body.read(), out["ETag"]

        try:
            return sync(self.fs.loop, get)
        except Exception as e:  # noqa: BLE001
            if _missing(e):
                return None
            raise

    def exists(self, rel: str) -> bool:
        bucket, key = self._split(rel)
        try:
            self.fs.call_s3("head_object", Bucket=bucket, Key=key)
        except Exception as e:  # noqa: BLE001
            if _missing(e):
                return False
            raise
        return True

    def delete(self, rel: str) -> None:
        bucket, key = self._split(rel)
        try:
            self.fs.call_s3("delete_object", Bucket=bucket, Key=key)
        except Exception as e:  # noqa: BLE001
            if not _missing(e):
                raise

    def delete_prefix(self, rel: str) -> None:
        try:
            self.fs.rm(self.full(rel), recursive=True)
        except FileNotFoundError:
            pass

    def upload(self, local: Path, rel: str) -> None:
        self.fs.put_file(str(local), self.full(rel))

    def download(self, rel: str, local: Path) -> None:
        self.fs.get_file(self.full(rel), str(local))

    def sizes(self, rel: str) -> dict[str, int]:
        """The objects directly under a prefix: name -> size in bytes (one listing)."""
        try:
            found = self.fs.ls(self.full(rel), detail=True)
        except FileNotFoundError:
            return {}
        return {f["name"].rsplit("/", 1)[-1]: int(f.get("size") or 0) for f in found if f.get("type") != "directory"}

    def find(self, rel: str) -> list[str]:
        """Every object under a prefix, as paths relative to the store's URL."""
        try:
            found = self.fs.find(self.full(rel))
        except FileNotFoundError:
            return []
        return [p[len(self.base) + 1:] for p in found]


_REMOTES: dict[str, Remote] = {}
_REMOTES_GUARD = threading.Lock()


def remote_for(url: str) -> Remote:
    with _REMOTES_GUARD:
        r = _REMOTES.get(url)
        if r is None:
            r = _REMOTES[url] = Remote(url)
        return r


class ObjectStore(Store):
    """The store's fsspec backend (see the module doc). `root` is the local mirror."""

    def __init__(self, url: str | None = None, *, create: bool = True,
                 overlays: tuple[Overlay, ...] | list[Overlay] = (), mirror: str | os.PathLike | None = None) -> None:
        url = str(url if url is not None else default_root())
        if not is_url(url):
            raise StoreURLError(f"{url}: not a URL")
        if url.split("://", 1)[0] not in PROTOCOLS:
            raise StoreURLError(f"{url}: protocol {url.split('://', 1)[0]!r} is not supported for the store (it "
                                "needs conditional writes for atomic commits and locks); use s3://bucket/prefix")
        self.url = url.rstrip("/")
        super().__init__(Path(mirror) if mirror is not None else default_mirror(self.url),
                         create=create, overlays=overlays)

    @property
    def remote(self) -> Remote:
        """Made on first use: a warm run that finds everything in its mirror never imports s3fs."""
        return remote_for(self.url)

    def __repr__(self) -> str:
        return f"ObjectStore({self.url!r}, mirror={str(self.root)!r})"

    def address(self) -> StoreAddress:
        return StoreAddress(self.url, tuple(self.overlays), str(self.root.resolve()))

    # ---- layout -------------------------------------------------------------------------
    @staticmethod
    def _entry(key: str) -> str:
        return f"objects/{key[:2]}/{key}"

    def _mirrored(self, key: str) -> bool:
        return (self.local_path(key) / MANIFEST).is_file()

    def _remote_manifest(self, key: str) -> dict[str, Any] | None:
        got = self.remote.get(f"{self._entry(key)}/{MANIFEST}")
        if got is None:
            return None
        try:
            m = json.loads(got[0])
        except ValueError:
            raise CorruptEntry(f"{key[:16]}: the stored manifest.json is not JSON") from None
        if not isinstance(m, dict):
            raise CorruptEntry(f"{key[:16]}: manifest.json is not a JSON object")
        return m

    def path(self, key: str) -> Path:
        """The mirror copy (fetched from object storage first when needed), else an overlay's."""
        if self._mirrored(key):
            return self.local_path(key)
        got = self._overlay_path(key)
        if got:
            return got[1]
        self.fetch(key)
        return self.local_path(key)

    def origin(self, key: str) -> str | None:
        if self._mirrored(key) or self.remote.exists(f"{self._entry(key)}/{MANIFEST}"):
            return None
        got = self._overlay_path(key)
        return got[0].pack_id if got else None

    def has(self, key: str) -> bool:
        """A committed entry: in the mirror (verified when it was copied there), on object
        storage (its manifest, the commit marker, exists), or in an overlay."""
        return self.has_local(key) or self._overlay_path(key) is not None

    def has_local(self, key: str) -> bool:
        return self._mirrored(key) or self.remote.exists(f"{self._entry(key)}/{MANIFEST}")

    def manifest(self, key: str) -> dict[str, Any] | None:
        if self._mirrored(key) or self._overlay_path(key):
            return super().manifest(key)
        try:
            return self._remote_manifest(key)
        except CorruptEntry:
            return None

    # ---- locking ------------------------------------------------------------------------
    @contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """An exclusive per-key lease on object storage (see the module doc)."""
        with lease(self.remote, f"locks/{key}.lease"):
            yield

    # ---- write --------------------------------------------------------------------------
    def put(self, key: str, artifact: Artifact, manifest: dict[str, Any]) -> Entry:
        """Stage the entry in the mirror's tmp/, publish it (payload, then the manifest by a
        conditional PUT), then move it into the mirror. When another writer committed the key
        first, its entry is the one kept (and read back)."""
        tmp, manifest = self.stage(key, artifact, manifest)
        try:
            manifest = self.publish(key, tmp, manifest)
            if manifest is None:  # lost the race: the committed entry is someone else's
                shutil.rmtree(tmp, ignore_errors=True)
                self.fetch(key, replace=True)
                return Entry(key, self.local_path(key), super().manifest(key) or {})
            final = self.install(key, tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Entry(key, final, manifest)

    def publish(self, key: str, d: Path, manifest: dict[str, Any]) -> dict[str, Any] | None:
        """Upload the entry directory `d` (a complete, fsynced entry) and commit it. Returns
        the committed manifest (also rewritten in `d`), or None when the key was committed by
        another writer first (our upload is deleted)."""
        upload = uuid.uuid4().hex
        manifest = {**manifest, "payload": upload}
        write_manifest(d, manifest)
        entry = self._entry(key)
        try:
            for name in manifest.get("files", {}):
                self.remote.upload(d / name, f"{entry}/{upload}/{name}")
            body = (json.dumps(manifest, indent=1, sort_keys=True, default=str) + "\n").encode()
            committed = self.remote.put_if_absent(f"{entry}/{MANIFEST}", body)
        except BaseException:
            self.remote.delete_prefix(f"{entry}/{upload}")
            raise
        if committed is None:
            self.remote.delete_prefix(f"{entry}/{upload}")
            return None
        return manifest

    def adopt(self, key: str, directory: Path) -> bool:
        """Publish a whole, verified entry directory (pack import, `study verify`), then keep it
        in the mirror. False (and `directory` left) when the key is already committed."""
        try:
            m = json.loads((directory / MANIFEST).read_text())
        except (OSError, ValueError):
            return False
        if not isinstance(m, dict) or self.has_local(key):
            return False
        if self.publish(key, directory, m) is None:
            return False
        return super().adopt(key, directory)

    def mark_used(self, key: str) -> None:
        """Record a use on the mirror copy, if there is one (nothing is downloaded for it)."""
        if self.writable and self._mirrored(key):
            try:
                os.utime(self.local_path(key))
            except OSError:
                pass

    # ---- read ---------------------------------------------------------------------------
    def fetch(self, key: str, replace: bool = False) -> bool:
        """Copy a committed entry into the mirror, checking every payload file's size and
        checksum against the manifest. False when no entry is committed; CorruptEntry when the
        stored files do not match it."""
        if self._mirrored(key) and not replace:
            return True
        m = self._remote_manifest(key)
        if m is None:
            return False
        files, upload = m.get("files"), m.get("payload")
        if not isinstance(files, dict) or not isinstance(upload, str) or "/" in upload:
            raise CorruptEntry(f"{key[:16]}: the stored manifest is malformed")
        tmp = self.tmpdir("fetch")
        try:
            for name in files:
                if "/" in name or name in (MANIFEST, "..", "."):
                    raise CorruptEntry(f"{key[:16]}: the stored manifest names {name!r}")
                try:
                    self.remote.download(f"{self._entry(key)}/{upload}/{name}", tmp / name)
                except FileNotFoundError:
                    raise CorruptEntry(f"{key[:16]}: {name} is missing") from None
            verify_dir(key, tmp, m)
            # The mirror copy records its own files' mtimes, so the hot path can check it cheaply.
            local = {**m, "files": {n: {**meta, "mtime_ns": (tmp / n).stat().st_mtime_ns} for n, meta in files.items()}}
            write_manifest(tmp, local)
            final = self.local_path(key)
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists() and (replace or not self._mirrored(key)):
                shutil.rmtree(final, ignore_errors=True)  # replaced, or a leftover without a manifest
            try:
                os.rename(tmp, final)  # never over a copy another thread or process just made
            except OSError:
                if not self._mirrored(key):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return True

    def get(self, key: str, verify: bool = True) -> Artifact:
        if not self._mirrored(key) and self._overlay_path(key) is None and not self.fetch(key):
            raise KeyError(key)
        return super().get(key, verify=verify)

    def verify(self, key: str, manifest: dict[str, Any] | None = None, quick: bool = False) -> None:
        """An entry not yet in the mirror: with `quick`, its manifest (the commit marker) is
        well-formed and every payload object has the size it records (one listing; checksums
        are checked when the entry is read, by `fetch`); without, it is copied into the mirror
        (checksums). A mirror copy is checked as a local entry is."""
        if not self._mirrored(key) and self._overlay_path(key) is None:
            m = self._remote_manifest(key)
            if m is None:
                raise KeyError(key)
            files, upload = m.get("files"), m.get("payload")
            if not isinstance(files, dict) or not isinstance(upload, str):
                raise CorruptEntry(f"{key[:16]}: the stored manifest is malformed")
            if quick:
                sizes = self.remote.sizes(f"{self._entry(key)}/{upload}")
                for name, meta in files.items():
                    want = meta.get("bytes") if isinstance(meta, dict) else None
                    if name not in sizes:
                        raise CorruptEntry(f"{key[:16]}: {name} is missing")
                    if sizes[name] != want:
                        raise CorruptEntry(f"{key[:16]}: {name} has {sizes[name]} bytes, manifest says {want}")
                return
            self.fetch(key)
        super().verify(key, None, quick=quick)

    def discard(self, key: str) -> None:
        """Drop a damaged entry: the mirror copy, then the commit marker, then its payload."""
        if not self.writable:
            return
        shutil.rmtree(self.local_path(key), ignore_errors=True)
        entry = self._entry(key)
        self.remote.delete(f"{entry}/{MANIFEST}")
        self.remote.delete_prefix(entry)

    def keys(self) -> Iterator[str]:
        """The keys of the committed entries on object storage, sorted."""
        found = []
        for rel in self.remote.find("objects"):
            parts = rel.split("/")
            if len(parts) == 4 and parts[3] == MANIFEST:
                found.append(parts[2])
        yield from sorted(found)

    def collect_uploads(self, older_than_s: float = 3600.0) -> int:
        """Delete upload prefixes that no manifest names (a writer died before committing, or
        lost the race) and that are older than `older_than_s`; returns how many."""
        if not self.writable:
            return 0
        by_entry: dict[str, set[str]] = {}
        for rel in self.remote.find("objects"):
            parts = rel.split("/")
            if len(parts) == 5:
                by_entry.setdefault("/".join(parts[:3]), set()).add(parts[3])
        n = 0
        now = time.time()
        for entry, uploads in by_entry.items():
            got = self.remote.get(f"{entry}/{MANIFEST}")
            keep = None
            if got is not None:
                try:
                    keep = json.loads(got[0]).get("payload")
                except (ValueError, AttributeError):
                    keep = None
            for u in uploads - {keep}:
                prefix = f"{entry}/{u}"
                try:
                    modified = max(self.remote.fs.info(self.remote.full(p))["LastModified"].timestamp()
                                   for p in self.remote.find(prefix))
                except (ValueError, KeyError, OSError):
                    continue
                if now - modified > older_than_s:
                    self.remote.delete_prefix(prefix)
                    n += 1
        return n


# ---- leases ------------------------------------------------------------------------------


@contextmanager
def lease(remote: Remote, rel: str, *, seconds: float | None = None, poll: float = 0.1) -> Iterator[dict[str, Any]]:
    """Hold the lease object `rel` (module doc: create with If-None-Match, renew and take over
    with If-Match, delete when done). Yields its state: {"owner", "lost"}."""
    ttl = LEASE_S if seconds is None else seconds
    owner = uuid.uuid4().hex
    state: dict[str, Any] = {"owner": owner, "lost": False, "etag": None}

    def body() -> bytes:
        return json.dumps({"owner": owner, "host": socket.gethostname(), "pid": os.getpid(),
                           "expires": time.time() + ttl}).encode()

    wait = poll
    while True:
        etag = remote.put_if_absent(rel, body())
        if etag is not None:
            break
        got = remote.get(rel)
        if got is not None:
            try:
                expires = float(json.loads(got[0]).get("expires", 0))
            except (ValueError, TypeError, AttributeError):
                expires = 0.0  # an unreadable lease is treated as expired
            if time.time() > expires + SKEW_S:
                etag = remote.put_if_match(rel, body(), got[1])
                if etag is not None:
                    break
        time.sleep(wait)
        wait = min(wait * 1.5, 2.0)
    state["etag"] = etag
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(ttl / 3):
            new = remote.put_if_match(rel, body(), state["etag"])
            if new is None:
                state["lost"] = True
                return
            state["etag"] = new

    t = threading.Thread(target=renew, name="mechstudy-lease", daemon=True)
    t.start()
    try:
        yield state
    finally:
        stop.set()
        t.join()
        got = remote.get(rel)
        if got is not None and got[1] == state["etag"]:
            remote.delete(rel)
