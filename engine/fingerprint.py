"""Content fingerprints of models and files, memoised by (path, size, mtime).

Every file fingerprinted here, and every directory a model's files were listed from, is noted
while a `recording()` is active: what a plan was derived from, which the warm path of `study run`
(engine/warm.py) checks before reusing that plan.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import xxhash

from mechstudy.engine.plan import canonical_json, hash_text

_MEMO: dict[tuple[str, int, int], str] = {}
_RECORDING: list[dict[str, set[str]]] = []


@contextmanager
def recording() -> Iterator[dict[str, set[str]]]:
    """Inside: {"files": paths fingerprinted, "dirs": directories listed}, filled as it goes."""
    seen: dict[str, set[str]] = {"files": set(), "dirs": set()}
    _RECORDING.append(seen)
    try:
        yield seen
    finally:
        _RECORDING.remove(seen)


def _note(kind: str, path: Path) -> None:
    if _RECORDING:
        p = str(path.resolve())
        for seen in _RECORDING:
            seen[kind].add(p)
# Files that define a model's numbers; tokenizer files change dataset tokens, so they count.
_MODEL_FILES = (".json", ".safetensors", ".txt", ".model", ".bin")
# Keys a library writes into config.json about itself, not about the model: the library versions
# that can change numbers are keyed separately (the model node's `libs`), so these must not make
# the same weights fingerprint differently on a machine with another release.
_METADATA_KEYS = frozenset({"transformers_version", "_name_or_path"})


def file_hash(path: str | os.PathLike) -> str:
    p = Path(path)
    st = p.stat()
    _note("files", p)
    _note("dirs", p.parent)  # a file added beside it (a glob of corpus files) changes the listing
    memo_key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    hit = _MEMO.get(memo_key)
    if hit is not None:
        return hit
    h = xxhash.xxh3_128()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    _MEMO[memo_key] = out = h.hexdigest()
    return out


def config_hash(path: str | os.PathLike) -> str:
    """Hash of a model's config.json without the library's own metadata (`_METADATA_KEYS`).

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "a.json").write_text('{"n_layer": 2, "transformers_version": "4.57.0"}')
    >>> _ = (d / "b.json").write_text('{"transformers_version": "5.24.0", "n_layer": 2}')
    >>> config_hash(d / "a.json") == config_hash(d / "b.json")
    True
    """
    _note("files", Path(path))
    cfg = json.loads(Path(path).read_text())
    if isinstance(cfg, dict):
        cfg = {k: v for k, v in cfg.items() if k not in _METADATA_KEYS}
    return hash_text(canonical_json(cfg))


def model_fingerprint(directory: str | os.PathLike) -> str:
    """Hash of every config / weight / tokenizer file in a model directory (recursively); the
    config by its content without library metadata (`config_hash`), the rest byte for byte."""
    d = Path(directory)
    if d.is_file():
        return file_hash(d)
    listed = [p for p in d.rglob("*") if ".cache" not in p.parts]
    for sub in [d, *(p for p in listed if p.is_dir())]:
        _note("dirs", sub)
    files = sorted(p for p in listed if p.is_file() and p.suffix in _MODEL_FILES)
    return hash_text(canonical_json({str(p.relative_to(d)): config_hash(p) if p.name == "config.json" else file_hash(p)
                                     for p in files}))
