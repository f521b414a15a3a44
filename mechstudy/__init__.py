"""mechstudy in notebooks and scripts: ``import mechstudy as ms``.

    res = ms.run("studies/quickstart.study")   # what `study run` does: same cache, report, lock
    res["heads"].table                         # polars DataFrame
    res["heads"].chart                         # Altair chart
    res["heads"].tensor                        # torch tensor
    res["heads"]                               # in Jupyter: headline, chart and table
    ms.run_text(text)                          # study text, e.g. built in a notebook
    ms.Study("title")                          # build a study statement by statement
    %load_ext mechstudy                        # then %%study cells run as studies

The packages themselves are `mechstudy.lang`, `mechstudy.engine` and `mechstudy.stdlib`
(the folders lang/, engine/ and stdlib/ of the repository); this module only re-exports the
notebook API of `mechstudy.engine.api`, imported on first use so `import mechstudy.lang`
stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run", "run_text", "Study", "Results", "Result", "load_ipython_extension"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from mechstudy.engine import api

        return getattr(api, name)
    raise AttributeError(f"module 'mechstudy' has no attribute {name!r}")


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext mechstudy` registers the `%%study` cell magic (see engine/api.py)."""
    from mechstudy.engine.api import load_ipython_extension as load

    load(ipython)
