"""Steering vectors as artifacts: one format for every way of finding them (mean difference over
contrast pairs, ActAdd from two prompts, and later SAE features or probe directions), read by
`steer` and by anything that needs a direction in the residual stream.

A steering-vector artifact holds:

- tensors ``vectors`` [n, d_model] (float32): one vector per layer in ``data["layers"]``, added at
  that layer's site by `steer`;
- data ``steering``: {"site": the site kind (resid_pre / resid_mid / resid_post), "layers": [...],
  "method": "mean_difference" | "actadd" | ..., "fingerprint": the model's fingerprint, "d_model"};
- a table "result" (one row per layer: its norm and how it was found).

>>> import torch
>>> art = vector_artifact(torch.ones(1, 4), [2], "resid_pre", "actadd", {"fingerprint": "abc"}, {})
>>> read(art).layers, read(art).site, read(art).vectors.shape
([2], 'resid_pre', torch.Size([1, 4]))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import polars as pl
import torch

from mechstudy.engine.spec import Artifact


@dataclass(frozen=True)
class Steering:
    site: str
    layers: list[int]
    vectors: torch.Tensor  # [n, d]
    method: str
    fingerprint: str | None


def vector_artifact(vectors: torch.Tensor, layers: list[int], site: str, method: str, model_data: Mapping[str, Any],
                    extra: Mapping[str, Any], table: pl.DataFrame | None = None) -> Artifact:
    """A steering-vector artifact (see the module docstring); `extra` adds to data["steering"]."""
    vectors = vectors.float().contiguous()
    info = {"site": site, "layers": list(layers), "method": method, "fingerprint": model_data.get("fingerprint"),
            "d_model": int(vectors.shape[-1]), **extra}
    if table is None:
        table = pl.DataFrame({"layer": list(layers), "norm": vectors.norm(dim=-1).tolist()})
    return Artifact(tensors={"vectors": vectors}, tables={"result": table},
                    data={"steering": info, "chart": {"x": "layer", "y": "norm"}})


def read(artifact: Artifact) -> Steering:
    """The steering vectors of an artifact; ValueError when it holds none."""
    info = (artifact.data or {}).get("steering")
    if info is None or "vectors" not in artifact.tensors:
        raise ValueError("this result is not a steering vector (make one with `contrast ...` or `actadd ...`)")
    return Steering(info["site"], list(info["layers"]), torch.as_tensor(artifact.tensors["vectors"]).float(),
                    info.get("method", "?"), info.get("fingerprint"))


def directions(artifact: Artifact) -> Steering:
    """Directions in the residual stream held by a result: a steering vector's, or a binary linear
    probe's (`probe ... using logistic` on two classes: its weight vector per layer, taken back to
    the raw activation space, w / std, pointing toward class 1). ValueError otherwise."""
    if (artifact.data or {}).get("steering") is not None:
        return read(artifact)
    t, data = artifact.tensors, artifact.data or {}
    if "task_W" in t and "task_W2" not in t and torch.as_tensor(t["task_W"]).shape[-1] == 1:
        W = torch.as_tensor(t["task_W"]).float()[..., 0]  # [L, D] on standardised features
        std = torch.as_tensor(t["task_std"]).float()
        return Steering(data["site"], list(data["layers"]), W / std, "probe", None)
    raise ValueError("this result holds no direction: use a steering vector (`contrast`, `actadd`) or a binary "
                     "logistic probe")
