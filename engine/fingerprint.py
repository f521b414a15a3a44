"""Content fingerprints of models and files, memoised by (path, size, mtime)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import xxhash

from mechstudy.engine.plan import canonical_json, hash_text

_MEMO: dict[tuple[str, int, int], str] = {}
# Files that define a model's numbers; tokenizer files change dataset tokens, so they count.
_MODEL_FILES = (".json", ".safetensors", ".txt", ".model", ".bin")
# Keys a library writes into config.json about itself, not about the model: the library versions
# that can change numbers are keyed separately (the model node's `libs`), so these must not make
# the same weights fingerprint differently on a machine with another release.
_METADATA_KEYS = frozenset({"transformers_version", "_name_or_path"})


def file_hash(path: str | os.PathLike) -> str:
    p = Path(path)
    st = p.stat()
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
    files = sorted(p for p in d.rglob("*") if p.is_file() and p.suffix in _MODEL_FILES and ".cache" not in p.parts)
    return hash_text(canonical_json({str(p.relative_to(d)): config_hash(p) if p.name == "config.json" else file_hash(p)
                                     for p in files}))
