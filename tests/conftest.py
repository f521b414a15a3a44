"""Shared fixtures. Heavy imports happen inside fixtures, so tests that need no model stay fast."""

from __future__ import annotations

import os

import pytest

# These machines have 2 cores shared by several test runs: torch's second intra-op thread then
# spins against other processes and a model test runs 3-5x slower (measured: 70 s -> 16 s for the
# patch/ioi/adapter tests). Set before torch is imported; an explicit setting still wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory):
    """A 2-layer, 4-head, d_model 64 random GPT-2 with the word-level IOI tokenizer (seed 0)."""
    from mechstudy.stdlib.models.tiny import make_tiny_gpt2

    return make_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"), seed=0)


@pytest.fixture(scope="session")
def tiny_adapter(tiny_gpt2_dir):
    """The tiny GPT-2 loaded as an Adapter (float32, CPU, eager attention)."""
    from mechstudy.stdlib.models.base import load_adapter

    return load_adapter(tiny_gpt2_dir)


@pytest.fixture(scope="session")
def tiny_model_artifact(tiny_gpt2_dir):
    """What the engine's `model` node would hand an operator for the tiny GPT-2."""
    from mechstudy.engine.fingerprint import model_fingerprint
    from mechstudy.engine.spec import Artifact
    from mechstudy.stdlib.models.sources import describe_dir

    path = str(tiny_gpt2_dir)
    return Artifact(data={
        "source": "hf", "ref": path, "options": {"dtype": "float32"}, "path": path,
        "fingerprint": model_fingerprint(path), "libs": {}, "info": describe_dir(path).as_dict(),
    })


@pytest.fixture(scope="session")
def stdlib_loaded():
    """Every stdlib module imported, so every registry is full."""
    from mechstudy import stdlib

    return stdlib.load_all()


# Architectures every circuit method is checked on, each against its slow float64 reference
# (tests/circuits_reference.py): GPT-2, GPT-NeoX with parallel and with sequential blocks, Llama
# with grouped-query attention. `tol` is how closely the float64 model follows the float64
# reference: exact for GPT-2; HF computes NeoX's and Llama's softmax, rotary tables and RMS norms
# in float32 even in a float64 model.
CIRCUIT_ARCHS = ("gpt2", "neox", "neox_seq", "llama")
CIRCUIT_TOL = {"gpt2": 1e-9, "neox": 3e-6, "neox_seq": 3e-6, "llama": 1e-5}
# The tiny BERT-style encoder, for the operators that also read encoders (probes, attention, similarity,
# top examples): circuit_models("bert") builds it the same way (no circuit tolerance: no circuit method
# runs on it).
ENCODER_ARCHS = ("bert",)


@pytest.fixture(scope="session")
def circuit_models(tmp_path_factory, tiny_gpt2_dir):
    """arch (CIRCUIT_ARCHS or ENCODER_ARCHS) -> a namespace with the tiny model's dir, its float32
    adapter, a float64 copy, the model artifact the engine would hand an operator, and `tol` (see
    CIRCUIT_TOL)."""
    import copy
    import json
    from types import SimpleNamespace

    from mechstudy.engine.fingerprint import model_fingerprint
    from mechstudy.engine.spec import Artifact
    from mechstudy.stdlib.models.base import Adapter, load_adapter
    from mechstudy.stdlib.models.sources import describe_dir
    from tiny_models import build

    made: dict[str, SimpleNamespace] = {}

    def get(arch: str) -> SimpleNamespace:
        if arch not in made:
            path = tiny_gpt2_dir if arch == "gpt2" else build(arch, tmp_path_factory.mktemp(arch))
            a = load_adapter(path)
            cfg = json.loads((path / "config.json").read_text())
            a64 = Adapter(copy.deepcopy(a.model).double(), a.tokenizer, a.table, cfg)
            art = Artifact(data={"source": "hf", "ref": str(path), "options": {"dtype": "float32"}, "path": str(path),
                                 "fingerprint": model_fingerprint(path), "libs": {}, "info": describe_dir(path).as_dict()})
            made[arch] = SimpleNamespace(arch=arch, dir=path, adapter=a, adapter64=a64, artifact=art,
                                         tol=CIRCUIT_TOL.get(arch))
        return made[arch]

    return get
