"""Published dictionaries from local files, without pickle.

SAELens layout: a directory with ``cfg.json`` and ``sae_weights.safetensors`` (W_enc [d_in, d_sae],
W_dec [d_sae, d_in], b_enc, b_dec; ``threshold`` or ``log_threshold`` for JumpReLU). The config's
``architecture`` ("standard" = ReLU, "topk", "jumprelu"), ``d_in``, ``d_sae``, ``apply_b_dec_to_input``,
``k`` (or ``activation_fn_kwargs.k``) and ``hook_name`` (``metadata.hook_name`` in SAELens 6) are read;
activations normalised by the SAE itself (``normalize_activations`` other than "none") and gated
SAEs are refused with the reason.

Gemma Scope layout: ``params.npz`` (W_enc [d_model, d_sae], W_dec [d_sae, d_model], b_enc, b_dec,
threshold): JumpReLU, the encoder reads x itself (no decoder-bias subtraction). Read with
``np.load(..., allow_pickle=False)``: an archive holding pickled objects is refused.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from mechstudy.stdlib.dictionary.model import Dictionary, Shape

FORMATS = ("saelens", "gemma_scope")
_SAELENS_ARCH = {"standard": "relu", "relu": "relu", "topk": "topk", "jumprelu": "jumprelu"}


class FormatError(ValueError):
    """A file that is not a dictionary mechstudy can read, with the reason."""


def detect(path: str | Path) -> str:
    p = Path(path)
    if (p / "cfg.json").is_file() and (p / "sae_weights.safetensors").is_file():
        return "saelens"
    if (p / "params.npz").is_file() or (p.is_file() and p.suffix == ".npz"):
        return "gemma_scope"
    raise FormatError(f"{path}: neither cfg.json + sae_weights.safetensors (SAELens) nor params.npz (Gemma Scope)")


def files(path: str | Path, fmt: str) -> list[Path]:
    p = Path(path)
    if fmt == "saelens":
        return [p / "cfg.json", p / "sae_weights.safetensors"]
    return [p if p.is_file() else p / "params.npz"]


def load_saelens(path: str | Path) -> tuple[Dictionary, str | None]:
    """(dictionary, hook name or None)."""
    from safetensors.torch import load_file

    p = Path(path)
    cfg = json.loads((p / "cfg.json").read_text())
    arch = _SAELENS_ARCH.get(str(cfg.get("architecture", "standard")))
    if arch is None:
        raise FormatError(f"{p}: SAELens architecture {cfg.get('architecture')!r} is not supported (standard, topk, jumprelu)")
    norm = cfg.get("normalize_activations") or "none"
    if norm != "none":
        raise FormatError(f"{p}: normalize_activations={norm!r}: the SAE rescales its inputs itself; only 'none' is supported")
    w = load_file(str(p / "sae_weights.safetensors"))
    missing = [k for k in ("W_enc", "W_dec", "b_enc", "b_dec") if k not in w]
    if missing:
        raise FormatError(f"{p}: sae_weights.safetensors has no {', '.join(missing)}")
    d_in, F = w["W_enc"].shape
    k = int(cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k") or 0)
    if arch == "topk" and k < 1:
        raise FormatError(f"{p}: a topk SAE without k in cfg.json")
    shape = Shape(arch, int(d_in), int(w["W_dec"].shape[1]), int(F), k=k,
                  pre_bias=bool(cfg.get("apply_b_dec_to_input", True)))
    tensors = {"W_enc": w["W_enc"], "W_dec": w["W_dec"], "b_enc": w["b_enc"], "b_dec": w["b_dec"]}
    if arch == "jumprelu":
        if "log_threshold" in w:
            tensors["log_threshold"] = w["log_threshold"]
        elif "threshold" in w:
            tensors["log_threshold"] = torch.log(w["threshold"].float())
        else:
            raise FormatError(f"{p}: a jumprelu SAE without threshold or log_threshold")
    hook = cfg.get("hook_name") or (cfg.get("metadata") or {}).get("hook_name")
    return _build(shape, tensors), hook


def load_gemma_scope(path: str | Path) -> Dictionary:
    import numpy as np

    f = files(path, "gemma_scope")[0]
    try:
        with np.load(f, allow_pickle=False) as z:
            arrays = {k: torch.from_numpy(np.array(z[k], dtype=np.float32)) for k in z.files}
    except ValueError as e:
        raise FormatError(f"{f}: {e} (pickled objects are never loaded)") from None
    missing = [k for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold") if k not in arrays]
    if missing:
        raise FormatError(f"{f}: params.npz has no {', '.join(missing)}")
    d_in, F = arrays["W_enc"].shape
    shape = Shape("jumprelu", int(d_in), int(arrays["W_dec"].shape[1]), int(F), pre_bias=False)
    return _build(shape, {**{k: arrays[k] for k in ("W_enc", "W_dec", "b_enc", "b_dec")},
                          "log_threshold": torch.log(arrays["threshold"])})


def _build(shape: Shape, tensors: dict[str, torch.Tensor]) -> Dictionary:
    d = Dictionary(shape)
    state = d.state_dict()
    for k, v in tensors.items():
        if tuple(v.shape) != tuple(state[k].shape):
            raise FormatError(f"{k} has shape {tuple(v.shape)}, expected {tuple(state[k].shape)}")
        state[k] = v.float()
    d.load_state_dict(state)
    return d


def load(path: str | Path, fmt: str = "auto") -> tuple[Dictionary, str | None]:
    fmt = detect(path) if fmt == "auto" else fmt
    if fmt == "saelens":
        return load_saelens(path)
    return load_gemma_scope(path), None


def finite(x: float) -> bool:
    return math.isfinite(x)


def save_saelens(sae: Dictionary, path: str | Path, hook_name: str, model_name: str = "", dtype: str = "float32") -> None:
    """Write `sae` in the SAELens layout (what `load_saelens` reads; ReLU, TopK or JumpReLU)."""
    from safetensors.torch import save_file

    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    arch = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu"}.get(sae.shape.arch)
    if arch is None:
        raise FormatError(f"SAELens has no {sae.shape.arch} layout")
    dt = getattr(torch, dtype)
    w = {k: getattr(sae, k).detach().to(dt).contiguous() for k in ("W_enc", "W_dec", "b_enc", "b_dec")}
    if arch == "jumprelu":
        w["threshold"] = sae.log_threshold.detach().exp().to(dt)
    save_file(w, str(p / "sae_weights.safetensors"))
    cfg = {"architecture": arch, "d_in": sae.shape.d_in, "d_sae": sae.shape.width, "dtype": dtype,
           "apply_b_dec_to_input": sae.shape.pre_bias, "normalize_activations": "none", "hook_name": hook_name,
           "model_name": model_name, "metadata": {"hook_name": hook_name, "model_name": model_name}}
    if arch == "topk":
        cfg["k"] = sae.shape.k
    (p / "cfg.json").write_text(json.dumps(cfg, indent=1, sort_keys=True) + "\n")
