"""The install layout: every package folder is listed in pyproject (wheels ship only those)."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOP = {"mechstudy": "mechstudy", "lang": "mechstudy.lang", "engine": "mechstudy.engine", "stdlib": "mechstudy.stdlib"}


def test_every_package_folder_is_listed():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = set()
    for folder, name in TOP.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *rel.parts]))
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert listed - found == set(), "listed packages with no folder"


def test_no_pickle_in_code_paths():
    import re

    bad = []
    for folder in TOP:
        for py in (ROOT / folder).rglob("*.py"):
            for i, line in enumerate(py.read_text().splitlines(), 1):
                if re.search(r"import pickle|pickle\.(load|dump)|joblib\.(load|dump)|cloudpickle|torch\.load\(", line) and "weights_only=True" not in line:
                    bad.append(f"{py.relative_to(ROOT)}:{i}: {line.strip()}")
    assert bad == []
