"""The store on object storage (`--cache s3://bucket/prefix`, engine/objectstore.py), against a
real S3-compatible HTTP server started here (moto's server mode, in its own process): commits are
conditional and verified, damaged or uncommitted uploads are never trusted, leases exclude each
other and expired ones are taken over, and a study run on a dask.distributed cluster of two
worker processes through the bucket stores entries byte-identical to a local threaded run."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import torch

pytest.importorskip("s3fs")
pytest.importorskip("moto")

import engine_testops  # noqa: E402
from mechstudy.engine import objectstore  # noqa: E402
from mechstudy.engine.graph import OpFailed, run_nodes  # noqa: E402
from mechstudy.engine.objectstore import ObjectStore, lease  # noqa: E402
from mechstudy.engine.plan import make_node  # noqa: E402
from mechstudy.engine.store import CorruptEntry, Store  # noqa: E402
from mechstudy.engine.spec import Artifact  # noqa: E402

TESTS = Path(__file__).parent
REPO = TESTS.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """A moto S3 server on localhost (a real HTTP server in a subprocess) and the environment
    every client here and in worker processes uses to reach it."""
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "server.log"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
            break
        except Exception:  # noqa: BLE001 - not up yet
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"moto server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": endpoint}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield endpoint
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        objectstore._REMOTES.clear()
        proc.terminate()
        proc.wait(10)


_BUCKETS = iter(range(10_000))


@pytest.fixture
def bucket(s3_server):
    """A fresh bucket's URL (with a prefix: the store lives under it)."""
    import s3fs

    name = f"mechstudy-{next(_BUCKETS)}"
    s3fs.S3FileSystem(use_listings_cache=False, skip_instance_cache=True).mkdir(name)
    return f"s3://{name}/cache"


def _store(url: str, tmp_path: Path, name: str) -> ObjectStore:
    return ObjectStore(url, mirror=tmp_path / name)


def _raw(url: str):
    """The bucket as plain s3fs sees it (no store logic)."""
    import s3fs

    fs = s3fs.S3FileSystem(use_listings_cache=False, skip_instance_cache=True)
    return fs, url[len("s3://"):]


def test_a_url_opens_the_object_store(bucket, tmp_path):
    st = Store(bucket)
    assert isinstance(st, ObjectStore) and st.url == bucket
    assert isinstance(Store(tmp_path / "local"), Store) and not isinstance(Store(tmp_path / "local"), ObjectStore)
    with pytest.raises(objectstore.StoreURLError, match="protocol 'gs'"):
        Store("gs://b/p")
    from mechstudy.engine import cli

    assert cli.main(["cache", "ls", "--cache", "gs://b/p"]) == cli.REFUSED  # an error line, not a traceback


def test_put_then_read_from_another_mirror(bucket, tmp_path):
    a, b = _store(bucket, tmp_path, "a"), _store(bucket, tmp_path, "b")
    key = "ab" + "0" * 62
    x = torch.arange(10, dtype=torch.float32)
    a.put(key, Artifact(tensors={"x": x}, data={"v": 1}), {"op": "t"})
    fs, base = _raw(bucket)
    m = json.loads(fs.cat_file(f"{base}/objects/ab/{key}/manifest.json"))
    # The payload sits under the upload id the manifest names; the manifest's checksums are the files'.
    assert sorted(fs.ls(f"{base}/objects/ab/{key}/{m['payload']}", detail=False)) == sorted(
        f"{base}/objects/ab/{key}/{m['payload']}/{n}" for n in m["files"])
    assert not b.local_path(key).exists() and b.has(key)
    got = b.get(key)
    assert torch.equal(got.tensors["x"], x) and got.data == {"v": 1}
    assert Path(got.path) == b.local_path(key)  # read from b's own mirror copy
    assert list(b.keys()) == [key]
    b.verify(key)


def test_second_commit_of_a_key_loses_and_reads_the_winner(bucket, tmp_path):
    a, b = _store(bucket, tmp_path, "a"), _store(bucket, tmp_path, "b")
    key = "cd" + "1" * 62
    a.put(key, Artifact(data={"who": "a"}), {"op": "t"})
    e = b.put(key, Artifact(data={"who": "b"}), {"op": "t"})  # a conditional PUT that fails: a's stays
    assert b.get(key).data == {"who": "a"} and e.manifest["payload"] == a.manifest(key)["payload"]
    fs, base = _raw(bucket)
    uploads = [p for p in fs.ls(f"{base}/objects/cd/{key}", detail=False) if not p.endswith("manifest.json")]
    assert len(uploads) == 1  # the loser removed its upload


def test_damaged_payload_is_refused_and_recomputed(bucket, tmp_path):
    st = _store(bucket, tmp_path, "a")
    src = make_node("t_source", {"n": 6, "seed": 1}, {})
    a = make_node("t_scale", {"factor": 2.0}, {"src": src})
    run_nodes([a], st, device="cpu")
    good = st.get(a.key).tensors["x"].clone()
    fs, base = _raw(bucket)
    m = st.manifest(a.key)
    obj = f"{base}/objects/{a.key[:2]}/{a.key}/{m['payload']}/tensors.safetensors"
    raw = bytearray(fs.cat_file(obj))
    raw[-1] ^= 0xFF  # same size, one flipped byte
    fs.pipe_file(obj, bytes(raw))
    fresh = _store(bucket, tmp_path, "b")
    with pytest.raises(CorruptEntry, match="checksum"):
        fresh.get(a.key)
    assert not fresh.local_path(a.key).exists()  # nothing unverified enters a mirror
    assert fresh.status(a.key).startswith("damaged")
    # A node that reads it fails with the damage named, and the entry is discarded ...
    b = make_node("t_scale", {"factor": 3.0}, {"src": a})
    with pytest.raises(OpFailed, match="damaged"):
        run_nodes([b], _store(bucket, tmp_path, "c"), device="cpu")
    assert not fresh.has(a.key)
    # ... so the next run recomputes it: the same numbers, committed again.
    out = run_nodes([b], _store(bucket, tmp_path, "d"), device="cpu")
    assert out[a.key].status == "computed" and out[b.key].status == "computed"
    assert torch.equal(_store(bucket, tmp_path, "e").get(a.key).tensors["x"], good)
    # A truncated payload is caught by the quick check alone (sizes, one listing): recomputed.
    m = fresh.manifest(a.key)
    obj = f"{base}/objects/{a.key[:2]}/{a.key}/{m['payload']}/tensors.safetensors"
    fs.pipe_file(obj, fs.cat_file(obj)[:-3])
    warnings: list[str] = []
    out = run_nodes([a], _store(bucket, tmp_path, "f"), device="cpu", warn=warnings.append)
    assert out[a.key].status == "computed" and "damaged" in warnings[0]


def test_an_upload_without_its_manifest_is_never_read_and_is_collected(bucket, tmp_path):
    st = _store(bucket, tmp_path, "a")
    key = "ef" + "2" * 62
    fs, base = _raw(bucket)
    fs.pipe_file(f"{base}/objects/ef/{key}/deadbeef/data.json", b"{}")  # a writer died before committing
    assert not st.has(key) and list(st.keys()) == []
    with pytest.raises(KeyError):
        st.get(key)
    assert st.collect_uploads(older_than_s=3600) == 0  # too young to be called stale
    assert st.collect_uploads(older_than_s=-1) == 1
    assert not fs.exists(f"{base}/objects/ef/{key}/deadbeef/data.json")


def test_leases_exclude_each_other_and_expired_ones_are_taken_over(bucket, tmp_path):
    remote = _store(bucket, tmp_path, "a").remote
    spans: list[tuple[float, float]] = []

    def hold() -> None:
        with lease(remote, "locks/k.lease", poll=0.02):
            t0 = time.time()
            time.sleep(0.3)
            spans.append((t0, time.time()))

    threads = [threading.Thread(target=hold) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spans.sort()
    assert len(spans) == 3 and all(b[0] >= a[1] for a, b in zip(spans, spans[1:]))
    assert remote.get("locks/k.lease") is None  # released
    # A lease whose holder died (expired long ago) is taken over by a compare-and-swap PUT.
    remote.put_if_absent("locks/k.lease", json.dumps({"owner": "dead", "expires": time.time() - 60}).encode())
    t0 = time.time()
    with lease(remote, "locks/k.lease") as state:
        assert json.loads(remote.get("locks/k.lease")[0])["owner"] == state["owner"]
    assert time.time() - t0 < 5
    # A live one is waited for, and renewed while held (a short lease outlives its length).
    got = []
    with lease(remote, "locks/k.lease", seconds=0.6) as state:
        threading.Thread(target=lambda: got.append(_acquire_time(remote))).start()
        time.sleep(1.5)
        assert not state["lost"]
        released = time.time()
    deadline = time.time() + 10
    while not got and time.time() < deadline:
        time.sleep(0.05)
    assert got and got[0] >= released


def _acquire_time(remote) -> float:
    with lease(remote, "locks/k.lease", poll=0.02):
        return time.time()


_STUDY = """study "object store"
model m = zoo "mini"
dataset ioi = ioi(n=6, seed=0)
base  = evaluate m on ioi with logit_diff
heads = patch heads in all layers of m on ioi with logit_diff
"""


@pytest.mark.timeout(300)
def test_a_study_on_a_two_process_cluster_through_s3_matches_the_local_run(bucket, tmp_path, monkeypatch, capsys):
    pytest.importorskip("distributed")
    from mechstudy.engine.run import run_study

    study = tmp_path / "s.study"
    study.write_text(_STUDY)
    local = run_study(study, cache=tmp_path / "local", device="cpu", report=False)
    # The client's mirror; each worker process keeps its own (a temporary directory), so what a
    # worker reads that another computed comes through the bucket.
    monkeypatch.setenv("MECHSTUDY_MIRROR", str(tmp_path / "client-mirror"))
    remote = run_study(study, cache=bucket, device="cpu", scheduler="local:2", report=False)
    keys = {n.key for n in local.plan.nodes()}
    assert {n.key for n in remote.plan.nodes()} == keys and remote.computed == len(keys) == local.computed
    loc = Store(tmp_path / "local")
    fs, base = _raw(bucket)
    for k in keys:
        m = json.loads(fs.cat_file(f"{base}/objects/{k[:2]}/{k}/manifest.json"))
        want = loc.manifest(k)
        assert {n: f["xxh3_128"] for n, f in m["files"].items()} == {n: f["xxh3_128"] for n, f in want["files"].items()}, m["op"]
    # The workers computed everything; the client only planned: its mirror holds no entry.
    assert not any((tmp_path / "client-mirror").rglob("manifest.json"))
    # A rerun anywhere finds every result committed: nothing is computed again.
    again = run_study(study, cache=bucket, device="cpu", report=False)
    assert again.computed == 0
    # `study cache verify` checks every committed entry's checksums (copying it into the mirror).
    from mechstudy.engine import cli

    assert cli.main(["cache", "verify", "--cache", bucket]) == 0
    assert f"{len(keys)} entries checked, 0 damaged" in capsys.readouterr().out
