"""What an operator's `run(inputs, params, ctx)` may ask of the engine.

Only execution concerns live here (device, chunk budget, loaded-model memo, logging):
nothing in a Context may change an operator's numbers, which is why none of it is keyed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact

_MODEL_MEMO: dict[tuple[str, str], Any] = {}
_MODEL_MEMO_LOCK = threading.Lock()


def auto_device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover
        return "cpu"


@dataclass
class Context:
    """Execution context handed to every operator.

    Attributes:
        device: "cpu" or "cuda".
        max_rows: how many sequences one batched forward may hold (patch variants are
            chunked to this). Measured on 2-core CPUs: throughput peaks near 32.
        log: a callable taking one line of text.
    """

    device: str = field(default_factory=auto_device)
    max_rows: int = 32
    log: Callable[[str], None] = lambda msg: None

    def model(self, model_artifact: Artifact) -> Any:
        """The loaded model adapter for a `model` node's artifact; loaded once per process
        and device by its source's `ModelSource.load`."""
        data = model_artifact.data
        memo_key = (data["fingerprint"] + repr(sorted(data.get("options", {}).items())), self.device)
        with _MODEL_MEMO_LOCK:
            m = _MODEL_MEMO.get(memo_key)
            if m is None:
                m = spec.MODEL_SOURCES[data["source"]].load(data, self.device)
                _MODEL_MEMO[memo_key] = m
        return m
