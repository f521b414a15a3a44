"""`load sae of MODEL path="DIR"`: a published dictionary from local files, usable wherever a trained
one is (`score sae ...`).

    s  = load sae of m path="saes/layer8"                                   # SAELens: cfg.json + sae_weights.safetensors
    gs = load sae of m path="gemma-scope/params.npz" site=resid_post layer=8  # Gemma Scope: params.npz

The format is detected from the files (`format=` to force it; stdlib/dictionary/formats.py says what
is read). A SAELens config names its hook (``blocks.8.hook_resid_pre``), which gives the site and
layer; Gemma Scope files do not, so `site=` and `layer=` are required for them. The node is keyed by
the files' content. Nothing is unpickled: npz archives are opened with allow_pickle=False.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from mechstudy.engine import spec
from mechstudy.engine.fingerprint import file_hash
from mechstudy.engine.plan import canonical_json, hash_text
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib.dictionary import formats
from mechstudy.stdlib.models.sites import Site, component, words
from mechstudy.stdlib.ops.train_dictionary import SITE_WORDS


def _error(msg: str, option: str | None = None, hint: str | None = None) -> ValueError:
    e = ValueError(msg)
    e.message, e.option, e.hint = msg, option, hint  # type: ignore[attr-defined]
    return e


def _where(params: Mapping[str, Any]) -> Path:
    p = Path(params["path"]).expanduser()
    return p if p.is_absolute() else Path.cwd() / p


def validate(params: Mapping[str, Any]) -> None:
    path = _where(params)
    try:
        fmt = formats.detect(path) if params["format"] == "auto" else params["format"]
        missing = [f.name for f in formats.files(path, fmt) if not f.is_file()]
        if missing:
            raise formats.FormatError(f"{params['path']}: missing {', '.join(missing)}")
        sae, hook = formats.load(path, fmt)
    except (formats.FormatError, OSError) as e:
        raise _error(str(e), "path") from None
    if hook is None and (params["site"] is None or params["layer"] is None):
        raise _error(f"{params['path']} does not say which site it reads", "site",
                     "give site=... and layer=... (e.g. site=resid_post layer=8)")


def plan(params: dict, b: Any) -> Any:
    path = _where(params)
    fmt = formats.detect(path) if params["format"] == "auto" else params["format"]
    content = hash_text(canonical_json([[f.name, file_hash(f)] for f in formats.files(path, fmt)]))
    return b.node("load_dictionary", {**params, "format": fmt, "content_hash": content})


@spec.operator(
    "load_dictionary",
    version=1,
    verb="load",
    components=("sae", "transcoder"),
    params=[
        Param("model", spec.MODEL, doc="the model whose activations it reads"),
        Param("path", str, doc="a SAELens directory, or a Gemma Scope params.npz (or its directory)"),
        Param("format", str, "auto", choices=("auto", *formats.FORMATS), doc="auto: detected from the files"),
        Param("site", str, None, choices=SITE_WORDS, doc="the site it reads (when the files do not say)"),
        Param("layer", int, None, minimum=0, doc="its layer (when the files do not say)"),
    ],
    plan=plan,
    validate=validate,
    output="tensors",
    example='s = load sae of m path="studies/data/saes/mini-resid1-topk"',
)
def run(inputs: Mapping[str, Artifact], params: dict, ctx: Any) -> Artifact:
    """A published dictionary, as the artifact `train sae` would make."""
    sae, hook = formats.load(_where(params), params["format"])
    if hook is not None and params["site"] is None:
        site = Site.parse(hook)
    else:
        site = Site(params["layer"], component(params["site"]).kind.name)
    info = inputs["model"].data.get("info", {})
    width = {"mlp_post": info.get("d_mlp")}.get(site.kind, info.get("d_model"))
    if width and site.kind != "z" and sae.shape.d_in != width:
        raise ValueError(f"the dictionary reads {sae.shape.d_in} dimensions; {site} of this model has {width}")
    return Artifact(tensors=sae.tensors(), data={
        "kind": "sae", "arch": sae.shape.arch, "shape": sae.shape.as_dict(), "site": [site.name], "target": None,
        "layers": [site.layer], "source": params["format"], "path": str(params["path"]),
        "headline": [{"label": "features", "value": sae.shape.width}, {"label": "architecture", "value": sae.shape.arch}]})
